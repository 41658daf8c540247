"""DICOM files among one's own images: read as a viewer shows them (rescale, display window,
MONOCHROME1 inverted), checked before training, trained on like any other image file."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from l2b.cli import main  # noqa: E402
from l2b.data import load_dataset  # noqa: E402
from l2b.data.dicom import read_dicom, window  # noqa: E402
from l2b.data.images import read_rgb  # noqa: E402


def write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2", slope: float = 1.0,
                intercept: float = 0.0, window_cw=None, frames: int | None = None):
    """An uncompressed DICOM file as a scanner's export would hold it (12 bits stored in 16)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    colour = photometric == "RGB"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelRepresentation = 0
    if window_cw is not None:
        ds.WindowCenter, ds.WindowWidth = window_cw
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.astype(np.uint8 if colour else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_grayscale_is_rescaled_and_windowed_as_a_viewer_shows_it(tmp_path):
    raw = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 16  # 0 .. 4080 stored
    # CT-like: HU = raw - 1024; a window of center 40, width 400 (soft tissue)
    f = write_dicom(tmp_path / "ct.dcm", raw, slope=1.0, intercept=-1024.0, window_cw=(40, 400))
    got = np.asarray(read_dicom(f))
    assert got.shape == (16, 16) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.rint(window(raw - 1024.0, 40, 400)).astype(np.uint8))
    assert got.min() == 0 and got.max() == 255  # air black, bone white
    # pydicom's own VOI function, over the range it maps onto, gives the same picture
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(f)
    voi = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    np.testing.assert_array_equal(got, np.rint((voi + 1024.0) * 255.0 / 4095.0).astype(np.uint8))
    # no window: the image's own range; MONOCHROME1 (higher is darker) inverted
    plain = np.asarray(read_dicom(write_dicom(tmp_path / "p.dcm", raw)))
    inverted = np.asarray(read_dicom(write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1")))
    assert plain[0, 0] == 0 and plain[-1, -1] == 255
    np.testing.assert_array_equal(inverted, 255 - plain)
    assert np.asarray(read_rgb(tmp_path / "p.dcm", 16, False)).shape == (16, 16, 3)  # the path the loaders take


def test_colour_dicom_reads_as_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(read_dicom(write_dicom(tmp_path / "c.dcm", rgb, "RGB"))), rgb)


def test_a_folder_of_dicom_files_trains_and_its_label_issues_are_drawn(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        for c, name in enumerate(("normal", "nodule")):
            (tmp_path / "scans" / split / name).mkdir(parents=True)
            for i in range(n):
                base = rng.integers(200, 1200, (20, 24)) + (1500 if c else 0)
                stem = f"{i}.dcm" if i % 2 else f"IM{i:04d}"  # a PACS export names its files without a suffix
                write_dicom(tmp_path / "scans" / split / name / stem, base, intercept=-1024.0, window_cw=(300, 2000))
    ds = load_dataset(f"folder:{tmp_path / 'scans'}")
    assert len(ds.train) == 24 and ds.classes == ("nodule", "normal")
    out = tmp_path / "run"
    assert main(["train", "--data", f"folder:{tmp_path / 'scans'}", "--method", "ce", "--model", "small-cnn",
                 "--epochs", "2", "--workers", "0", "--out", str(out)]) == 0
    assert "20-px crops" in capsys.readouterr().out  # their own size, read from the headers
    assert main(["label-issues", str(out), "--show", "4"]) == 0
    assert (out / "label_issues.png").is_file()
    assert main(["predict", str(out), str(tmp_path / "scans" / "test")]) == 0  # new scans, from the run alone
    assert len((out / "predictions.csv").read_text().splitlines()) == 1 + 8


def test_dicom_files_l2b_cannot_show_are_named_before_training(tmp_path, capsys):
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / "d" / split / name).mkdir(parents=True)
            write_dicom(tmp_path / "d" / split / name / "0.dcm", np.zeros((8, 8)))
    write_dicom(tmp_path / "d" / "train" / "a" / "volume.dcm", np.zeros((3, 8, 8)), frames=3)
    (tmp_path / "d" / "train" / "b" / "broken.dcm").write_bytes(b"not a dicom file at all" * 10)
    assert main(["train", "--data", f"folder:{tmp_path / 'd'}", "--method", "ce", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "2 unreadable image(s)" in err and "3 frames in one DICOM file" in err and "broken.dcm" in err
    assert "\n" not in err.strip()


def test_without_pydicom_the_error_names_the_extra(tmp_path, monkeypatch):
    f = write_dicom(tmp_path / "x.dcm", np.zeros((8, 8)))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r"pip install 'l2b\[dicom\]'"):
        read_dicom(f)
