"""The shared road every command walks: settings → checkpoint → engine, split → items, engine pass → results.

Not for: what a command keeps or draws from the results (infer.py, explain.py, gallery.py, annotate.py).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from btxrd_cam.cache import ExplanationCache
from btxrd_cam.checkpoint import load_checkpoint
from btxrd_cam.console import progress, warn
from btxrd_cam.data import ImageItem, fit_long_side, load_image, manifest_path, split_items
from btxrd_cam.engine import ATTRIBUTION, INPUT_LAYER, LIBRARY_PATH, CamConfig, Engine, Explanation
from btxrd_cam.errors import UsageError, per_image, raise_if_interrupted
from btxrd_cam.labelme import DEFAULT_REGION, rasterize_annotation
from btxrd_cam.layers import auto_layers, get_layer
from btxrd_cam.outputs import CACHE_FOLDER, OutputFolder
from btxrd_cam.settings import ModelSettings, SplitSettings

T = TypeVar("T")
# scoring threads beside the engine: when the cache spares the model, scoring is all there is left to do
SCORERS = 2


def open_checkpoint(settings: ModelSettings):
    """The checkpoint the settings name, loaded safely — or, when a command that keeps a cache has kept this
    checkpoint's facts (deferred.py), deferred: known by its facts, read only if an image needs the model. What it
    assumed or left aside is said on stderr."""
    from btxrd_cam.deferred import DeferredCheckpoint, facts_path, file_sha256, read_facts

    def load():
        return load_checkpoint(settings.ckpt, settings.arch, settings.class_names, settings.target_layer)

    keeps = not getattr(settings, "no_cache", True) and hasattr(settings, "out")
    sha256 = file_sha256(settings.ckpt) if keeps else None
    path = facts_path(settings, sha256) if keeps else None
    facts = read_facts(path, sha256)
    checkpoint = DeferredCheckpoint(facts, settings.ckpt, load) if facts else load()
    checkpoint.facts_file = path
    for note in checkpoint.notes:
        warn(f"{checkpoint.name}: {note}", settings.quiet)
    return checkpoint


def open_engine(
    settings: ModelSettings, checkpoint=None, configs: Sequence[CamConfig] | None = None, layer_option=None
) -> Engine:
    """The engine the settings describe (opening the checkpoint unless given), for `configs` when given — deferred
    (its model built at the first image the cache does not hold) when the checkpoint is and its facts know every
    layer asked for."""
    from btxrd_cam.deferred import DeferredCheckpoint, DeferredEngine, can_defer, write_facts

    checkpoint = checkpoint or open_checkpoint(settings)
    if not configs:
        layer = INPUT_LAYER if settings.method in ATTRIBUTION else checkpoint.target_layer_name
        configs = [CamConfig(settings.method, layer)]
    option = layer_option or ("--target-layer" if settings.target_layer else "the layer found automatically")
    if isinstance(checkpoint, DeferredCheckpoint) and can_defer(checkpoint, configs):
        engine = DeferredEngine(
            checkpoint,
            lambda: build_engine(settings, checkpoint.loaded(), configs, option),
            settings.torch_device,
            configs,
            engine_options(settings),
        )
    else:
        real = checkpoint.loaded() if isinstance(checkpoint, DeferredCheckpoint) else checkpoint
        engine = build_engine(settings, real, configs, option)
        write_facts(getattr(checkpoint, "facts_file", None), real, engine)
    for config in engine.attribution:
        kind = "forward passes" if config.method == "occlusion" else "forward and backward passes"
        warn(f"{config.name} costs {engine.passes_per_image(config)} {kind} per image", settings.quiet)
    if settings.target not in ("pred", "true"):
        engine.class_index(settings.target)  # an unknown class name fails before any image is read
    return engine


def engine_options(settings: ModelSettings) -> dict:
    """What the settings say about how the engine explains (beyond the checkpoint, device and configurations)."""
    return {
        "batch_size": settings.batch_size, "workers": settings.workers, "amp": settings.amp,
        "aug_smooth": settings.aug_smooth, "eigen_smooth": settings.eigen_smooth, "fast_decode": settings.fast_decode,
        "dicom_window": settings.dicom_window, "ig_steps": settings.ig_steps, "sg_samples": settings.sg_samples,
        "occlusion_window": settings.occlusion_window,
    }  # fmt: skip


def build_engine(settings: ModelSettings, checkpoint, configs, layer_option: str = "--target-layer") -> Engine:
    """An engine of `checkpoint` (a loaded one) with every option the settings give: the one constructor, so that
    engines of one run (sanity's randomised copies included) explain alike."""
    return Engine(
        checkpoint,
        device=settings.torch_device,
        method=settings.method,
        configs=configs,
        layer_option=layer_option,
        **engine_options(settings),
    )


def load_split(settings: SplitSettings, class_names: list[str], subset: str | None = None) -> list[ImageItem]:
    """The items of `--split/--subset`; UsageError if the manifest is missing or has unknown labels."""
    manifest = manifest_path(settings.splits_dir, settings.split, subset or settings.subset)
    items = split_items(settings.data_root, manifest)
    unknown = sorted({it.label for it in items if it.label is not None and it.label not in class_names})
    if unknown:
        raise UsageError(
            f"{manifest}: labels {', '.join(unknown)} are not classes of this checkpoint ({', '.join(class_names)})"
        )
    return items


def annotated(items: list[ImageItem]) -> list[ImageItem]:
    """The items that have a LabelMe annotation."""
    return [it for it in items if it.annotation is not None]


def with_positions(items: list[ImageItem]) -> list[tuple[int, ImageItem]]:
    """(position, item): the position of each item in the list the engine explains — the order of the manifest,
    by which shards are dealt and records are put back together."""
    return list(enumerate(items))


def load_tuning_items(settings: SplitSettings, class_names: list[str]) -> tuple[list[ImageItem], Path]:
    """The annotated images of the split's val subset, where `--threshold tune` tunes — never the images it
    scores; UsageError when there are none, or when val itself is to be scored. Returns (items, manifest)."""
    if settings.subset == "val":
        raise UsageError(
            "--threshold: tune picks thresholds on the val subset, so it cannot score val itself; "
            "use --subset test or a fixed threshold"
        )
    manifest = manifest_path(settings.splits_dir, settings.split, "val")
    if not manifest.is_file():
        raise UsageError(f"--threshold: tune needs a val manifest, and {manifest} does not exist")
    items = annotated(load_split(settings, class_names, subset="val"))
    if not items:
        raise UsageError(f"--threshold: tune needs annotated images in {manifest}, and it has none")
    return items, manifest


def resolve_configurations(methods: list[str], layers, checkpoint) -> tuple[list[CamConfig], list[str]]:
    """Every method × every layer (`layers`: a list of names, or "auto": the target layer and the three stages
    before it), canonical names, in that order; repeated ones dropped with a note."""
    from btxrd_cam.deferred import DeferredCheckpoint, write_facts

    size = checkpoint.image_size
    deferred = isinstance(checkpoint, DeferredCheckpoint)
    known = checkpoint.known_layers() if deferred else {}
    if layers == "auto":
        names = checkpoint.facts.get("auto_layers") if deferred else None
        if not names:
            names = auto_layers(checkpoint.model, checkpoint.target_layer_name, size)
            real = checkpoint.loaded() if deferred else checkpoint
            write_facts(getattr(checkpoint, "facts_file", None), real, auto=names)
    else:  # a name the facts know is already canonical; any other is found in the model
        names = [name if name in known else get_layer(checkpoint.model, name, "--layers")[0] for name in layers]
    configs, dropped = [], []
    for method in methods:
        for layer in [INPUT_LAYER] if method in ATTRIBUTION else names:  # attributions explain the input only
            config = CamConfig(method, layer)
            if config in configs:
                dropped.append(config.name)
            else:
                configs.append(config)
    notes = (
        [f"dropped {len(dropped)} repeated configuration(s): {', '.join(dict.fromkeys(dropped))}"] if dropped else []
    )
    slow = sorted({c.method for c in configs if c.method in LIBRARY_PATH})
    if slow:
        notes.append(f"{', '.join(slow)} run through pytorch-grad-cam's own passes per layer (slow: many forwards)")
    return configs, notes


def resolve_reference(wanted: str | None, default: str, checkpoint, names: list[str]) -> tuple[str, list[str]]:
    """The configuration the others are compared with: `wanted` (--reference, any spelling of its layer), else
    `default` (what annotate-iou reports: the method at the checkpoint's target layer), else the first
    configuration (with a note)."""
    if wanted:
        chosen = wanted.strip()
        # the same configuration may be spelled with another layer name (stages[-1])
        if "@" in chosen and chosen not in names:
            method, layer = chosen.split("@", 1)
            with contextlib.suppress(UsageError):  # unknown layer: reported below, with the valid names
                chosen = f"{method.strip().lower()}@{get_layer(checkpoint.model, layer.strip(), '--reference')[0]}"
        if chosen not in names:
            raise UsageError(f"--reference: got {wanted}; must be one of the configurations: {', '.join(names)}")
        return chosen, []
    if default in names:
        return default, []
    return names[0], [f"reference {default} is not among the configurations; comparing with {names[0]}"]


def checkpoint_info(engine: Engine) -> dict:
    ckpt = engine.checkpoint
    return {
        "name": ckpt.name,
        "sha256": ckpt.sha256,
        "arch": ckpt.arch,
        "class_names": ckpt.class_names,
        "image_size": ckpt.image_size,
        "target_layer": ckpt.target_layer_name,
    }


def explain_items(
    engine: Engine,
    items: list[ImageItem],
    target: str = "pred",
    cams: bool = True,
    quiet: bool = False,
    description: str = "explaining",
    each: Callable[[Explanation], object] | None = None,
    keep_pixels: bool = False,
    keep_tensors: bool = False,
    thumbnail: int | None = None,
    cache: ExplanationCache | None = None,
) -> list:
    """One engine pass over the items with a progress bar; returns `each(result)` per image (or the results)."""
    kept = []
    with progress(len(items), description, quiet) as advance:
        run = engine.run(
            items,
            target=target,
            cams=cams,
            keep_pixels=keep_pixels,
            keep_tensors=keep_tensors,
            thumbnail=thumbnail,
            cache=cache,
        )
        for result in run:
            raise_if_interrupted()
            kept.append(each(result) if each else result)
            advance()
    return kept


def explain_and_score(
    engine: Engine,
    items: list[ImageItem],
    score: Callable[[Explanation], T],
    failed: Callable[[Explanation, str], T],
    target: str = "pred",
    quiet: bool = False,
    description: str = "scoring",
    thumbnail: int | None = None,
    cache: ExplanationCache | None = None,
) -> list[T]:
    """One engine pass over the items; `score(result)` runs in a thread beside the engine, so the next batch does
    not wait for megapixel scoring, inside the per-image boundary: an image whose annotation (or anything else)
    cannot be scored becomes `failed(result, reason)`. Returns the scores in item order."""

    def guarded(result: Explanation) -> T:
        raise_if_interrupted()
        where = result.item.annotation or result.item.path
        return per_image(lambda: score(result), lambda reason: failed(result, reason), where)

    with ThreadPoolExecutor(max_workers=SCORERS) as scorer:
        futures = []
        try:
            futures = explain_items(
                engine,
                items,
                target=target,
                quiet=quiet,
                description=description,
                each=lambda result: scorer.submit(guarded, result),
                thumbnail=thumbnail,
                cache=cache,
            )
            return [future.result() for future in futures]
        except BaseException:  # an interrupt: drop what has not started, so the exit is prompt
            scorer.shutdown(wait=False, cancel_futures=True)
            raise


def reread_most_confident(
    scored: list, top: int, quiet: bool, what: str, long_side: int | None = None, region: str = DEFAULT_REGION
) -> list[tuple[object, object, object]]:
    """The `top` most confident correctly classified of the scored images (each with `item`, `record` and its
    maps), decoded again for drawing only — the one pass keeps no full-size pixels, and which images are shown is
    known only after it — with the annotation's outline at the drawn size (the long side scaled to `long_side`
    when given). Returns [(scored, pixels, mask)]; an image that cannot be re-read is left out of `what`, with a
    warning."""
    correct = [s for s in scored if s.record["pred"] is not None and s.record["pred"] == s.record["label"]]
    correct.sort(key=lambda s: (-s.record["confidence"], s.item.image_id))
    drawn = []
    for s in correct[:top]:

        def read(item=s.item):
            pixels, size = load_image(item.path)
            if long_side is None:
                return pixels, rasterize_annotation(item.annotation, *size, region=region).mask
            small = fit_long_side(pixels, long_side)
            return small, rasterize_annotation(item.annotation, *size, draw_size=small.shape[:2], region=region).mask

        read_back = per_image(read, lambda reason: warn(f"{reason} (left out of {what})", quiet), s.item.path)
        if read_back is not None:
            drawn.append((s, *read_back))
    return drawn


def open_cache(settings, engine: Engine) -> ExplanationCache | None:
    """The explanation cache in the settings' output folder (None with --no-cache), keyed by the engine's context:
    whatever, besides the image file, determines what the engine computes."""
    if getattr(settings, "no_cache", True):
        return None
    ckpt = engine.checkpoint
    context = {
        "checkpoint_sha256": ckpt.sha256,
        "class_names": list(ckpt.class_names),
        "image_size": ckpt.image_size,
        "mean": list(ckpt.mean),
        "std": list(ckpt.std),
        "fast_decode": engine.fast_decode,
        "dicom_window": engine.dicom_window,
        "device": engine.device.type,
        "amp": engine.amp,
        "aug_smooth": engine.aug_smooth,
        "eigen_smooth": engine.eigen_smooth,
    }
    folder = OutputFolder(settings.out).path(CACHE_FOLDER)
    return ExplanationCache(
        folder, context, warn=lambda message: warn(message, settings.quiet), shapes=engine.map_shapes()
    )


def image_context(item: ImageItem, orig_size: tuple[int, int] | None) -> dict:
    """What a record says about where an image comes from (dataset.csv's centre, view and body region; None when
    unknown) and its size in megapixels (None when it could not be decoded): the keys of the breakdowns."""
    return {
        "center": item.center,
        "view": item.view,
        "body_region": item.body_region,
        "megapixels": orig_size[0] * orig_size[1] / 1e6 if orig_size else None,
    }


def failure_record(item_id: str, path: Path | str, error: str) -> dict:
    return {"image_id": item_id, "path": str(path), "error": error}


# ---- one run, one shard, or every shard on Ray -----------------------------------------------------------------

COMMAND_MODULES = {
    "annotate-iou": "btxrd_cam.commands.annotate",
    "compare": "btxrd_cam.commands.compare",
    "evidence": "btxrd_cam.commands.evidence",
    "gallery": "btxrd_cam.commands.gallery",
    "infer": "btxrd_cam.commands.infer",
    "sanity": "btxrd_cam.commands.sanity",
}


def command_module(command: str):
    """The module of a command that shards: it has make_engine(settings), examine(settings, engine, outputs, shard)
    → Part, and finish(part, settings, outputs) → outcome."""
    import importlib

    return importlib.import_module(COMMAND_MODULES[command])


@dataclass
class ShardOutcome:
    """What a shard run prints: the part it wrote (no summary, no figure: those come from `merge`)."""

    text: str
    failed: int
    empty: bool = False


def complete(command: str, settings, outputs):
    """A command's whole road: `--executor ray` runs every shard on Ray and finishes here; `--shard K/N` examines
    that shard and writes its part for `merge`; otherwise one part of everything, finished at once — the same
    `finish` in every case."""
    from btxrd_cam.shards import WHOLE, join, write_part

    module = command_module(command)
    if getattr(settings, "executor", "local") == "ray":
        from btxrd_cam.executors import run_on_ray

        return module.finish(join(run_on_ray(command, settings)), settings, outputs)
    shard = getattr(settings, "shard", None)
    part = module.examine(settings, module.make_engine(settings), outputs, shard or WHOLE)
    if shard is None:
        return module.finish(part, settings, outputs)
    part.batch_size = settings.batch_size
    path = write_part(part, outputs.root)
    failed = sum(1 for r in part.records if r.get("error"))
    summary = {
        "command": command,
        "shard": shard.name,
        "records": len(part.records),
        "failed": failed,
        "part": str(path),
    }
    return ShardOutcome(json.dumps(summary) + "\n", failed)
