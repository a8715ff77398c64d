"""Property-based fuzzing of what reads users' files: the LabelMe reader and rasteriser, and the image loader.

The property: a mask of the image's size (or pixels of the image's size) or an InputError with a reason — never
another exception, never more than a bounded time (hypothesis's deadline) and memory (tracemalloc's peak).
`make fuzz` runs the long profile (HYPOTHESIS_PROFILE=fuzz); the default profile keeps CI fast.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from btxrd_cam.data import load_image
from btxrd_cam.errors import InputError
from btxrd_cam.labelme import rasterize_annotation
from tests.conftest import LABELME_SAMPLES

MEMORY_LIMIT = 256 * 2**20


def _png_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _bases() -> list[dict]:
    bases = [json.loads((LABELME_SAMPLES / name).read_text()) for name in ("primitives.json", "apc2016_obj3.json")]
    for base in bases:
        base["imageData"] = None  # the embedded image is irrelevant to the mask and slows every example down
    region = np.zeros((12, 20), np.uint8)
    region[3:9, 4:16] = 255
    bases.append(
        {
            "version": "5.2.1",
            "imageHeight": 60,
            "imageWidth": 80,
            "shapes": [
                {"shape_type": "polygon", "points": [[10, 10], [40, 12], [30, 40]], "label": "t"},
                {"shape_type": "rectangle", "points": [[50, 5], [70, 25]], "label": "t"},
                {"shape_type": "circle", "points": [[20, 45], [25, 50]], "label": "t"},
                {"shape_type": "oriented_rectangle", "points": [[5, 5], [9, 5], [9, 9], [5, 9]], "label": "t"},
                {"shape_type": "mask", "points": [[40, 30], [59, 41]], "mask": _png_b64(region), "label": "t"},
            ],
        }
    )
    return bases


BASES = _bases()

WEIRD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -1e308, 2**63, -(2**31) - 1, 0, -1, 0.5]),
    st.just(10**400),  # hundreds of digits: no float can hold it
    st.integers(-(10**7), 10**7),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.just([]),
    st.just({}),
    st.just([[1, 2]] * 150_001),  # more points than any file may have
    st.just([[1.0, 2.0], [50_000.0, 50_000.0]]),  # a box 50,000 px wide
    st.lists(st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=3), max_size=6),
    st.sampled_from(["polygon", "rectangle", "circle", "mask", "point", "blob", "linestrip", "oriented_rectangle"]),
    st.just("not base64 !!"),
    st.just(_png_b64(np.full((4000, 4000), 255, np.uint8))),  # a PNG far larger than its image
    st.just(base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30).decode()),  # a broken PNG
)


def _locations(node, found=None):
    """Every (container, key) of the JSON tree, containers included, so any field can be replaced."""
    found = [] if found is None else found
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((node, key))
            _locations(value, found)
    elif isinstance(node, list) and len(node) < 64:
        for index, value in enumerate(node):
            found.append((node, index))
            _locations(value, found)
    return found


def _weird(draw):
    return copy.deepcopy(draw(WEIRD_VALUES))  # st.just() hands out one object: shared, it could form a cycle


@st.composite
def labelme_bytes(draw) -> bytes:
    data = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(0, 4))):
        places = _locations(data)
        action = draw(st.sampled_from(["replace", "delete", "add", "shape"]))
        if action == "shape":
            data.setdefault("shapes", [])
            if isinstance(data["shapes"], list):
                shape = {"shape_type": _weird(draw), "points": _weird(draw), "mask": _weird(draw)}
                data["shapes"].append(shape)
            continue
        if not places:
            continue
        container, key = places[draw(st.integers(0, len(places) - 1))]
        if action == "replace":
            container[key] = _weird(draw)
        elif action == "delete" and isinstance(container, dict):
            del container[key]
        elif action == "add" and isinstance(container, dict):
            container[draw(st.text(max_size=6))] = _weird(draw)
    text = json.dumps(data)
    form = draw(st.sampled_from(["plain", "plain", "truncated", "bom", "utf16", "deep", "garbage", "latin1"]))
    if form == "truncated":
        return text.encode()[: draw(st.integers(0, len(text)))]
    if form == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if form == "utf16":
        return text.encode("utf-16")
    if form == "deep":
        depth = draw(st.integers(1_000, 200_000))
        return ("[" * depth + "]" * depth).encode() if draw(st.booleans()) else ('{"shapes": ' + "[" * depth).encode()
    if form == "garbage":
        return draw(st.binary(max_size=200))
    if form == "latin1":
        return text.replace("}", ', "x": "\u00e9\u00e8"}', 1).encode("latin-1", errors="replace")
    return text.encode()


def _bounded(fn):
    tracemalloc.start()
    try:
        return fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < MEMORY_LIMIT, f"peak {peak / 2**20:.0f} MB"


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(content=labelme_bytes(), height=st.integers(1, 400), width=st.integers(1, 400), scaled=st.booleans())
def test_labelme_files_give_a_mask_or_a_reason(tmp_path, content, height, width, scaled):
    path = tmp_path / "IMG000001.json"
    path.write_bytes(content)
    draw_size = (max(1, height // 2), max(1, width // 3)) if scaled else None
    try:
        annotation = _bounded(lambda: rasterize_annotation(path, height, width, draw_size=draw_size))
    except InputError as exc:
        assert str(exc).startswith("IMG000001.json: ") and exc.reason and "\n" not in exc.reason
        event(f"refused: {exc.reason.split(' (')[0][:40]}")
        return
    event("drawn" + (" with warnings" if annotation.warnings else ""))
    assert annotation.mask.shape == (draw_size or (height, width)) and annotation.mask.dtype == bool
    assert all(isinstance(w, str) for w in annotation.warnings)


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if fmt == "JPEG" and image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _dicom_bytes(array: np.ndarray, photometric: str, window: bool) -> bytes:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"  # fixed: the same draw gives the same bytes
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "DX", 1, photometric
    ds.Rows, ds.Columns = array.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = array.astype(np.uint16).tobytes()
    if window:
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@st.composite
def image_bytes(draw) -> bytes:
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["L", "RGB", "RGBA", "I;16"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "I;16":
        array = rng.integers(0, 65535, (height, width), dtype=np.uint16)
    else:
        array = rng.integers(0, 255, (height, width, {"L": 1, "RGB": 3, "RGBA": 4}[kind]), dtype=np.uint8)
        array = array[:, :, 0] if kind == "L" else array
    fmt = draw(st.sampled_from(["PNG", "JPEG", "BMP", "TIFF", "DICOM"]))
    if kind == "I;16" and fmt in ("JPEG", "BMP"):
        fmt = "PNG"
    if fmt == "DICOM":
        grey = array if array.ndim == 2 else array[:, :, 0]
        photometric = draw(st.sampled_from(["MONOCHROME1", "MONOCHROME2"]))
        data = bytearray(_dicom_bytes(grey.astype(np.uint16) % 4096, photometric, draw(st.booleans())))
    else:
        data = bytearray(_encoded(array, fmt))
    mutation = draw(st.sampled_from(["none", "truncate", "flip", "header", "prefix", "empty"]))
    if mutation == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif mutation == "flip":
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
    elif mutation == "header":  # dimensions claiming far more pixels than the file holds
        at = draw(st.integers(0, min(len(data) - 4, 64)))
        data[at : at + 4] = draw(st.sampled_from([b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00", b"\xff\xff\xff\xff"]))
    elif mutation == "prefix":
        data = bytearray(draw(st.binary(max_size=16))) + data
    elif mutation == "empty":
        data = bytearray()
    return bytes(data)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    content=image_bytes(), suffix=st.sampled_from([".png", ".jpeg", ".bmp", ".tif", ".dcm", ""]), draft=st.booleans()
)
def test_image_files_give_pixels_or_a_reason(tmp_path, content, suffix, draft):
    path = tmp_path / f"IMG000001{suffix}"
    path.write_bytes(content)
    try:
        pixels, size = _bounded(lambda: load_image(path, keep_gray=True, draft_size=8 if draft else None))
    except InputError as exc:
        assert exc.reason and "\n" not in exc.reason
        event(f"refused: {exc.reason[:30]}")
        return
    event("decoded")
    assert pixels.dtype == np.uint8 and pixels.ndim in (2, 3) and min(size) >= 1
    if not draft:
        assert pixels.shape[:2] == size


def test_a_chunk_that_claims_gigabytes_allocates_nothing(tmp_path):
    # found by the fuzzer: a 1x1 PNG whose IDAT length field says 285 MB made Pillow allocate it from the file
    content = (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00\x00\x00\x00:~\x9bU"
        b"\x11\x00\x00\nIDATx\x9cc\x88\x03\x00\x00`\x00_9\xf4]\x12\x00\x00\x00\x00IEND\xaeB`\x82"
    )
    path = tmp_path / "x.png"
    path.write_bytes(content)
    pixels, size = _bounded(lambda: load_image(path))  # the pixels it does hold decode, within bounded memory
    assert size == (1, 1) and pixels.shape == (1, 1, 3)


def test_a_truncated_jpeg_is_refused_on_every_decode_path(tmp_path):
    rng = np.random.default_rng(0)
    array = (rng.random((600, 800)) * 255).astype(np.uint8)
    data = _encoded(array, "JPEG")
    path = tmp_path / "cut.jpeg"
    path.write_bytes(data[: len(data) // 2])
    for draft in (None, 64):
        with pytest.raises(InputError, match="truncated"):
            load_image(path, keep_gray=True, draft_size=draft)


# ---- reports of any shape, cache entries of any content -------------------------------------------------------

JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _report_paths(report: dict, prefix=()) -> list[tuple]:
    """Every path to a value in a nested report (dicts and lists), for replacing one."""
    paths = [prefix] if prefix else []
    children = report.items() if isinstance(report, dict) else enumerate(report) if isinstance(report, list) else []
    for key, value in children:
        paths += _report_paths(value, (*prefix, key))
    return paths


@pytest.fixture(scope="module")
def annotation_report(tmp_path_factory, tiny_project_template):
    """One real annotate-iou report of the tiny project, the base the fuzzer mutates."""
    import shutil

    from btxrd_cam.commands.annotate import run_annotate
    from btxrd_cam.settings import AnnotateSettings
    from tests.conftest import project_settings

    project = tmp_path_factory.mktemp("fuzz-report") / "project"
    shutil.copytree(tiny_project_template, project)
    return json.loads(run_annotate(project_settings(AnnotateSettings, project, images=False)).text)


# a quarter of the profile's examples: each renders a page or reads a model (make fuzz runs 1,250 of each)
SLOW_EXAMPLES = max(50, settings().max_examples // 4)


@settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    deadline=None,
    max_examples=SLOW_EXAMPLES,
)
@given(data=st.data())
def test_a_report_of_any_shape_renders_or_becomes_a_note(tmp_path, annotation_report, data):
    from btxrd_cam.commands.report import run_report
    from btxrd_cam.settings import ReportSettings, build_settings

    report = copy.deepcopy(annotation_report)
    paths = _report_paths(report)
    for path in data.draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)):
        target = report
        try:
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = data.draw(JSON_VALUES)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed this path
    folder = tmp_path / data.draw(st.sampled_from(["a", "b", "c"]))
    folder.mkdir(exist_ok=True)
    (folder / "annotation_report.json").write_text(json.dumps(report))
    outcome = run_report(build_settings(ReportSettings, results_dir=folder, quiet=True))
    assert outcome.path.is_file()
    assert ("annotation" in outcome.sections) != any(n.startswith("annotation_report.json") for n in outcome.notes)
    event("rendered" if outcome.sections else "a note")


@pytest.fixture(scope="module")
def cached_entry(tmp_path_factory, tiny_project_template):
    """A real cache entry of one image of the tiny project: (engine, item, its file's bytes, cache folder)."""
    from btxrd_cam.cache import ExplanationCache
    from btxrd_cam.checkpoint import load_checkpoint
    from btxrd_cam.data import manifest_path, split_items
    from btxrd_cam.engine import Engine

    folder = tmp_path_factory.mktemp("fuzz-cache")
    project = tiny_project_template
    engine = Engine(load_checkpoint(project / "checkpoints/best_stratified.pt"))
    item = split_items(project / "data_raw", manifest_path(project / "data/splits", "stratified", "test"))[0]
    context = {"checkpoint_sha256": engine.checkpoint.sha256, "class_names": engine.class_names, "image_size": 64}
    cache = ExplanationCache(folder / ".cache", context, shapes=engine.map_shapes())
    (truth,) = list(engine.run([item], cache=cache, thumbnail=48))
    (entry,) = list((folder / ".cache").rglob("*.npz"))
    return engine, item, entry.read_bytes(), entry, cache.context, truth


@settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    deadline=None,
    max_examples=SLOW_EXAMPLES,
)
@given(data=st.data())
def test_a_cache_entry_of_any_content_is_served_right_or_recomputed(cached_entry, data):
    """Flip, cut or splice the bytes of a real entry: the engine's answer is the true one (served from a valid
    entry, or recomputed), never an exception, never a wrong one."""
    from btxrd_cam.cache import ExplanationCache

    engine, item, original, path, context, truth = cached_entry
    raw = bytearray(original)
    kind = data.draw(st.sampled_from(["flip", "cut", "splice", "garbage"]))
    if kind == "flip":
        for at in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            raw[at] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "splice":
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    else:
        raw = bytearray(data.draw(st.binary(max_size=512)))
    path.write_bytes(bytes(raw))
    try:
        cache = ExplanationCache(path.parent.parent, context, shapes=engine.map_shapes())
        (result,) = list(engine.run([item], cache=cache, thumbnail=48))
        assert result.ok and result.pred == truth.pred
        np.testing.assert_allclose(result.probs, truth.probs, atol=1e-6)
        np.testing.assert_allclose(result.cam, truth.cam, atol=1e-6)
        event("served" if cache.hits else "recomputed")
    finally:
        path.write_bytes(original)
