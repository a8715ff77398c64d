"""The explanation cache: re-runs skip the model, and nothing stale, broken or foreign is ever trusted."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from btxrd_cam.cache import ExplanationCache
from btxrd_cam.checkpoint import load_checkpoint
from btxrd_cam.commands.annotate import run_annotate
from btxrd_cam.commands.compare import run_compare
from btxrd_cam.commands.gallery import run_gallery
from btxrd_cam.data import manifest_path, split_items
from btxrd_cam.engine import Engine
from btxrd_cam.settings import AnnotateSettings, CompareSettings, GallerySettings
from tests.conftest import project_settings


def _items(project):
    return split_items(project / "data_raw", manifest_path(project / "data/splits", "stratified", "test"))


def _cache(folder, warnings=None, **context):
    warn = warnings.append if warnings is not None else None
    return ExplanationCache(folder / ".cache", {"checkpoint_sha256": "x", **context}, warn=warn)


def _engine(project):
    return Engine(load_checkpoint(project / "checkpoints/best_stratified.pt"), batch_size=4)


def test_a_second_pass_is_read_not_computed(tiny_project, tmp_path):
    engine = _engine(tiny_project)
    items = _items(tiny_project)
    cache = _cache(tmp_path)
    first = list(engine.run(items, cache=cache, thumbnail=96))
    assert cache.hits == 0 and len(list((tmp_path / ".cache").rglob("*.npz"))) == len(items)
    with torch.no_grad():  # the model in memory now computes something else entirely ...
        for parameter in engine.model.parameters():
            parameter.mul_(-1.5)
    again = list(engine.run(items, cache=_cache(tmp_path), thumbnail=96))
    for a, b in zip(first, again, strict=True):  # ... but the cache answers, so nothing was run or decoded
        assert a.pred == b.pred and a.target == b.target and a.orig_size == b.orig_size
        np.testing.assert_array_equal(a.probs, b.probs)
        np.testing.assert_array_equal(a.cam, b.cam)
        np.testing.assert_array_equal(a.thumbnail, b.thumbnail)
        np.testing.assert_array_equal(a.model_pixels, b.model_pixels)
    fresh = list(engine.run(items, cache=None))
    assert any(not np.array_equal(a.probs, f.probs) for a, f in zip(first, fresh, strict=True))


def test_anything_in_the_key_changing_recomputes(tiny_project, tmp_path):
    engine = _engine(tiny_project)
    items = _items(tiny_project)[:4]
    list(engine.run(items, cache=_cache(tmp_path)))
    cache = _cache(tmp_path)
    list(engine.run(items, cache=cache))
    assert (cache.hits, cache.misses) == (4, 0)
    for context in ({"checkpoint_sha256": "y"}, {"fast_decode": True}):
        other = _cache(tmp_path, **context)
        list(engine.run(items, cache=other))
        assert other.hits == 0, context
    target = _cache(tmp_path)
    list(engine.run(items, target="Malignant", cache=target))
    assert target.hits == 0
    more = _cache(tmp_path)
    list(engine.run(items, cache=more, thumbnail=64))  # a thumbnail nobody kept yet
    assert more.hits == 0
    os.utime(items[0].path, ns=(1, 1))  # touched, not changed: its content decides
    touched = _cache(tmp_path)
    list(engine.run(items, cache=touched))
    assert (touched.hits, touched.misses) == (4, 0)
    # new content of the same size, the modification time put back: still recomputed (the key holds the bytes' hash)
    stat = items[1].path.stat()
    data = bytearray(items[1].path.read_bytes())
    data[-3] ^= 0xFF  # inside the JPEG's entropy-coded data: another image, the same size
    items[1].path.write_bytes(bytes(data))
    os.utime(items[1].path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = _cache(tmp_path)
    list(engine.run(items, cache=changed))
    assert (changed.hits, changed.misses) == (3, 1)


def test_corrupt_truncated_and_foreign_entries_are_recomputed_never_trusted(tiny_project, tmp_path):
    engine = _engine(tiny_project)
    items = _items(tiny_project)[:3]
    expected = [r.probs for r in engine.run(items)]
    list(engine.run(items, cache=_cache(tmp_path)))
    a, b, c = sorted((tmp_path / ".cache").rglob("*.npz"))
    original_a = a.read_bytes()
    a.write_bytes(b"garbage")
    b.write_bytes(b.read_bytes()[: b.stat().st_size // 2])  # an interrupted copy, say
    c.write_bytes(original_a)  # another image's entry under this one's name: foreign
    warnings = []
    cache = _cache(tmp_path, warnings)
    got = list(engine.run(items, cache=cache))
    for result, probs in zip(got, expected, strict=True):
        np.testing.assert_array_equal(result.probs, probs)
    assert cache.hits == 0 and cache.rejected >= 2 and len(warnings) == 1 and "recomputing" in warnings[0]
    assert not [p for p in (tmp_path / ".cache").rglob("*") if p.name.startswith(".")]  # no temp file left


def test_outputs_are_byte_identical_with_and_without_the_cache(tiny_project):
    settings = project_settings(AnnotateSettings, tiny_project)
    first = run_annotate(settings).text
    overlays = {p.name: p.read_bytes() for p in (tiny_project / "out/images/annotate-iou").iterdir()}
    assert (tiny_project / "out/.cache").is_dir()
    second = run_annotate(settings).text  # from the cache
    folder = tiny_project / "out/images/annotate-iou"
    assert second == first and {p.name: p.read_bytes() for p in folder.iterdir()} == overlays
    threshold = run_annotate(project_settings(AnnotateSettings, tiny_project, threshold="0.3"))
    uncached = run_annotate(project_settings(AnnotateSettings, tiny_project, threshold="0.3", no_cache=True))
    assert threshold.text == uncached.text
    compare = project_settings(CompareSettings, tiny_project, methods="gradcam,layercam", layers="bn2,blocks.2")
    assert run_compare(compare).text == run_compare(compare).text  # written, then read
    gallery = project_settings(GallerySettings, tiny_project, k="1")
    assert run_gallery(gallery).text == run_gallery(project_settings(GallerySettings, tiny_project, k="1",
                                                                     no_cache=True)).text  # fmt: skip


def test_gallery_after_annotate_iou_reuses_the_tumour_images_maps(tiny_project):
    run_annotate(project_settings(AnnotateSettings, tiny_project, images=False))
    engine = _engine(tiny_project)
    settings = project_settings(GallerySettings, tiny_project)
    from btxrd_cam.pipeline import open_cache

    cache = open_cache(settings, engine)
    items = _items(tiny_project)
    list(engine.run(items, cache=cache))
    annotated = sum(item.annotation is not None for item in items)
    assert cache.hits == annotated and cache.misses == len(items) - annotated


@pytest.mark.parametrize("order", ["compare then annotate", "annotate then compare"])
def test_entries_grow_with_the_configurations_asked_for(tiny_project, order):
    annotate = project_settings(AnnotateSettings, tiny_project, images=False)
    compare = project_settings(CompareSettings, tiny_project, methods="gradcam", layers="bn2,blocks.2", images=False)
    runs = [run_annotate, run_compare] if order.startswith("annotate") else [run_compare, run_annotate]
    settings = [annotate, compare] if order.startswith("annotate") else [compare, annotate]
    for run, s in zip(runs, settings, strict=True):
        run(s)
    engine = Engine(load_checkpoint(tiny_project / "checkpoints/best_stratified.pt"))
    from btxrd_cam.engine import CamConfig
    from btxrd_cam.pipeline import open_cache

    both = Engine(engine.checkpoint, configs=[CamConfig("gradcam", "bn2"), CamConfig("gradcam", "blocks.2")])
    cache = open_cache(compare, both)
    annotated = [item for item in _items(tiny_project) if item.annotation is not None]
    list(both.run(annotated, cache=cache))
    assert cache.hits == len(annotated)  # every entry holds both maps, whichever command ran last
