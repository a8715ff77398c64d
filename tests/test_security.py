"""Security and data safety: each test is one promise, in the order the README's "Bad files" section lists them.

1. A page meant to be sent carries no local file.        5. Limits apply before anything is allocated.
2. Nothing is written outside --out.                        6. A wrong shape or a crafted entry is no traceback.
3. No source image is overwritten.                          7. No element value quoted, no address, no formula,
4. The cache never serves a wrong result.                      no external decoder, no silent page.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from btxrd_cam.cache import ExplanationCache
from btxrd_cam.checkpoint import load_checkpoint, save_upstream_checkpoint
from btxrd_cam.cli import app
from btxrd_cam.commands.annotate import run_annotate
from btxrd_cam.commands.compare import run_compare
from btxrd_cam.commands.explain import run_explain
from btxrd_cam.commands.gallery import run_gallery
from btxrd_cam.commands.report import run_report
from btxrd_cam.data import decode_image, manifest_path, split_items
from btxrd_cam.dicom import read_dicom
from btxrd_cam.engine import Engine
from btxrd_cam.errors import InputError, UsageError, one_line
from btxrd_cam.reports import format_records
from btxrd_cam.settings import (
    AnnotateSettings,
    CompareSettings,
    ExplainSettings,
    GallerySettings,
    ReportSettings,
    build_settings,
)
from tests.conftest import TINY_ARCH, make_tiny_model, project_settings
from tests.test_dicom import write_dicom


def _digest_tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _explain(ckpt, inputs, out, **extra):
    values = dict(ckpt=ckpt, inputs=[str(i) for i in inputs], out=out, quiet=True, workers=0)
    return run_explain(build_settings(ExplainSettings, **{**values, **extra}))


# ---- 1. report --self-contained embeds only what lies under the results folder ---------------------------------


def test_1_the_report_embeds_no_file_from_outside_the_results_folder(tiny_project, tmp_path):
    out = tiny_project / "out"
    run_annotate(project_settings(AnnotateSettings, tiny_project))
    run_gallery(project_settings(GallerySettings, tiny_project, k="1"))
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG-the-secret")
    gallery = json.loads((out / "gallery.json").read_text())
    name = next(iter(gallery["classes"]))
    gallery["classes"][name]["file"] = str(secret)  # an absolute path in a report field
    (out / "gallery.json").write_text(json.dumps(gallery))
    first = next((out / "images/annotate-iou").iterdir())
    first.unlink()
    first.symlink_to(secret)  # a symlink under images/ pointing out of the folder
    (out / "annotation_metrics.png").unlink()
    (out / "annotation_metrics.png").symlink_to("/proc/self/environ")  # a figure name, symlinked
    outcome = run_report(build_settings(ReportSettings, results_dir=out, self_contained=True, quiet=True))
    html = outcome.path.read_text()
    assert "the-secret" not in html and base64.b64encode(secret.read_bytes()).decode() not in html
    assert f'src="{secret}' not in html
    outside = [note for note in outcome.notes if "outside the results folder" in note]
    assert len(outside) >= 3 and any(secret.name in note for note in outside)


# ---- 2. nothing written outside --out ---------------------------------------------------------------------------


def test_2_a_class_name_cannot_write_outside_out(tiny_project, tmp_path):
    ckpt = tiny_project / "checkpoints/best_stratified.pt"
    payload = torch.load(ckpt, weights_only=True)
    hostile = "x/../../../../elsewhere/y"
    payload["class_names"] = ["Normal", "Benign", hostile]
    payload["config"]["model"]["class_names"] = payload["class_names"]
    torch.save(payload, ckpt)
    manifest = tiny_project / "data/splits/stratified_test.csv"
    manifest.write_text(manifest.read_text().replace("Malignant", hostile))
    before = {p for p in tmp_path.rglob("*") if "out" not in p.parts}
    run_gallery(project_settings(GallerySettings, tiny_project, k="1"))
    written = {p for p in tmp_path.rglob("*") if "out" not in p.parts} - before
    assert written == set() and not (tmp_path / "elsewhere").exists()
    assert len(list((tiny_project / "out").glob("gallery_x_.._.._.._.._elsewhere_y-*.png"))) == 1


def test_2_an_input_named_dot_dot_png_writes_inside_out(tiny_ckpt, tmp_path):
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "..png"), np.full((32, 32), 80, np.uint8))
    (record,) = _explain(tiny_ckpt, [tmp_path / "in" / "..png"], tmp_path / "out").records
    assert record["error"] is None
    assert Path(record["overlay"]).resolve().parent == (tmp_path / "out").resolve()
    assert not list(tmp_path.glob("*_cam.png"))  # nothing beside --out


# ---- 3. no source image overwritten -----------------------------------------------------------------------------


def test_3_out_inside_the_data_is_refused_and_never_overwrites_a_radiograph(tiny_project, monkeypatch):
    monkeypatch.chdir(tiny_project)
    before = _digest_tree(tiny_project / "data_raw")
    refused = CliRunner().invoke(app, ["annotate-iou", "--out", "data_raw", "-q"])
    assert refused.exit_code == 2 and "--out" in refused.stderr and "--force-out" in refused.stderr
    forced = CliRunner().invoke(app, ["annotate-iou", "--out", "data_raw", "--force-out", "-q"])
    assert forced.exit_code == 0, forced.stderr
    after = _digest_tree(tiny_project / "data_raw")
    assert {k: v for k, v in after.items() if k in before} == before  # every radiograph as it was
    assert all(k.startswith(("images/annotate-iou/", ".cache/", "annotation")) for k in set(after) - set(before))


def test_3_explain_image_keeps_inputs_apart_and_never_overwrites_one(tiny_ckpt, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, value in (("a.png", 40), ("a.jpg", 200), ("x.png", 90), ("x_cam.png", 150)):
        cv2.imwrite(str(folder / name), np.full((32, 32), value, np.uint8))
    records = _explain(tiny_ckpt, [folder / "a.png", folder / "a.jpg"], tmp_path / "out").records
    assert sorted(Path(r["overlay"]).name for r in records) == ["a.jpg_cam.png", "a.png_cam.png"]
    with pytest.raises(UsageError, match="--out"):
        _explain(tiny_ckpt, [folder / "x.png"], folder)
    original = (folder / "x_cam.png").read_bytes()
    (record,) = _explain(tiny_ckpt, [folder / "x.png", folder / "x_cam.png"], folder, force_out=True).records[:1]
    assert "overwrite an input file" in record["error"] and (folder / "x_cam.png").read_bytes() == original


def test_3_annotate_and_compare_keep_their_own_overlays(tiny_project):
    run_annotate(project_settings(AnnotateSettings, tiny_project))
    run_compare(project_settings(CompareSettings, tiny_project, methods="layercam", layers="blocks.2"))
    out = tiny_project / "out/images"
    annotate = {p.name: p.read_bytes() for p in (out / "annotate-iou").iterdir()}
    compare = {p.name: p.read_bytes() for p in (out / "compare" / "layercam@blocks.2").iterdir()}
    assert annotate.keys() == compare.keys() and annotate != compare


# ---- 4. the cache is an optimisation, never a source of truth ----------------------------------------------------


def _items_all(project):
    return split_items(project / "data_raw", manifest_path(project / "data/splits", "stratified", "test"))


def _items(project):
    return split_items(project / "data_raw", manifest_path(project / "data/splits", "stratified", "test"))[:3]


def _open(project, out, class_names=None, warnings=None):
    checkpoint = load_checkpoint(project / "checkpoints/best_stratified.pt", class_names=class_names)
    engine = Engine(checkpoint, batch_size=4)
    context = {"checkpoint_sha256": checkpoint.sha256, "class_names": checkpoint.class_names, "image_size": 64}
    warn = warnings.append if warnings is not None else None
    return engine, ExplanationCache(out / ".cache", context, warn=warn, shapes=engine.map_shapes())


def test_4_reordered_class_names_with_a_class_target_are_recomputed(tiny_project, tmp_path):
    items = _items(tiny_project)
    engine, cache = _open(tiny_project, tmp_path)
    first = [r.cam for r in engine.run(items, target="Malignant", cache=cache)]
    engine, cache = _open(tiny_project, tmp_path, class_names=["Malignant", "Benign", "Normal"])
    again = [r.cam for r in engine.run(items, target="Malignant", cache=cache)]
    assert cache.hits == 0 and any(not np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def _entries(folder):
    return sorted((folder / ".cache").rglob("*.npz"))


def _rewrite(path: Path, **members):
    """An entry with some members replaced (the header re-encoded when given as a dict)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: np.array(data[name]) for name in data.files}
    for name, value in members.items():
        arrays[name] = np.frombuffer(json.dumps(value).encode(), np.uint8) if name == "header" else value
    with path.open("wb") as f:
        np.savez(f, **arrays)


