import csv

import cv2
import numpy as np
import pytest
from PIL import Image

from btxrd_cam.data import (
    DATASET_COLUMNS,
    find_images,
    label_from_row,
    load_image,
    preprocess,
    read_manifest,
    read_metadata,
    split_items,
    subtype_from_row,
)
from btxrd_cam.errors import InputError, UsageError
from tests.conftest import gray_image


def test_dataset_has_the_37_btxrd_columns():
    assert len(DATASET_COLUMNS) == 37 and len(set(DATASET_COLUMNS)) == 37
    assert DATASET_COLUMNS[:4] == ("image_id", "center", "age", "gender")


@pytest.mark.parametrize(
    "row, label",
    [
        ({"tumor": 1, "benign": 0, "malignant": 1}, "Malignant"),
        ({"tumor": 1, "benign": 1, "malignant": 1}, "Malignant"),
        ({"tumor": 1, "benign": "1", "malignant": "0"}, "Benign"),
        ({"tumor": 0, "benign": 0, "malignant": 0}, "Normal"),
        ({}, "Normal"),
    ],
)
def test_label_derivation(row, label):
    assert label_from_row(row) == label


def test_subtype_is_the_column_set_to_one():
    assert subtype_from_row({"osteosarcoma": "1", "giant cell tumor": "0"}) == "osteosarcoma"
    assert subtype_from_row({"osteosarcoma": "0"}) is None


def _write_dataset(root, rows):
    with (root / "dataset.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=DATASET_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, 0) for c in DATASET_COLUMNS})


def test_metadata_from_csv_and_xlsx_agree(tmp_path):
    rows = [
        {"image_id": "IMG000001.jpeg", "center": 2, "tumor": 1, "benign": 1, "simple bone cyst": 1},
        {"image_id": "IMG000002.jpg", "center": 1},
    ]
    _write_dataset(tmp_path, rows)
    from_csv = read_metadata(tmp_path)
    assert from_csv["IMG000001"].label == "Benign" and from_csv["IMG000001"].subtype == "simple bone cyst"
    assert from_csv["IMG000002"].label == "Normal" and from_csv["IMG000002"].center == "1"
    openpyxl = pytest.importorskip("openpyxl")
    xlsx_root = tmp_path / "x"
    xlsx_root.mkdir()
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(list(DATASET_COLUMNS))
    for row in rows:
        sheet.append([row.get(c, 0) for c in DATASET_COLUMNS])
    book.save(xlsx_root / "dataset.xlsx")
    from_xlsx = read_metadata(xlsx_root)
    assert {k: (v.label, v.subtype) for k, v in from_xlsx.items()} == {
        k: (v.label, v.subtype) for k, v in from_csv.items()
    }


def test_manifest_rows_resolve_images_annotations_and_missing_files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "Annotations").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "IMG000001.jpeg"), gray_image(20, 30))
    cv2.imwrite(str(tmp_path / "images" / "IMG000002.jpg"), gray_image(20, 30))
    (tmp_path / "Annotations" / "IMG000001.json").write_text("{}")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "image_id,split,label\nIMG000001.jpeg,test,Benign\nIMG000002,test,Normal\nIMG000003.jpeg,test,Malignant\n"
    )
    assert read_manifest(manifest) == [
        ("IMG000001.jpeg", "Benign"),
        ("IMG000002", "Normal"),
        ("IMG000003.jpeg", "Malignant"),
    ]
    items = split_items(tmp_path, manifest)
    assert [it.image_id for it in items] == ["IMG000001", "IMG000002", "IMG000003"]
    assert items[0].annotation is not None and items[1].annotation is None
    assert items[1].path.name == "IMG000002.jpg"
    with pytest.raises(InputError, match="IMG000003.jpeg: file not found"):
        load_image(items[2].path)


def test_missing_manifest_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        read_manifest(tmp_path / "stratified_test.csv")


