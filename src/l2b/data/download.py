"""``l2b download NAME [DIR]``: the research datasets from their publishers' servers (or the
mirrors torchvision uses), each file checked against its published MD5 sum, into the layout that
``--data NAME:DIR`` reads.

A file is written under a temporary name and renamed only once its sum matches, so a download cut
short, a wrong file or a full disk leaves nothing that looks whole; files already there and whole
are kept; a CIFAR archive is unpacked with tarfile's "data" filter (no path outside DIR, no
links out of it, no device files) and then removed. Nothing in l2b downloads on its own: this
command is the only place that reaches the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20
TIMEOUT_S = 60  # per network read; a stalled server is an error, not a hang


@dataclass(frozen=True)
class Source:
    """A dataset's files: (name, MD5, URLs tried in order); ``unpack``: the folder its one
    archive holds, which is unpacked into DIR; ``labels_of``: the dataset whose training images a
    label file (CIFAR-N's human labels) labels."""

    files: tuple[tuple[str, str, tuple[str, ...]], ...]
    unpack: str | None = None
    labels_of: str | None = None  # human label files of this dataset (CIFAR-N), not a dataset


_MNIST = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/")
_FASHION = ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
_CIFARN = "https://github.com/UCSC-REAL/cifar-10-100n/raw/main/data/"
_IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz")


def _idx(mirrors: tuple[str, ...], sums: tuple[str, ...]) -> Source:
    return Source(tuple((name, md5, tuple(m + name for m in mirrors)) for name, md5 in zip(_IDX, sums)))


SOURCES = {
    "cifar10": Source((("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                        ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)),), unpack="cifar-10-batches-py"),
    "cifar100": Source((("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                         ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",)),), unpack="cifar-100-python"),
    "mnist": _idx(_MNIST, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                           "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
    "fashion-mnist": _idx(_FASHION, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                     "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
    # CIFAR-N (Wei et al., ICLR 2022; CC BY-NC 4.0): human labels of the CIFAR training images
    "cifar10n": Source((("CIFAR-10_human.pt", "96644db5574813cae939af5f7f2a0aec", (_CIFARN + "CIFAR-10_human.pt",)),),
                       labels_of="cifar10"),
    "cifar100n": Source((("CIFAR-100_human.pt", "a67b45c1d7992051865b5c755bd68bb1",
                          (_CIFARN + "CIFAR-100_human.pt",)),), labels_of="cifar100"),
}


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, part: Path, log) -> str:
    """``url`` streamed into ``part``; returns the MD5 of what arrived."""
    digest = hashlib.md5(usedforsecurity=False)
    request = urllib.request.Request(url, headers={"User-Agent": "l2b-download"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(part, "wb") as fh:
        total, got, shown = int(response.headers.get("Content-Length") or 0), 0, -1
        log(f"fetching {url}" + (f" ({total / 1e6:.1f} MB)" if total else ""))
        for chunk in iter(lambda: response.read(CHUNK), b""):
            fh.write(chunk)
            digest.update(chunk)
            got += len(chunk)
            if total and sys.stderr.isatty() and 100 * got // total != shown:
                shown = 100 * got // total
                print(f"\r  {shown}%", end="", file=sys.stderr, flush=True)
        if total and sys.stderr.isatty():
            print(file=sys.stderr)
    if total and got != total:
        raise OSError(f"the server sent {got} of {total} bytes")
    return digest.hexdigest()


def fetch_file(name: str, md5: str, urls: tuple[str, ...], root: Path, log=print) -> Path:
    """``root/name`` with the given MD5, kept if already there, else fetched from the first of
    ``urls`` that serves it whole; a one-line error naming every URL tried and why."""
    target = root / name
    if target.is_file():
        if md5_of(target) == md5:
            log(f"{target}: already there")
            return target
        log(f"{target}: there, but not the published file (MD5 differs); fetching it again")
    part = root / f".{name}.part"
    tried = []
    for url in urls:
        try:
            got = _fetch(url, part, log)
        except (urllib.error.URLError, OSError, ValueError) as err:
            part.unlink(missing_ok=True)
            if isinstance(err, OSError) and err.errno is not None and err.errno in (28, 122):  # ENOSPC, EDQUOT
                raise OSError(f"{root}: the disk is full while writing {name}; free some space or give another "
                              f"directory") from None
            tried.append(f"{url}: {getattr(err, 'reason', None) or err}")
            continue
        if got != md5:
            part.unlink(missing_ok=True)
            tried.append(f"{url}: MD5 {got}, not the published {md5} (a corrupted or changed file; deleted)")
            continue
        os.replace(part, target)
        return target
    raise ConnectionError(f"could not download {name}: " + "; ".join(tried) + f". Check the connection (a proxy is "
                          f"read from HTTPS_PROXY), or fetch the file by hand into {root} and run this again: it is "
                          f"checked and kept")


def _unpack(archive: Path, folder: str, root: Path, log) -> None:
    """The archive's ``folder`` into ``root`` (through a temporary folder), then the archive removed."""
    if not hasattr(tarfile, "data_filter"):  # Python before 3.10.12 / 3.11.4: no safe extraction
        raise ValueError(f"{archive}: this Python ({sys.version.split()[0]}) cannot unpack an archive safely (tarfile's "
                         f"data filter came with 3.10.12 and 3.11.4); upgrade it, or unpack {folder}/ into {root} "
                         f"yourself and run this again")
    staging = root / f".{folder}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    log(f"unpacking {archive.name}")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")  # refuses paths outside, links out, devices
    except (tarfile.TarError, OSError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError(f"{archive}: cannot be unpacked ({err}); delete it and run this again") from None
    if not (staging / folder).is_dir():
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError(f"{archive}: holds no {folder}/ (is it the right archive?); delete it and run this again")
    shutil.rmtree(root / folder, ignore_errors=True)
    os.replace(staging / folder, root / folder)
    shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()


def _human_labels(name: str, source: Source, root: Path, log) -> str:
    """A CIFAR-N label file fetched and read (its clean labels are checked against the images when
    a run uses it); returns its path."""
    from ..noise_files import CIFARN_TYPES
    from ..safe_pickle import load_torch_save_dict

    (file, md5, urls), = source.files
    path = fetch_file(file, md5, urls, root, log)
    labels = load_torch_save_dict(path)
    kind = next(iter(CIFARN_TYPES[name]))
    log(f"{name}: {len(labels['clean_label'])} human labels in {path} (CC BY-NC 4.0, Wei et al., ICLR 2022); train "
        f"with --data {source.labels_of}:{root} --noise {name}:{kind} where {root} also holds {source.labels_of}, "
        f"else --noise {name}:{kind}:{path}")
    return str(path)


def download(name: str, root: str | Path | None = None, log=print) -> str:
    """Dataset ``name`` (a key of ``SOURCES``) into ``root`` (default ``data/NAME``), checked and
    read once as training will read it; returns the ``--data`` spec that reads it (for CIFAR-N's
    label files, the file's path)."""
    from . import load_dataset
    from ..rundir import writable_dir

    if name not in SOURCES:
        raise ValueError(f"l2b download fetches {', '.join(SOURCES)}; got {name!r} (digits comes with "
                         f"scikit-learn; the others are your own files)")
    if root is None:  # CIFAR-N's labels beside the images they label, where --noise cifar10n:KIND looks
        root = Path("data") / (SOURCES[name].labels_of or name)
    root = writable_dir(Path(root), "give another directory")
    spec = f"{name}:{root}"
    source = SOURCES[name]
    if source.labels_of:
        return _human_labels(name, source, root, log)
    if source.unpack and (root / source.unpack).is_dir():
        log(f"{root / source.unpack}: already there")
    else:
        for file, md5, urls in source.files:
            path = fetch_file(file, md5, urls, root, log)
            if source.unpack:
                _unpack(path, source.unpack, root, log)
    ds = load_dataset(spec)
    log(f"{name} in {root}: {len(ds.y_train)} training and {len(ds.y_test)} test images; train on it with "
        f"--data {spec}")
    return spec