def test_4_entries_that_are_not_what_the_engine_writes_are_recomputed_with_one_warning(tiny_project, tmp_path):
    items = _items(tiny_project)
    engine, cache = _open(tiny_project, tmp_path)
    truth = [r.probs for r in engine.run(items, cache=cache)]
    a, b, c = _entries(tmp_path)
    with np.load(a) as data:
        logits = np.array(data["logits"])
        header = json.loads(bytes(data["header"]))
    _rewrite(a, logits=np.full_like(logits, np.nan))  # NaN logits under a valid key
    _rewrite(b, header=[])  # a header that is no object
    other = json.loads(bytes(np.load(c)["header"]))
    shutil.copy(a, c)  # another image's entry ...
    _rewrite(c, header={**header, "key": other["key"]})  # ... re-keyed to this image
    warnings = []
    engine, cache = _open(tiny_project, tmp_path, warnings=warnings)
    got = [r.probs for r in engine.run(items, cache=cache)]
    for probs, expected in zip(got, truth, strict=True):  # recomputed (alone: the last bits may differ)
        np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert cache.hits == 0 and cache.rejected == 3 and len(warnings) == 1


def _declare_size(path: Path, member: str, size: int) -> None:
    """Make the zip's central directory declare `size` bytes for `member` (its data stays as it is)."""
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x01\x02", 0)
    while at != -1:
        name_length = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46 : at + 46 + name_length].decode() == member:
            struct.pack_into("<I", raw, at + 24, size & 0xFFFFFFFF)  # uncompressed size
            break
        at = raw.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(raw))


