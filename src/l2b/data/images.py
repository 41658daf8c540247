"""Decoding image files with Pillow (DICOM with pydicom: ``dicom.py``): the transforms of the
image-file datasets, 16-bit grayscale read over its full range, and the check that every image can
be read before training starts."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .dicom import dicom_size, is_dicom, read_dicom

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pil_image():
    """Pillow's Image module, or an ImportError naming the extra that installs it."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("image-file datasets need Pillow: pip install 'l2b[images]'") from None
    return Image


def seeded_keys(positions: list[int], seed: int, start: int = 0) -> list[tuple[int, int]]:
    """(position, seed of its random transforms) for samples an epoch (or pass) of seed ``seed``
    draws in this order, the first of them its ``start``-th: a sample's transforms follow from
    its place in the epoch alone."""
    return [(i, (seed * 2**32 + start + k) % 2**63) for k, i in enumerate(positions)]


def seeded(seed: int, fn, *args):
    """``fn(*args)`` with torch's RNG seeded by ``seed``, the process's RNG left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args)


class ImageFiles(torch.utils.data.Dataset):
    """Decode, transform, normalise (ImageNet statistics unless the dataset has its own).

    ``resize-crop``: resize the short side to 8/7 of the crop (256 for 224), crop (random for
    training, else centre), flip (training): the authors' Clothing1M transforms.
    ``isic``: the authors' ISIC transforms (ultils.py). Training: RandomHorizontalFlip,
    RandomRotation(180) (nearest, black corners), RandomResizedCrop(size, scale=(0.3, 1.0)).
    Test: Resize((size, size)). Written with Pillow and torch's RNG, following torchvision's
    definitions, so that torchvision is not needed.
    """

    def __init__(self, items, size: int, train: bool, transform: str = "resize-crop",
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, own_photos: bool = False) -> None:
        if transform not in ("resize-crop", "isic"):
            raise ValueError(f"unknown image transform {transform!r}; choose resize-crop or isic")
        self.items, self.size, self.train, self.transform = list(items), size, train, transform
        # ``own_photos`` (a folder's or a list's images, not the papers' datasets): a JPEG far larger
        # than the crop is decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft mode, its short side still
        # at least the resize's), not whole and then shrunk; and a camera's orientation tag is applied
        # (the image as a viewer shows it)
        self.own_photos = own_photos and transform == "resize-crop"
        self.mean = torch.tensor(mean)[:, None, None]
        self.std = torch.tensor(std)[:, None, None]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        """``key``: a position, or (position, seed): then the random transforms draw from torch's RNG
        seeded with ``seed`` (and leave the process's RNG as it was), so that a sample's augmentation
        depends on its seed alone, not on which DataLoader worker loads it nor on how many there are."""
        if isinstance(key, tuple):
            i, seed = key
            return seeded(seed, self._load, i)
        return self._load(key)

    def _load(self, i: int):
        path, label = self.items[i]
        return self.decode(path, self.train), label, i

    def decode(self, path, train: bool) -> torch.Tensor:
        """The image of ``path``, transformed (with the training transforms when ``train``) and normalised."""
        Image = pil_image()
        short = round(self.size * 8 / 7)
        try:
            im = read_rgb(path, short, self.own_photos)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: unreadable image ({err}); remove it, or give --on-bad-images skip (on_bad_images='skip' in Python)") from None
        if self.transform == "isic":
            return self._normalised(isic_transform(im, self.size, train))
        w, h = im.size
        scale = short / min(w, h)
        im = im.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        if train:  # torch's RNG: seeded per sample (a (position, seed) key), else as the process has it
            left = int(torch.randint(0, w - self.size + 1, ()))
            top = int(torch.randint(0, h - self.size + 1, ()))
        else:
            left, top = (w - self.size) // 2, (h - self.size) // 2
        im = im.crop((left, top, left + self.size, top + self.size))
        x = _to_tensor(im)
        if train and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return self._normalised(x)

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class KeyedImages(torch.utils.data.Dataset):
    """Any image by a key that says everything: (path, label, position, train, seed of its random
    transforms or None), decoded as ``images`` (an :class:`ImageFiles`) decodes: one loader, its
    workers started once, reads every split of a run, with either transform."""

    def __init__(self, images: ImageFiles) -> None:
        self.images = images

    def __getitem__(self, key):
        path, label, i, train, seed = key
        x = self.images.decode(path, train) if seed is None else seeded(seed, self.images.decode, path, train)
        return x, label, i


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # Pillow's modes of 16-bit grayscale (and 32-bit int)
RGB_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", *SIXTEEN_BIT_MODES)


def read_rgb(path, short: int, own_photos: bool):
    """The image of ``path`` as 8-bit RGB (:func:`as_rgb`); one of your own photos (``own_photos``)
    read no larger than a short side of ``short`` needs and turned upright (:func:`upright`). ``path``
    may be an image already open (a PIL image)."""
    Image = pil_image()
    if isinstance(path, Image.Image):
        from PIL import ImageOps

        return as_rgb(ImageOps.exif_transpose(path) if own_photos else path)
    if is_dicom(path):
        return read_dicom(path).convert("RGB")
    with Image.open(path) as im:
        return as_rgb(upright(im, short) if own_photos else im)


def upright(im, short: int):
    """A photo as a viewer shows it, read no larger than needed: a JPEG decoded at the smallest of
    1/2, 1/4, 1/8 scale whose sides still reach ``short``, then turned by its EXIF orientation."""
    from PIL import ImageOps

    im.draft(None, (short, short))
    return ImageOps.exif_transpose(im)


def as_rgb(im):
    """An 8-bit RGB image. 16-bit grayscale (X-rays, microscopy) is scaled over its full range
    (value / 257, as scikit-image's ``img_as_ubyte``), not clipped at 255 as Pillow's own convert
    does, which turns most of such an image white."""
    if im.mode in SIXTEEN_BIT_MODES:
        a = np.asarray(im).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"32-bit integer pixels from {a.min():.0f} to {a.max():.0f}, beyond 16 bits; save the image "
                             f"as 8- or 16-bit")
        im = pil_image().fromarray(np.rint(a / 257.0).astype(np.uint8), "L")
    return im.convert("RGB")


def _to_tensor(im) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def isic_transform(im, size: int, train: bool) -> torch.Tensor:
    """The authors' ISIC transforms on a PIL RGB image, as a float tensor in [0, 1]."""
    Image = pil_image()
    if not train:
        return _to_tensor(im.resize((size, size), Image.BILINEAR))
    if bool(torch.rand(()) < 0.5):  # RandomHorizontalFlip
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    angle = float(torch.empty(()).uniform_(-180.0, 180.0))  # RandomRotation(180)
    im = im.rotate(angle, resample=Image.NEAREST, expand=False, fillcolor=(0, 0, 0))
    top, left, h, w = _resized_crop_box(im.size[0], im.size[1], (0.3, 1.0), (3 / 4, 4 / 3))
    im = im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    return _to_tensor(im)


def _resized_crop_box(width: int, height: int, scale, ratio) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (top, left, h, w) of a random crop covering
    ``scale`` of the area with an aspect ratio in ``ratio`` (log-uniform); 10 tries, then the
    central crop with the ratio clamped."""
    import math

    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(torch.empty(()).uniform_(scale[0], scale[1]))
        aspect = math.exp(float(torch.empty(()).uniform_(log_ratio[0], log_ratio[1])))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, ()))
            left = int(torch.randint(0, width - w + 1, ()))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def checked_size(path) -> tuple[int, int]:
    """(width, height) of an image file from its header, which is checked: a file l2b can read as
    RGB (DICOM: one frame of a kind it shows, read by pydicom); else OSError or ValueError."""
    if is_dicom(path):
        return dicom_size(path)
    with pil_image().open(path) as im:
        if im.mode not in RGB_MODES:  # e.g. float pixels (F): no scale to read them by
            raise ValueError(f"pixel mode {im.mode} cannot be read as RGB; save it as 8- or 16-bit")
        im.verify()
        return im.size


def check_images(items, on_bad_images: str, where: str):
    """Open every image header; fail (default) or skip, listing the unreadable ones."""
    if on_bad_images not in ("error", "skip"):
        raise ValueError(f"on_bad_images must be 'error' or 'skip', got {on_bad_images!r}")
    good, bad = [], []
    for path, label in items:
        try:
            checked_size(path)
            good.append((path, label))
        except (OSError, ValueError, SyntaxError) as err:
            bad.append((path, err))
    if bad:
        listing = "; ".join(f"{p} ({e})" for p, e in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        if on_bad_images == "error":
            raise ValueError(
                f"{where}: {len(bad)} unreadable image(s): {listing}. Fix or remove them, or "
                "give --on-bad-images skip to leave them out (on_bad_images='skip' in Python)"
            )
        warnings.warn(f"{where}: skipped {len(bad)} unreadable image(s): {listing}", stacklevel=3)
    return good
