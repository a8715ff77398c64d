"""`btxrd-cam sanity`: do the maps depend on the model? Weight randomisation, faithfulness and reproducibility.

Explain a class-balanced sample of the split once with the trained model (keeping the model inputs, so nothing is
decoded twice), then with copies whose weights are re-initialised step by step from the top down (Adebayo et al.
2018), each step explaining the class the trained model predicted. Each randomised map is compared with the
trained one (Spearman rank correlation and SSIM at model resolution) and with the reference level: how alike the
trained maps of unrelated images are (Arun et al. 2021). The model-independent `edges` map goes through the same
steps as the control that shows what failing looks like. Then ROAD faithfulness (Rong et al. 2022) per method and
for three controls, and, with `--against`, how alike two checkpoints' maps are.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from btxrd_cam.checkpoint import Checkpoint, load_checkpoint
from btxrd_cam.console import progress, sanity_table, show, warn
from btxrd_cam.data import ImageItem
from btxrd_cam.engine import ATTRIBUTION, INPUT_LAYER, CamConfig, Engine, restored_mode
from btxrd_cam.errors import UsageError, raise_if_interrupted
from btxrd_cam.faithfulness import ROAD_PERCENTILES, road_combined
from btxrd_cam.layers import get_layer, randomisation_steps
from btxrd_cam.maps import centre_map, edges_map, noise_map, spearman, ssim, upsample_cam
from btxrd_cam.outputs import SANITY_REPORT, output_folder
from btxrd_cam.pipeline import (
    build_engine,
    checkpoint_info,
    complete,
    explain_items,
    failure_record,
    load_split,
    open_checkpoint,
    open_engine,
    with_positions,
)
from btxrd_cam.randomisation import randomised_models
from btxrd_cam.render import sanity_curves, sanity_maps
from btxrd_cam.reports import SCHEMA_VERSION, write_report
from btxrd_cam.settings import SanitySettings
from btxrd_cam.shards import WHOLE, Part, Shard
from btxrd_cam.statistics import mean_ci

CURVES_NAME = "sanity.png"
MAPS_NAME = "sanity_maps.png"
MEASURES = ("spearman", "ssim")
SIMILARITY = {"spearman": spearman, "ssim": ssim}
CONTROL = "edges"
ROAD_CONTROLS = ("edges", "centre", "noise")
REFERENCE_PAIRS = 300
EXAMPLE_IMAGES = 2


@dataclass
class SanityOutcome:
    report: dict
    text: str
    failed: int


def choose_images(items: list[ImageItem], count: int, seed: int) -> tuple[list[ImageItem], str | None]:
    """`count` items balanced by class: each class shuffled under `seed`, then taken in turn. Returned in the order
    taken (so any prefix is balanced too); all of them, with a note, when the split has no more."""
    if len(items) <= count:
        note = f"the split has {len(items)} image(s), fewer than --images {count}: using them all" if items else None
        return list(items), note if len(items) < count else None
    rng = np.random.default_rng(seed)
    groups: dict[str, list[ImageItem]] = defaultdict(list)
    for item in items:
        groups[item.label or ""].append(item)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(groups.items())]
    chosen: list[ImageItem] = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen, None


def similarities(trained: np.ndarray, other: np.ndarray) -> dict[str, list[float]]:
    """Per image, Spearman and SSIM of two stacks of maps [N, S, S]."""
    return {measure: [fn(a, b) for a, b in zip(trained, other, strict=True)] for measure, fn in SIMILARITY.items()}


def summarise(values: dict[str, list[float]], seed: int) -> dict:
    return {measure: mean_ci(values[measure], seed=seed) for measure in MEASURES}


def sample_pairs(n: int, count: int, seed: int) -> list[tuple[int, int]]:
    """`count` distinct pairs of different images (i < j), or every pair when there are fewer (fixed seed)."""
    every = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if len(every) <= count:
        return every
    picks = np.random.default_rng(seed).choice(len(every), size=count, replace=False)
    return [every[k] for k in sorted(picks)]


def reference_level(maps: np.ndarray, pairs: list[tuple[int, int]], seed: int) -> dict:
    """How alike the trained maps of unrelated images are: the similarities of `pairs`, mean and 95% CI."""
    values = {measure: [fn(maps[i], maps[j]) for i, j in pairs] for measure, fn in SIMILARITY.items()}
    return {**summarise(values, seed), "pairs": len(pairs)}


def _verdicts(per_step: list[dict], reference: dict, order: str) -> tuple[dict, dict]:
    """passes / fails per measure (cascading order: with every step randomised, is the mean similarity at or
    below the upper end of the reference CI?) and the first step that reaches the reference level."""
    verdict, reaches = {}, {}
    for measure in MEASURES:
        upper = (reference[measure]["ci95"] or [None, None])[1]
        means = [(row["step"], row[measure]["mean"]) for row in per_step]
        reaches[measure] = next((s for s, m in means if upper is not None and m is not None and m <= upper), None)
        final = means[-1][1] if means else None
        if order != "cascading" or upper is None or final is None:
            verdict[measure] = None
        else:
            verdict[measure] = "passes" if final <= upper else "fails"
    return verdict, reaches


def _against(settings: SanitySettings, checkpoint: Checkpoint, layer: str) -> tuple[Checkpoint, str]:
    """The second checkpoint, which must classify the same classes at the same input size."""
    other = load_checkpoint(settings.against, settings.arch, settings.class_names, None)
    problems = []
    if other.class_names != checkpoint.class_names:
        problems.append(f"classes {', '.join(other.class_names)} (the first has {', '.join(checkpoint.class_names)})")
    if other.image_size != checkpoint.image_size:
        problems.append(f"input size {other.image_size} (the first has {checkpoint.image_size})")
    if problems:
        raise UsageError(f"--against: {settings.against} is not comparable: it has {' and '.join(problems)}")
    try:
        other_layer = get_layer(other.model, layer, "--against")[0]
    except UsageError:
        other_layer = other.target_layer_name
    return other, other_layer


def make_engine(settings: SanitySettings) -> Engine:
    """The engine of the methods asked for at the checkpoint's target layer (the attributions at the input)."""
    checkpoint = open_checkpoint(settings)
    layer = checkpoint.target_layer_name
    methods = list(dict.fromkeys(settings.methods))
    configs = [CamConfig(method, INPUT_LAYER if method in ATTRIBUTION else layer) for method in methods]
    return open_engine(settings, checkpoint, configs)


