"""DICOM images (``.dcm``, ``.dicom``) among a folder's or a list's files, read with pydicom
(``l2b[dicom]``) into the 8-bit image the model sees, as a radiology viewer would show it.

Grayscale (MONOCHROME1/2): the modality rescale (slope, intercept) to the stored unit (Hounsfield
units for CT), then the file's first display window (center, width; the linear function of DICOM
PS3.3 C.11.2.1.2.1) or, without one, the image's own range; MONOCHROME1 (higher is darker) is
inverted. Colour (RGB, or YBR, which pydicom turns into RGB): scaled over its bit depth. A
multi-frame file (a volume, a cine loop) is refused: one image a file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom")
GRAY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")


def is_dicom(path) -> bool:
    """A ``.dcm`` / ``.dicom`` file, or one without a suffix that opens with DICOM's preamble (the
    "DICM" mark after 128 bytes: what a scanner's or PACS export names IM0001 and the like)."""
    if not isinstance(path, (str, Path)):
        return False
    suffix = Path(path).suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix:
        return False
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ImportError("DICOM images need pydicom: pip install 'l2b[dicom]'") from None
    return pydicom


def _header(path, pixels: bool = False):
    """The file's attributes (with its pixels where asked), checked: one frame l2b can show."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    except (pydicom.errors.InvalidDicomError, EOFError) as err:
        raise ValueError(f"not a readable DICOM file ({err})") from None
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError("a DICOM file without an image (no Rows / Columns)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"{frames} frames in one DICOM file (a volume or a loop); l2b reads one image a file: save "
                         f"each frame (or the slice you label) as its own file")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in GRAY + COLOUR:
        raise ValueError(f"DICOM photometric interpretation {photometric or 'missing'!r}; l2b reads "
                         f"{', '.join(GRAY + COLOUR)}")
    return ds


def dicom_size(path) -> tuple[int, int]:
    """(width, height) from the header, which is checked: a ValueError names what makes ``path`` no
    image l2b can read."""
    ds = _header(path)
    return int(ds.Columns), int(ds.Rows)


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear VOI function (PS3.3 C.11.2.1.2.1) onto 0..255."""
    span = max(float(width) - 1.0, 1.0)
    return np.clip(((values - (center - 0.5)) / span + 0.5) * 255.0, 0.0, 255.0)


def _first(value) -> float:
    """A display window's value: the first where the file holds several."""
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)


def read_dicom(path):
    """The image of a DICOM file as an 8-bit PIL image (L or RGB; see the module's docstring)."""
    from PIL import Image

    ds = _header(path, pixels=True)  # read once, checked
    try:
        pixels = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, AttributeError) as err:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        raise ValueError(f"its pixels cannot be decoded (transfer syntax {getattr(syntax, 'name', syntax)}: {err}); "
                         f"a compressed DICOM needs pydicom's decoders, e.g. pip install pylibjpeg "
                         f"pylibjpeg-libjpeg pylibjpeg-openjpeg") from None
    photometric = str(ds.PhotometricInterpretation)
    if photometric in COLOUR:
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        return Image.fromarray(np.rint(np.asarray(pixels, np.float64) * (255.0 / top)).clip(0, 255).astype(np.uint8),
                               "RGB")
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        gray = window(values, _first(ds.WindowCenter), _first(ds.WindowWidth))
    else:
        lo, hi = float(values.min()), float(values.max())
        gray = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        gray = 255.0 - gray
    return Image.fromarray(np.rint(gray).astype(np.uint8), "L")
