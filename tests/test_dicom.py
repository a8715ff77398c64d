"""DICOM input: the display pipeline, compressed syntaxes, bad files, privacy — on files pydicom writes here."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_windowing
from pydicom.uid import (
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from typer.testing import CliRunner

from btxrd_cam.checkpoint import load_checkpoint
from btxrd_cam.cli import app
from btxrd_cam.data import ImageItem, decode_image, find_images
from btxrd_cam.dicom import window_linear
from btxrd_cam.engine import Engine
from btxrd_cam.errors import InputError
from btxrd_cam.maps import upsample_cam

PATIENT = "Doe^Jane^Secretname"
BUNDLED = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped in pydicom's wheel: nothing downloads


def write_dicom(path: Path, stored: np.ndarray, photometric="MONOCHROME2", bits=12, **elements) -> Path:
    """A DX radiograph as a scanner would write it: stored values in 16-bit words, a patient name we must never leak."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT, "ID-Secretname-7", "19700101"
    ds.AccessionNumber, ds.InstitutionName = "ACC-Secretname", "Secretname Hospital"
    ds.Modality = "DX"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    frames = stored if stored.ndim == 3 else stored[None]
    ds.Rows, ds.Columns = frames.shape[1:]
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = frames.astype(np.uint16).tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _radiograph(seed=0, shape=(96, 80)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, shape).astype(np.float32), (0, 0), 3)
    return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def test_monochrome2_with_a_window_maps_the_window_onto_8_bits(tmp_path):
    stored = np.array([[0, 1000, 2000], [2040, 3000, 4095]], np.uint16)
    path = write_dicom(tmp_path / "a.dcm", stored, WindowCenter=2000.5, WindowWidth=2001)
    decoded = decode_image(path, keep_gray=True)
    # LINEAR (PS3.3 C.11.2.1.2.1): below c - 0.5 - (w-1)/2 = 1000 → 0, above c - 0.5 + (w-1)/2 = 3000 → 255
    expected = np.floor(np.clip(((stored - 2000.0) / 2000 + 0.5) * 255, 0, 255) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(decoded.pixels, expected)
    assert decoded.info["window"] == {"source": "file", "center": 2000.5, "width": 2001.0, "function": "LINEAR"}
    assert decoded.info["modality"] == "DX" and decoded.info["bits_stored"] == 12 and decoded.warnings == []


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_the_window_functions_equal_pydicoms_rescaled(function):
    ds = Dataset()
    ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME2", 12, 0
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 1500.0, 800.0, function
    values = np.arange(0, 4096, 7, dtype=np.float64)
    theirs = apply_windowing(values.copy(), ds) / 4095 * 255  # pydicom's output spans the stored range
    np.testing.assert_allclose(window_linear(values, 1500.0, 800.0, function), theirs, atol=1e-9)


def test_monochrome1_rescale_and_a_voi_lut_sequence(tmp_path):
    stored = np.array([[0, 100], [200, 300]], np.uint16)
    # rescale to "HU-like" values, then a window on them; MONOCHROME1 inverts after the window
    path = write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=-100,
                       WindowCenter=200.5, WindowWidth=201)  # fmt: skip
    decoded = decode_image(path, keep_gray=True)
    rescaled = stored * 2.0 - 100
    window = np.clip(((rescaled - 200.0) / 200 + 0.5) * 255, 0, 255)
    np.testing.assert_array_equal(decoded.pixels, np.floor(255 - window + 0.5).astype(np.uint8))
    # a VOI LUT Sequence wins over the window
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 8]  # 4 entries, first input value 0, 8-bit output
    lut.LUTData = [0, 50, 100, 255]
    lut["LUTData"].VR = "US"
    path = write_dicom(tmp_path / "lut.dcm", np.array([[0, 1], [2, 3]], np.uint16), VOILUTSequence=[lut],
                       WindowCenter=1, WindowWidth=1)  # fmt: skip
    decoded = decode_image(path, keep_gray=True)
    np.testing.assert_array_equal(decoded.pixels, [[0, 50], [100, 255]])
    assert decoded.info["window"] == {"source": "voi_lut", "lut_bits": 8}


def test_presentation_lut_inverse_and_the_window_options(tmp_path):
    stored = np.array([[0, 1000], [3000, 4000]], np.uint16)
    path = write_dicom(tmp_path / "inv.dcm", stored, PresentationLUTShape="INVERSE")
    decoded = decode_image(path, keep_gray=True)  # no window in the file: minmax, then inverted
    np.testing.assert_array_equal(decoded.pixels, 255 - np.floor(stored / 4000 * 255 + 0.5).astype(np.uint8))
    assert decoded.info["window"]["source"] == "minmax (the file has no window)"
    windowed = write_dicom(tmp_path / "w.dcm", stored, WindowCenter=500, WindowWidth=10)
    assert decode_image(windowed, keep_gray=True, dicom_window="minmax").info["window"]["source"] == "minmax"
    wide = write_dicom(tmp_path / "p.dcm", np.arange(10000, dtype=np.uint16).reshape(100, 100) % 4096, bits=12)
    percentile = decode_image(wide, keep_gray=True, dicom_window="percentile")
    assert percentile.info["window"]["source"] == "percentile" and percentile.pixels.max() == 255