def test_find_images_walks_directories_globs_and_reports_bad_inputs(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for name in ("a/x.png", "a/b/y.jpg", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"")
    items, failures = find_images(
        [
            str(tmp_path / "a"),
            str(tmp_path / "a" / "*.png"),
            str(tmp_path / "nope.png"),
            str(tmp_path / "empty"),
        ]
    )
    assert [it.path.name for it in items] == ["y.jpg", "x.png"]  # sorted walk, duplicates dropped
    assert [reason for _, reason in failures] == [
        "no such file or directory",
        "directory contains no images (.jpg, .jpeg, .png, .bmp, .tif, .tiff, .dcm, .dicom)",
    ]


def test_every_file_kind_loads_as_8bit_rgb(tmp_path):
    gray = gray_image(30, 40)
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full_like(gray, 128)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    sixteen = (np.arange(30 * 40).reshape(30, 40) * 54).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "16.png"), sixteen)
    for name in ("g.png", "rgb.png", "rgba.png", "p.png", "16.png"):
        pixels, size = load_image(tmp_path / name)
        assert pixels.dtype == np.uint8 and pixels.shape == (30, 40, 3) and size == (30, 40), name
    assert np.array_equal(load_image(tmp_path / "g.png")[0][..., 1], gray)
    assert np.array_equal(load_image(tmp_path / "rgb.png")[0], rgb)
    assert np.array_equal(load_image(tmp_path / "rgba.png")[0], rgb)  # alpha dropped, colour kept
    sixteen_loaded = load_image(tmp_path / "16.png")[0][..., 0]
    assert sixteen_loaded.max() == round(int(sixteen.max()) * 255 / 65535)  # scaled, not clipped to 255
    assert np.array_equal(sixteen_loaded, np.rint(sixteen * 255.0 / 65535).astype(np.uint8))


def test_grayscale_jpeg_kept_gray_is_exactly_pillows_rgb_decode(tmp_path):
    cv2.imwrite(str(tmp_path / "g.jpg"), gray_image(50, 70))
    gray, _ = load_image(tmp_path / "g.jpg", keep_gray=True)
    assert gray.ndim == 2
    reference = np.asarray(Image.open(tmp_path / "g.jpg").convert("RGB"))
    assert np.array_equal(np.repeat(gray[:, :, None], 3, axis=2), reference)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 60), np.uint8)
    pixels[:, :10] = 255  # bright band on the left
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image.save(tmp_path / "r.jpg", exif=exif, quality=95)
    loaded, size = load_image(tmp_path / "r.jpg")
    assert size == (60, 20) and loaded.shape[:2] == (60, 20)
    assert loaded[:10, :, 0].mean() > 200 and loaded[-10:, :, 0].mean() < 50  # the band is now on top


def test_unreadable_and_truncated_files_are_input_errors_naming_the_file(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    cv2.imwrite(str(tmp_path / "full.jpg"), gray_image(200, 200))
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="notes.png: not an image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(InputError, match="cut.jpg: unreadable image"):
        load_image(tmp_path / "cut.jpg")


def test_preprocess_matches_a_hand_computation():
    pixels = np.array([[0, 255], [255, 0]], np.uint8)
    rgb = np.stack([pixels] * 3, axis=2)
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    out = preprocess(rgb, 2, mean, std)
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], [[-1, 1], [1, -1]])
    np.testing.assert_allclose(out[1], [[-1, 3], [3, -1]])
    np.testing.assert_allclose(out[2], [[0, 1], [1, 0]])
    # resize is cv2.INTER_LINEAR to a square without keeping the aspect ratio
    wide = np.tile(np.arange(0, 200, 2, dtype=np.uint8), (10, 1))
    expected = cv2.resize(wide, (8, 8), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    np.testing.assert_allclose(preprocess(wide, 8, (0, 0, 0), (1, 1, 1))[1], expected, atol=1e-7)
    assert np.array_equal(preprocess(wide, 8, mean, std), preprocess(np.dstack([wide] * 3), 8, mean, std))


def test_fast_decode_reduces_large_jpegs_but_reports_the_original_size(tmp_path):
    cv2.imwrite(str(tmp_path / "big.jpg"), gray_image(1200, 1600))
    reduced, size = load_image(tmp_path / "big.jpg", keep_gray=True, draft_size=300)
    assert size == (1200, 1600)
    assert reduced.shape == (300, 400)  # libjpeg's 1/4 scale: the smallest one still >= 300 px per side
    exact, _ = load_image(tmp_path / "big.jpg", keep_gray=True)
    assert exact.shape == (1200, 1600)


def test_fast_decode_applies_exif_orientation_too(tmp_path):
    pixels = np.zeros((400, 1200), np.uint8)
    pixels[:, :200] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "r.jpg", exif=exif, quality=95)
    reduced, size = load_image(tmp_path / "r.jpg", keep_gray=True, draft_size=100)
    assert size == (1200, 400) and reduced.shape == (300, 100)
    assert reduced[:40].mean() > 200 and reduced[-40:].mean() < 50