def _chunk_maps(engine: Engine, chunks: list[list], size: int) -> list[dict[str, np.ndarray]]:
    """Per chosen image (in order; None where it failed), {configuration name: float32 [S, S]}: each chunk of the
    chosen images (the batches the engine explained them in) explained again, its usable images together."""
    maps: list[dict | None] = []
    for chunk in chunks:
        good = [r for _, r in chunk if r.ok]
        found = {}
        if good:
            tensors = torch.from_numpy(np.stack([r.tensor for r in good]))
            _, found = engine.explain_all(tensors, [r.pred for r in good])
        at = 0
        for _, result in chunk:
            if result.ok:
                maps.append({name: upsample_cam(stack[at], (size, size)) for name, stack in found.items()})
                at += 1
            else:
                maps.append(None)
    return maps


def examine(settings: SanitySettings, engine: Engine, outputs, shard: Shard = WHOLE) -> Part:
    """The shard's share of the chosen images through the trained model and every randomisation step: per image,
    its trained maps and its similarities at every step (and ROAD, and the second checkpoint's): the part
    `finish` summarises."""
    checkpoint = engine.checkpoint
    layer, size = checkpoint.target_layer_name, checkpoint.image_size
    methods = [c.method for c in engine.configs]
    names = {c.method: c.name for c in engine.configs}
    other = _against(settings, checkpoint, layer) if settings.against else None
    items = load_split(settings, engine.class_names)
    if not items:
        raise UsageError(f"--split: the {settings.split}/{settings.subset} split has no images")
    chosen, note = choose_images(items, settings.images, settings.seed)
    if note:
        warn(note, settings.quiet)
    mine = shard.take(with_positions(chosen), settings.batch_size)
    results = explain_items(
        engine, [item for _, item in mine], quiet=settings.quiet, description="explaining (trained)", keep_tensors=True
    )
    pairs = list(zip([p for p, _ in mine], results, strict=True))
    chunks = [pairs[i : i + settings.batch_size] for i in range(0, len(pairs), settings.batch_size)]
    # the trained maps are the first pass's: the same inputs, the same batches
    trained = [{n: upsample_cam(raw, (size, size)) for n, raw in r.maps.items()} if r.ok else None for _, r in pairs]
    steps, fallback = randomisation_steps(engine.model, size)
    if fallback:
        warn(fallback, settings.quiet)
    n, k = len(pairs), len(steps)
    arrays = {f"r_ctrl_{m}": np.full((n, k), np.nan) for m in MEASURES}
    for j, method in enumerate(methods):
        rows = [maps[names[method]] if maps else np.full((size, size), np.nan, np.float32) for maps in trained]
        arrays[f"r_trained_{j}"] = np.asarray(rows, np.float32).reshape(n, size, size)
        for measure in MEASURES:
            arrays[f"r_sim_{j}_{measure}"] = np.full((n, k), np.nan)
    examples = {i: {m: [trained[i][names[m]]] for m in methods} for i, (p, r) in enumerate(pairs)
                if p < EXAMPLE_IMAGES and r.ok}  # fmt: skip
    edges = [edges_map(r.model_pixels) if r.ok else None for _, r in pairs]
    without_reset: set[str] = set()
    step_runs = randomised_models(engine.model, steps, settings.order, settings.seed)
    with progress(len(steps), f"randomising ({settings.order})", settings.quiet) as advance:
        for s, (_, model, missing) in enumerate(step_runs):
            without_reset.update(missing)
            stepped = build_engine(settings, dataclasses.replace(checkpoint, model=model), engine.configs)
            randomised = _chunk_maps(stepped, chunks, size)
            for i, maps in enumerate(randomised):
                if maps is None:
                    continue
                for j, method in enumerate(methods):
                    for measure, fn in SIMILARITY.items():
                        arrays[f"r_sim_{j}_{measure}"][i, s] = fn(trained[i][names[method]], maps[names[method]])
                    if i in examples:
                        examples[i][method].append(maps[names[method]])
                # the control: a map that cannot depend on the model, through the very same steps
                again = edges_map(pairs[i][1].model_pixels)
                for measure, fn in SIMILARITY.items():
                    arrays[f"r_ctrl_{measure}"][i, s] = fn(edges[i], again)
            advance()
    for i, maps in examples.items():
        for j, method in enumerate(methods):
            arrays[f"ex_{pairs[i][0]}_{j}"] = np.stack(maps[method])
    if settings.road:
        arrays.update(_road(engine, pairs, trained, edges, methods, names, settings))
    records = []
    for position, result in pairs:
        record = {"position": position, "image_id": result.item.image_id, "label": result.item.label,
                  "path": str(result.item.path), "pred": None, "confidence": None, "their_pred": None,
                  "error": result.error}  # fmt: skip
        if result.ok:
            record.update(pred=engine.class_names[result.pred], confidence=float(result.probs[result.pred]))
        records.append(record)
    against = None
    if other is not None:
        against = _reproduce(settings, other, chunks, trained, methods, names, arrays, records, size)
    context = {
        "checkpoint": checkpoint_info(engine),
        "layer": layer,
        "methods": methods,
        "note": note,
        "steps": [step.name for step in steps],
        "step_modules": {step.name: list(step.modules) for step in steps},
        "fallback": fallback,
        "without_reset": sorted(without_reset),
        "against": against,
        "image_size": size,
    }
    return Part("sanity", settings.part_settings(), context, records, arrays, {}, shard)


