"""``l2b download``: fetched, checked against the published sums, laid out as --data reads it.
No test reaches the network: the sources are pointed at local files (file:// URLs, read by the
same urllib path as https)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from l2b.cli import main
from l2b.data import download as dl
from l2b.data import load_dataset

from test_data import _cifar_dir, make_idx_dir
from test_noise import SHARED, needs_cifar_n


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cifar_archive(tmp_path: Path) -> Path:
    """A CIFAR-10-shaped archive: cifar-10-batches-py/ of tiny batches, as the publisher packs it."""
    src = _cifar_dir(tmp_path / "src", n=10)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def point(monkeypatch, name: str, files) -> None:
    monkeypatch.setitem(dl.SOURCES, name, replace(dl.SOURCES[name], files=tuple(files)))


def test_cifar10_is_fetched_checked_unpacked_and_read(tmp_path, monkeypatch, capsys):
    archive = cifar_archive(tmp_path)
    point(monkeypatch, "cifar10", [(archive.name, md5(archive), (archive.as_uri(),))])
    root = tmp_path / "data"
    assert main(["download", "cifar10", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"50 training and 10 test images; train on it with --data cifar10:{root}" in out
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # the archive removed, no temporaries
    assert load_dataset(f"cifar10:{root}").x_train.shape == (50, 3, 32, 32)
    # there already: nothing is fetched again (the source now points nowhere)
    point(monkeypatch, "cifar10", [(archive.name, md5(archive), ((tmp_path / "gone.tar.gz").as_uri(),))])
    assert dl.download("cifar10", root, log=lambda line: None) == f"cifar10:{root}"


def test_a_wrong_or_missing_file_tries_the_next_mirror_and_leaves_nothing_behind(tmp_path, monkeypatch):
    good = make_idx_dir(tmp_path / "good", gz=True)
    bad = make_idx_dir(tmp_path / "bad", gz=True, n_train=31)  # files whose sums differ
    files = [(f.name, md5(f), ((tmp_path / "nowhere" / f.name).as_uri(), (bad / f.name).as_uri(),
                               (good / f.name).as_uri()))
             for f in sorted(good.glob("*.gz"))]
    point(monkeypatch, "mnist", files)
    lines = []
    root = tmp_path / "mnist"
    root.mkdir()
    (root / files[0][0]).write_bytes(b"an earlier download, cut short")  # there, but not whole: fetched again
    assert dl.download("mnist", root, log=lines.append) == f"mnist:{root}"
    assert any("not the published file (MD5 differs); fetching it again" in line for line in lines)
    assert sorted(p.name for p in root.iterdir()) == sorted(f[0] for f in files)
    assert load_dataset(f"mnist:{root}").x_train.shape == (30, 1, 28, 28)
    # no mirror serves the published file: one line naming each and why; no partial file
    point(monkeypatch, "mnist", [(files[0][0], files[0][1], files[0][2][:2])])
    with pytest.raises(ConnectionError) as err:
        dl.download("mnist", tmp_path / "m2", log=lines.append)
    text = str(err.value)
    assert "could not download" in text and "nowhere" in text and "not the published" in text
    assert "\n" not in text and not list((tmp_path / "m2").iterdir())


def test_an_archive_that_reaches_outside_its_directory_is_refused(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        body = b"not yours"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    point(monkeypatch, "cifar10", [(archive.name, md5(archive), (archive.as_uri(),))])
    root = tmp_path / "deep" / "data"
    with pytest.raises(ValueError, match="cannot be unpacked"):
        dl.download("cifar10", root, log=lambda line: None)
    assert not (tmp_path / "deep" / "escaped.txt").exists() and not (root.parent / "escaped.txt").exists()
    assert [p.name for p in root.iterdir()] == [archive.name]  # checked and kept; no half-unpacked folder


def test_missing_research_data_names_the_download(tmp_path, capsys):
    for spec in (f"cifar10:{tmp_path / 'none'}", f"cifar100:{tmp_path}", f"mnist:{tmp_path / 'none'}"):
        name = spec.split(":")[0]
        assert main(["train", "--data", spec, "--out", str(tmp_path / "run")]) == 2
        assert f"fetch it with `l2b download {name} " in capsys.readouterr().err
    for name in ("cifar10", "cifar100", "mnist"):  # no directory given, as a paper preset leaves it
        assert main(["train", "--data", name, "--out", str(tmp_path / "run")]) == 2
        assert f"`l2b download {name} DIR` fetches it" in capsys.readouterr().err


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    def fetch(url, part, log):
        part.write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dl, "_fetch", fetch)
    with pytest.raises(OSError, match="the disk is full while writing cifar-10-python.tar.gz") as err:
        dl.download("cifar10", tmp_path / "d", log=lambda line: None)
    assert "\n" not in str(err.value) and not list((tmp_path / "d").iterdir())


@needs_cifar_n
@pytest.mark.parametrize("name, file", [("cifar10n", "CIFAR-10_human.pt"), ("cifar100n", "CIFAR-100_human.pt")])
def test_cifar_n_labels_match_their_published_sums_and_land_beside_the_images(tmp_path, monkeypatch, name, file):
    """The published files (a copy of them, served locally) pass the recorded sums as they are."""
    (_, published, _), = dl.SOURCES[name].files
    point(monkeypatch, name, [(file, published, ((SHARED / file).as_uri(),))])
    lines = []
    monkeypatch.chdir(tmp_path)
    path = dl.download(name, log=lines.append)  # default: data/cifar10, where --noise cifar10n:KIND looks
    images = "cifar10" if name == "cifar10n" else "cifar100"
    assert path == str(Path("data") / images / file) and md5(tmp_path / path) == published
    assert f"--data {images}:data/{images} --noise {name}:" in lines[-1] and "CC BY-NC 4.0" in lines[-1]
    assert "50000 human labels" in lines[-1]


def test_a_python_without_safe_extraction_says_so_and_unpacks_nothing(tmp_path, monkeypatch):
    archive = cifar_archive(tmp_path)
    point(monkeypatch, "cifar10", [(archive.name, md5(archive), (archive.as_uri(),))])
    monkeypatch.delattr(tarfile, "data_filter")
    with pytest.raises(ValueError, match="cannot unpack an archive safely"):
        dl.download("cifar10", tmp_path / "d", log=lambda line: None)
    assert [p.name for p in (tmp_path / "d").iterdir()] == [archive.name]  # kept, checked: unpack it by hand