def _bytes(pixels: np.ndarray) -> np.ndarray:
    return decode_image(pixels, keep_gray=True).pixels if isinstance(pixels, Path) else pixels


@pytest.mark.parametrize("syntax, plugin", [(RLELossless, None), (JPEG2000Lossless, "pylibjpeg")])
def test_compressed_syntaxes_decode_through_the_plugins(tmp_path, syntax, plugin):
    stored = _radiograph(1).astype(np.uint16) * 16
    plain = write_dicom(tmp_path / "plain.dcm", stored, WindowCenter=2040.5, WindowWidth=4081)
    ds = pydicom.dcmread(plain)
    ds.compress(syntax, encoding_plugin=plugin or "")
    ds.save_as(tmp_path / "compressed.dcm", enforce_file_format=True)
    compressed = decode_image(tmp_path / "compressed.dcm", keep_gray=True)
    np.testing.assert_array_equal(compressed.pixels, decode_image(plain, keep_gray=True).pixels)
    assert compressed.info["transfer_syntax"] == syntax.name


def test_multi_frame_uses_the_first_frame_and_says_so(tmp_path):
    frames = np.stack([np.full((8, 8), 100), np.full((8, 8), 4000)]).astype(np.uint16)
    frames[0, 0, 0] = 0
    decoded = decode_image(write_dicom(tmp_path / "mf.dcm", frames), keep_gray=True)
    assert decoded.pixels.shape == (8, 8) and decoded.pixels[1, 1] == 255  # frame 0's own min-max
    assert decoded.info["frames"] == 2 and "multi-frame DICOM (2 frames): the first frame is used" in decoded.warnings


@pytest.mark.parametrize(
    "name", ["MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm",
             "MR_small_jpeg_ls_lossless.dcm"]
)  # fmt: skip
def test_pydicoms_bundled_monochrome_files_decode_as_pydicom_displays_them(name):
    decoded = decode_image(BUNDLED / name, keep_gray=True)
    ds = pydicom.dcmread(BUNDLED / name)
    assert decoded.pixels.dtype == np.uint8 and decoded.size == (ds.Rows, ds.Columns)
    values = apply_modality_lut(ds.pixel_array, ds)
    if "WindowCenter" in ds:  # pydicom's window spans the stored range: rescaled, it must be ours
        low, high = (
            (0, 2**ds.BitsStored - 1)
            if ds.PixelRepresentation == 0
            else (-(2 ** (ds.BitsStored - 1)), 2 ** (ds.BitsStored - 1) - 1)
        )
        if "RescaleSlope" in ds:
            low, high = low * ds.RescaleSlope + ds.RescaleIntercept, high * ds.RescaleSlope + ds.RescaleIntercept
        expected = (apply_windowing(values.astype(np.float64), ds) - low) / (high - low) * 255
    else:
        expected = (values - values.min()) / (values.max() - values.min()) * 255
    assert np.abs(decoded.pixels.astype(np.float64) - expected).max() <= 0.5 + 1e-6


def test_a_syntax_no_installed_decoder_reads_names_it_and_what_to_do():
    with pytest.raises(
        InputError, match=r"JPGExtended.dcm: the installed decoders cannot decode JPEG Extended .*pylibjpeg-libjpeg"
    ):
        decode_image(BUNDLED / "JPGExtended.dcm")


def test_bundled_files_agree_with_pydicoms_own_pipeline():
    ds = pydicom.dcmread(BUNDLED / "CT_small.dcm")
    values = apply_modality_lut(ds.pixel_array, ds)
    low, high = values.min(), values.max()
    expected = np.floor((values - low) * (255.0 / (high - low)) + 0.5).astype(np.uint8)
    got = decode_image(BUNDLED / "CT_small.dcm", keep_gray=True, dicom_window="minmax").pixels
    np.testing.assert_array_equal(got, expected)