def test_4_crafted_members_are_refused_before_they_are_read(tiny_project, tmp_path):
    items = _items(tiny_project)
    engine, cache = _open(tiny_project, tmp_path)
    list(engine.run(items, cache=cache))
    a, b, c = _entries(tmp_path)
    _declare_size(a, "map_0.npy", 2**32 - 1)  # a member declaring 4 GB (zip64 would allow a terabyte)
    with np.load(b) as data:
        header = json.loads(bytes(data["header"]))
    _rewrite(b, header={**header, "orig_size": [float("inf"), 4]})
    with np.load(c) as data:
        _rewrite(c, logits=np.concatenate([np.array(data["logits"]), [0.5]]).astype(np.float32))  # 4 logits, 3 classes
    engine, cache = _open(tiny_project, tmp_path)
    results = list(engine.run(items, cache=cache))
    assert all(r.ok for r in results) and cache.hits == 0 and cache.rejected == 3


def test_4_nan_logits_are_an_error_not_class_0(tiny_project, monkeypatch):
    ckpt = tiny_project / "checkpoints/best_stratified.pt"
    payload = torch.load(ckpt, weights_only=True)
    payload["normalization"]["std"] = [0.0, 0.0, 0.0]  # a zero std: every input becomes NaN or infinite
    torch.save(payload, ckpt)
    monkeypatch.chdir(tiny_project)
    result = CliRunner().invoke(app, ["infer", "-q", "--format", "json"])
    assert result.exit_code == 1
    records = json.loads(result.stdout)
    assert records and all(r["pred"] is None and "NaN" in r["error"] for r in records)


def test_4_a_nan_pixel_in_a_float_tiff_is_a_warning_not_a_black_image(tmp_path):
    values = np.linspace(0, 1000, 64 * 64, dtype=np.float32).reshape(64, 64)
    values[3, 3] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    decoded = decode_image(tmp_path / "f.tif", keep_gray=True)
    assert decoded.pixels.max() == 255 and decoded.pixels[40, 40] > 0
    assert any("NaN or infinite" in w for w in decoded.warnings)