ROAD_ROWS = ("edges", "centre", "noise")


def _road(engine, pairs, trained, edges, methods, names, settings) -> dict[str, np.ndarray]:
    """ROAD per row (each method and the controls) for the shard's usable images among the first --road-images
    chosen ones: r_road_<row> (NaN elsewhere). Each image's noise is seeded by its place among the chosen images,
    so a score does not depend on the shard or the threads."""
    size = engine.checkpoint.image_size
    rows = [*methods, *ROAD_ROWS]
    values = {row: np.full(len(pairs), np.nan) for row in rows}
    jobs = []
    for i, (position, result) in enumerate(pairs):
        if position >= settings.road_images or not result.ok:
            continue
        maps = {method: trained[i][names[method]] for method in methods}
        maps.update(
            edges=edges[i],
            centre=centre_map((size, size)),
            noise=noise_map((size, size), settings.seed * 1000 + position),
        )
        jobs += [(row, i, position, maps[row]) for row in rows]

    def score(job):
        raise_if_interrupted()
        row, i, position, saliency = job
        tensor = torch.from_numpy(pairs[i][1].tensor[None])
        seed = settings.seed * 100_003 + position
        return road_combined(engine.model, tensor, saliency[None], [pairs[i][1].pred], seed)[0]

    with (
        restored_mode(engine.model),
        ThreadPoolExecutor(2) as pool,
        progress(len(jobs), "ROAD", settings.quiet) as advance,
    ):
        engine.model.eval()
        for (row, i, _, _), value in zip(jobs, pool.map(score, jobs), strict=True):
            values[row][i] = float(value)
            advance()
    return {f"r_road_{r}": values[row] for r, row in enumerate(rows)}