def test_bad_dicoms_are_per_image_errors_with_a_reason(tmp_path):
    with pytest.raises(InputError, match="DICOM without pixel data"):
        decode_image(BUNDLED / "reportsi.dcm")  # a structured report
    with pytest.raises(InputError, match="not a grey radiograph: refused"):
        decode_image(BUNDLED / "SC_rgb_small_odd.dcm")
    good = write_dicom(tmp_path / "good.dcm", np.zeros((32, 32), np.uint16))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-300])
    with pytest.raises(InputError, match="truncated.dcm: pixel data does not match the header"):
        decode_image(truncated)
    ds = pydicom.dcmread(good)
    ds.Rows = 64  # the header now promises twice the pixels the file holds
    ds.save_as(tmp_path / "lying.dcm", enforce_file_format=True)
    with pytest.raises(InputError, match="lying.dcm: pixel data does not match the header"):
        decode_image(tmp_path / "lying.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    with pytest.raises(InputError, match="junk.dcm: "):
        decode_image(tmp_path / "junk.dcm")


def test_same_radiograph_as_png_and_as_monochrome1_dicom_gives_the_same_answer(tiny_ckpt, tmp_path):
    pixels = _radiograph(3, (120, 100))
    cv2.imwrite(str(tmp_path / "x.png"), pixels)
    # stored 16·(255 - p): MONOCHROME1, 12 bits; the window maps 16k exactly onto k, the inversion back onto p
    write_dicom(tmp_path / "x.dcm", (255 - pixels.astype(np.uint16)) * 16, "MONOCHROME1",
                WindowCenter=2040.5, WindowWidth=4081)  # fmt: skip
    np.testing.assert_array_equal(decode_image(tmp_path / "x.dcm", keep_gray=True).pixels, pixels)
    engine = Engine(load_checkpoint(tiny_ckpt))
    png, dcm = engine.run([ImageItem("x", tmp_path / "x.png"), ImageItem("x", tmp_path / "x.dcm")])
    assert png.pred == dcm.pred and dcm.source["photometric_interpretation"] == "MONOCHROME1"
    assert np.abs(upsample_cam(png.cam, (64, 64)) - upsample_cam(dcm.cam, (64, 64))).max() <= 1e-4


def test_a_folder_mixing_dicom_png_and_jpeg_and_no_patient_data_anywhere(tiny_ckpt, tmp_path):
    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    cv2.imwrite(str(scans / "a.png"), _radiograph(4))
    cv2.imwrite(str(scans / "b.jpeg"), _radiograph(5))
    write_dicom(scans / "c.dcm", _radiograph(6).astype(np.uint16) * 16, WindowCenter=2040.5, WindowWidth=4081)
    write_dicom(scans / "sub" / "IM0001", _radiograph(7).astype(np.uint16) * 16)  # no suffix: the preamble tells
    items, failures = find_images([str(scans)])
    assert [i.path.name for i in items] == ["a.png", "b.jpeg", "c.dcm", "IM0001"] and failures == []
    runner = CliRunner()
    out = tmp_path / "out"
    infer = runner.invoke(app, ["infer", str(scans), "--ckpt", str(tiny_ckpt), "-q"], catch_exceptions=False)
    assert infer.exit_code == 0, infer.stderr
    records = [json.loads(line) for line in infer.stdout.splitlines()]
    assert [r["source"] and r["source"]["format"] for r in records] == [None, None, "DICOM", "DICOM"]
    explain = runner.invoke(
        app, ["explain-image", str(scans), "--ckpt", str(tiny_ckpt), "--out", str(out), "--save-heatmap"],
        catch_exceptions=False,
    )  # fmt: skip
    assert explain.exit_code == 0, explain.stderr
    for output in (infer.stdout, infer.stderr, explain.stdout, explain.stderr):
        assert "Secretname" not in output and "19700101" not in output
    for path in out.rglob("*"):
        assert "Secretname" not in path.name
        if path.is_file():
            assert b"Secretname" not in path.read_bytes()


def test_eight_bit_values_without_a_window_are_shown_as_stored_like_their_png_twin(tmp_path):
    """An 8-bit MONOCHROME2 file without a window holds display values: it decodes to the pixels its PNG twin holds,
    not stretched to its own min–max (which changed a prediction, tried as a new user would)."""
    pixels = (_radiograph(3) * 0.6 + 40).astype(np.uint8)  # 40..193: far from filling 0..255
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = RLELossless
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "OT", 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.compress(RLELossless, pixels, encoding_plugin="pydicom")
    ds.save_as(tmp_path / "eight.dcm", enforce_file_format=True)
    cv2.imwrite(str(tmp_path / "eight.png"), pixels)
    dicom, png = (
        decode_image(tmp_path / "eight.dcm", keep_gray=True),
        decode_image(tmp_path / "eight.png", keep_gray=True),
    )
    np.testing.assert_array_equal(dicom.pixels, png.pixels)
    assert dicom.info["window"]["source"].startswith("stored")
    # deeper data without a window is still stretched to its range
    deep = decode_image(write_dicom(tmp_path / "deep.dcm", pixels.astype(np.uint16) * 16, bits=12), keep_gray=True)
    assert deep.pixels.min() == 0 and deep.pixels.max() == 255 and deep.info["window"]["source"].startswith("minmax")