# ---- 5. limits apply before allocation --------------------------------------------------------------------------


def test_5_a_deflated_dicom_that_inflates_beyond_the_limit_is_refused_before_inflating(tmp_path):
    stored = np.zeros((512, 512), np.uint16)  # 512 KB of zeros: deflates to a few KB
    path = write_dicom(tmp_path / "d.dcm", stored)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    data = (tmp_path / "deflated.dcm").read_bytes()
    assert len(data) < 20_000
    with pytest.raises(InputError, match="inflates beyond"):
        read_dicom(tmp_path / "deflated.dcm", data, inflated_limit=100_000)
    pixels, *_ = read_dicom(tmp_path / "deflated.dcm", data)  # within the (default) limit it reads
    assert pixels.shape == (512, 512)


@pytest.mark.parametrize("size", [30000, -1, "abc", 2.5])
def test_5_a_checkpoint_image_size_outside_32_to_4096_exits_2(tmp_path, size, monkeypatch):
    path = tmp_path / "c.pt"
    save_upstream_checkpoint(path, make_tiny_model(), TINY_ARCH, ["Normal", "Benign", "Malignant"], 64)
    payload = torch.load(path, weights_only=True)
    payload["config"]["data"]["image_size"] = size
    torch.save(payload, path)
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((40, 40), np.uint8))
    result = CliRunner().invoke(app, ["infer", str(tmp_path / "x.png"), "--ckpt", str(path), "-q"])
    assert result.exit_code == 2 and "image_size" in result.stderr and "Traceback" not in result.output


def test_5_postscript_in_a_jpeg_never_reaches_an_external_decoder(tmp_path):
    eps = tmp_path / "scan.jpeg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(InputError, match="not an image in a format btxrd-cam reads"):
        decode_image(eps)


def test_5_a_colour_image_beyond_the_pixel_budget_is_refused_from_its_header(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (9000, 9000)).save(path)  # 81 M RGB pixels decode to 243 MB: over the 240 MB budget
    with pytest.raises(InputError, match="decode to 243 MB"):
        decode_image(path)


# ---- 6. no traceback: report shapes, crafted inputs --------------------------------------------------------------

WRONG_SHAPES = [
    ("summary", "iou", "mean", "a string"),
    ("summary", "iou", "mean", 10**400),
    ("records", None, None, {"not": "a list"}),
    ("records", 0, "confidence", "high"),
    ("summary", None, None, []),
    ("breakdowns", None, None, "by class"),
    ("threshold", None, None, 0.5),
    ("summary", "iou_mean_ci95", None, [0.1]),
    ("summary", "iou_mean_ci95", None, [0.1, "x"]),
    ("failed", None, None, [1, 2]),
    ("checkpoint", None, None, "best.pt"),
    ("checkpoint", "class_names", None, "Normal"),
    ("evaluated", None, None, "many"),
    ("summary", "pointing_game_hit_rate", None, float("inf")),
    ("records", 0, "pointing_game", {"x": 1}),
]


@pytest.mark.parametrize(("top", "middle", "last", "value"), WRONG_SHAPES)
def test_6_a_report_of_the_wrong_shape_is_a_note_naming_the_field(tiny_project, top, middle, last, value):
    out = tiny_project / "out"
    run_annotate(project_settings(AnnotateSettings, tiny_project, images=False))
    report = json.loads((out / "annotation_report.json").read_text())
    target = report
    for key in (top, middle):
        if key is None:
            break
        target = target[key]
    if middle is None:
        report[top] = value
    elif last is None:
        report[top][middle] = value
    else:
        report[top][middle][last] = value
    text = json.dumps(report).replace("Infinity", "1e999")
    (out / "annotation_report.json").write_text(text)
    outcome = run_report(build_settings(ReportSettings, results_dir=out, quiet=True))
    assert "annotation" not in outcome.sections
    (note,) = [n for n in outcome.notes if n.startswith("annotation_report.json")]
    assert "field" in note and top in note