def _reproduce(settings, other, chunks, trained, methods, names, arrays, records, size) -> dict:
    """The second checkpoint's maps of the same images and classes: per image, the similarities to the first's
    (r_rep_<method>_<measure>) and its prediction (`their_pred`); returns what the report says of it."""
    other_checkpoint, other_layer = other
    other_configs = [CamConfig(m, INPUT_LAYER if m in ATTRIBUTION else other_layer) for m in methods]
    other_engine = open_engine(settings, other_checkpoint, other_configs)
    theirs = _chunk_maps(other_engine, chunks, size)
    for j, method in enumerate(methods):
        theirs_name = f"{method}@{INPUT_LAYER if method in ATTRIBUTION else other_layer}"
        for measure, fn in SIMILARITY.items():
            arrays[f"r_rep_{j}_{measure}"] = np.asarray(
                [np.nan if t is None else fn(trained[i][names[method]], t[theirs_name]) for i, t in enumerate(theirs)]
            )
    at = 0
    for chunk in chunks:
        good = [r for _, r in chunk if r.ok]
        if not good:
            continue
        with torch.inference_mode():
            preds = other_engine.predict_tensors(torch.from_numpy(np.stack([r.tensor for r in good]))).argmax(1)
        it = iter(int(p) for p in preds)
        for _, result in chunk:
            if result.ok:
                records[at]["their_pred"] = next(it)
            at += 1
    return {"name": other_checkpoint.name, "sha256": other_checkpoint.sha256, "layer": other_layer}


def finish(part: Part, settings: SanitySettings, outputs) -> SanityOutcome:
    """The report of a part — one run's, or the shards' joined — with its figures: a pure function of the part."""
    context, arrays = part.context, part.arrays
    methods, steps = context["methods"], context["steps"]
    names_list = context["checkpoint"]["class_names"]
    records = part.records
    ok = [i for i, r in enumerate(records) if r["error"] is None]
    failed = [failure_record(r["image_id"], r["path"], r["error"]) for r in records if r["error"] is not None]
    report = {
        "schema_version": SCHEMA_VERSION,
        "command": "sanity",
        "settings": {
            "split": settings.split,
            "subset": settings.subset,
            "methods": methods,
            "layer": context["layer"],
            "images": settings.images,
            "order": settings.order,
            "road": settings.road,
            "road_images": settings.road_images,
            "seed": settings.seed,
            "data_root": str(settings.data_root),
            "splits_dir": str(settings.splits_dir),
        },
        "checkpoint": context["checkpoint"],
        "note": context["note"],
        "steps": steps,
        "step_modules": context["step_modules"],
        "fallback": context["fallback"],
    }
    if not ok:
        report.update(methods={}, reference={}, control=None, road=None, reproducibility=None, images=[])
        report["failed"] = failed
        text = write_report(report, outputs.path(SANITY_REPORT))
        return SanityOutcome(report, text, len(failed))
    seed = settings.seed
    trained = {m: arrays[f"r_trained_{j}"][ok] for j, m in enumerate(methods)}

    def column(name: str, s: int | None = None) -> list[float]:
        values = arrays[name][ok] if s is None else arrays[name][ok, s]
        return [float(v) for v in values]

    per_step = {
        m: [{"step": step, **summarise({x: column(f"r_sim_{j}_{x}", s) for x in MEASURES}, seed)}
            for s, step in enumerate(steps)]
        for j, m in enumerate(methods)
    }  # fmt: skip
    control_steps = [
        {"step": step, **summarise({x: column(f"r_ctrl_{x}", s) for x in MEASURES}, seed)}
        for s, step in enumerate(steps)
    ]
    pairs = sample_pairs(len(ok), REFERENCE_PAIRS, seed)
    reference = {method: reference_level(trained[method], pairs, seed) for method in methods}
    method_reports = {}
    for method in methods:
        verdict, reaches = _verdicts(per_step[method], reference[method], settings.order)
        method_reports[method] = {"per_step": per_step[method], "verdict": verdict, "reaches_reference_at": reaches}
    road = None
    if settings.road:
        rows = [*methods, *ROAD_ROWS]
        scored = {row: [v for v in column(f"r_road_{r}") if not np.isnan(v)] for r, row in enumerate(rows)}
        road = {
            "percentiles": list(ROAD_PERCENTILES),
            "images": len(scored[rows[0]]),
            "higher_is_more_faithful": True,
            "rows": {row: mean_ci(scored[row], seed=seed) for row in rows},
        }
    reproducibility = None
    if context["against"] is not None:
        per_method = {}
        for j, method in enumerate(methods):
            summary = summarise({x: column(f"r_rep_{j}_{x}") for x in MEASURES}, seed)
            above = {
                measure: None
                if summary[measure]["mean"] is None or not reference[method][measure]["ci95"]
                else summary[measure]["mean"] > reference[method][measure]["ci95"][1]
                for measure in MEASURES
            }
            per_method[method] = {**summary, "above_reference": above}
        agree = [names_list.index(records[i]["pred"]) == records[i]["their_pred"] for i in ok]
        reproducibility = {
            "against": context["against"],
            "explained_class": "the first checkpoint's prediction",
            "prediction_agreement": float(np.mean(agree)),
            "methods": per_method,
        }
        report["checkpoint_against"] = context["against"]
    report.update(
        {
            "methods": method_reports,
            "reference": reference,
            "control": {"name": CONTROL, "per_step": control_steps},
            "road": road,
            "reproducibility": reproducibility,
            "reinitialised_without_reset_parameters": context["without_reset"],
            "images": [{k: records[i][k] for k in ("image_id", "label", "pred", "confidence")} for i in ok],
            "failed": failed,
        }
    )
    text = write_report(report, outputs.path(SANITY_REPORT))
    sanity_curves(report, outputs.path(CURVES_NAME))
    shown = [i for i in ok if f"ex_{records[i]['position']}_0" in arrays][:EXAMPLE_IMAGES]
    example_maps = {
        m: [np.stack([arrays[f"ex_{records[i]['position']}_{j}"][c] for i in shown]) for c in range(len(steps) + 1)]
        for j, m in enumerate(methods)
    }
    titles = [f"{records[i]['image_id']} ({records[i]['pred']})" for i in shown]
    sanity_maps(example_maps, ["trained", *steps], titles, outputs.path(MAPS_NAME))
    show(sanity_table(report), settings.quiet)
    return SanityOutcome(report, text, len(failed))


def run_sanity(settings: SanitySettings) -> SanityOutcome:
    """One run: examine the chosen images (or this shard's share, for `merge`; or every shard on Ray), then
    finish."""
    return complete("sanity", settings, output_folder(settings))