def test_6_a_huge_strip_of_an_image_is_scored_without_an_opencv_error(tiny_project):
    tested = [item for item in _items_all(tiny_project) if item.annotation is not None]
    annotations = [tested[0].annotation]
    stem = annotations[0].stem
    image = next((tiny_project / "data_raw/images").glob(f"{stem}.*"))
    strip = np.full((20000, 10), 100, np.uint8)
    image.unlink()
    cv2.imwrite(str(image.with_suffix(".png")), strip)
    data = json.loads(annotations[0].read_text())
    data.update(imageHeight=20000, imageWidth=10)
    data["shapes"] = [{"label": "x", "shape_type": "polygon", "points": [[1, 100], [9, 100], [9, 900], [1, 900]]}]
    annotations[0].write_text(json.dumps(data))
    report = run_annotate(project_settings(AnnotateSettings, tiny_project)).report
    record = next(r for r in report["records"] + report["failed"] if r["image_id"] == stem)
    assert record["error"] is None and record["mask_area"] > 0


# ---- 7. no element value quoted, no address, no formula, no silent page -----------------------------------------


def _with_value(path: Path, placeholder: bytes, value: bytes) -> Path:
    """The file with an element's value replaced by one of the same length that no writer would accept."""
    path.write_bytes(path.read_bytes().replace(placeholder, value, 1))
    return path


def test_7_dicom_errors_name_the_element_never_its_value(tmp_path):
    frames = write_dicom(tmp_path / "f.dcm", np.zeros((8, 8), np.uint16), NumberOfFrames="100000000000")
    _with_value(frames, b"100000000000", b"PID-998877  ")
    slope = write_dicom(tmp_path / "s.dcm", np.zeros((8, 8), np.uint16), RescaleSlope="1.0000000000")
    _with_value(slope, b"1.0000000000", b"PID-998877  ")
    with pytest.raises(InputError) as caught:
        read_dicom(frames, frames.read_bytes())
    assert "NumberOfFrames" in str(caught.value) and "998877" not in str(caught.value)
    try:  # however pydicom takes a rescale slope that is no number, its value is never passed on
        said = json.dumps(read_dicom(slope, slope.read_bytes())[2:])
    except InputError as exc:
        said = str(exc)
    assert "998877" not in said
    odd = write_dicom(tmp_path / "g.dcm", np.zeros((8, 8), np.uint16), Modality="PID-998877")
    _, _, info, _ = read_dicom(odd, odd.read_bytes())
    assert info["modality"] is None and "998877" not in json.dumps(info)


def test_7_messages_carry_no_memory_address():
    assert one_line("<object object at 0x7f3a9c2b1e40> failed") == "<object object at 0x…> failed"


def test_7_csv_cells_that_would_run_as_formulas_are_prefixed():
    records = [{"image_id": '=HYPERLINK("http://x","y")', "path": "+1", "label": "@SUM(A1)", "pred": "-2",
                "confidence": -0.5, "probs": None, "error": None}]  # fmt: skip
    row = next(csv.DictReader(io.StringIO(format_records(records, "csv", []))))
    assert row["image_id"] == '\'=HYPERLINK("http://x","y")' and row["path"] == "'+1"
    assert row["label"] == "'@SUM(A1)" and row["pred"] == "'-2"
    assert row["confidence"] == "-0.5"  # numbers stay numbers


def test_7_a_multi_page_tiff_says_which_page_it_used(tmp_path):
    pages = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (10, 200)]
    pages[0].save(tmp_path / "two.tif", save_all=True, append_images=pages[1:])
    decoded = decode_image(tmp_path / "two.tif", keep_gray=True)
    assert decoded.pixels.max() == 10 and any("multi-page TIFF (2 pages)" in w for w in decoded.warnings)


def test_7_every_report_holds_only_finite_numbers(tiny_project):
    outcome = run_annotate(project_settings(AnnotateSettings, tiny_project))
    assert "NaN" not in outcome.text and "Infinity" not in outcome.text
    json.loads(outcome.text, parse_constant=lambda name: pytest.fail(f"{name} in a report"))
