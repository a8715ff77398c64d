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
    checkpoint_info,
    explain_items,
    failure_record,
    load_split,
    open_checkpoint,
    open_engine,
)
from btxrd_cam.randomisation import randomised_models
from btxrd_cam.render import sanity_curves, sanity_maps
from btxrd_cam.reports import SCHEMA_VERSION, write_report
from btxrd_cam.settings import SanitySettings
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


def model_resolution_maps(engine: Engine, tensors: torch.Tensor, classes: list[int], batch_size: int) -> dict:
    """{configuration name: float32 [N, S, S] in [0, 1]} of the engine's model for these inputs and classes, each
    map upsampled to the model's input size exactly as pytorch-grad-cam scales it."""
    size = (tensors.shape[-2], tensors.shape[-1])
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for start in range(0, len(tensors), batch_size):
        batch = tensors[start : start + batch_size]
        _, maps = engine.explain_all(batch, classes[start : start + batch_size])
        for name, stack in maps.items():
            out[name] += [upsample_cam(raw, size) for raw in stack]
    return {name: np.stack(values) for name, values in out.items()}


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


def road_rows(
    model: torch.nn.Module,
    tensors: torch.Tensor,
    rows: dict[str, np.ndarray],
    classes: list[int],
    seed: int,
    quiet: bool,
) -> dict:
    """ROAD per row (a method or a control) on the same images: mean and 95% CI. Images are scored in parallel,
    each with its own seeded noise, so the numbers do not depend on the threads."""
    jobs = [(name, i) for name in rows for i in range(len(tensors))]

    def score(job):
        raise_if_interrupted()
        name, i = job
        return road_combined(model, tensors[i : i + 1], rows[name][i : i + 1], [classes[i]], seed * 100_003 + i)[0]

    values: dict[str, list[float]] = defaultdict(list)
    with restored_mode(model), ThreadPoolExecutor(2) as pool, progress(len(jobs), "ROAD", quiet) as advance:
        model.eval()
        for (name, _), value in zip(jobs, pool.map(score, jobs), strict=True):
            values[name].append(float(value))
            advance()
    return {name: mean_ci(values[name], seed=seed) for name in rows}


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


def run_sanity(settings: SanitySettings) -> SanityOutcome:
    outputs = output_folder(settings)
    checkpoint = open_checkpoint(settings)
    layer = checkpoint.target_layer_name
    methods = list(dict.fromkeys(settings.methods))
    configs = [CamConfig(method, INPUT_LAYER if method in ATTRIBUTION else layer) for method in methods]
    other = _against(settings, checkpoint, layer) if settings.against else None
    engine = open_engine(settings, checkpoint, configs)
    items = load_split(settings, engine.class_names)
    if not items:
        raise UsageError(f"--split: the {settings.split}/{settings.subset} split has no images")
    chosen, note = choose_images(items, settings.images, settings.seed)
    if note:
        warn(note, settings.quiet)
    results = explain_items(engine, chosen, quiet=settings.quiet, description="explaining (trained)", keep_tensors=True)
    ok = [r for r in results if r.ok]
    failed = [failure_record(r.item.image_id, r.item.path, r.error) for r in results if not r.ok]
    size = checkpoint.image_size
    names = {c.method: c.name for c in configs}
    report = {
        "schema_version": SCHEMA_VERSION,
        "command": "sanity",
        "settings": {
            "split": settings.split,
            "subset": settings.subset,
            "methods": methods,
            "layer": layer,
            "images": settings.images,
            "order": settings.order,
            "road": settings.road,
            "road_images": settings.road_images,
            "seed": settings.seed,
            "data_root": str(settings.data_root),
            "splits_dir": str(settings.splits_dir),
        },
        "checkpoint": checkpoint_info(engine),
        "note": note,
    }
    steps, fallback = randomisation_steps(engine.model, size)
    if fallback:
        warn(fallback, settings.quiet)
    report.update(
        {
            "steps": [step.name for step in steps],
            "step_modules": {step.name: list(step.modules) for step in steps},
            "fallback": fallback,
        }
    )
    if not ok:
        report.update(methods={}, reference={}, control=None, road=None, reproducibility=None, images=[])
        report["failed"] = failed
        text = write_report(report, settings.out / SANITY_REPORT)
        return SanityOutcome(report, text, len(failed))

    tensors = torch.from_numpy(np.stack([r.tensor for r in ok]))
    classes = [r.pred for r in ok]
    trained_all = model_resolution_maps(engine, tensors, classes, settings.batch_size)
    trained = {method: trained_all[names[method]] for method in methods}
    edges = np.stack([edges_map(r.model_pixels) for r in ok])
    examples = list(range(min(EXAMPLE_IMAGES, len(ok))))
    example_maps = {m: [trained[m][examples]] for m in methods}
    per_step: dict[str, list[dict]] = {m: [] for m in methods}
    control_steps, without_reset = [], set()
    step_runs = randomised_models(engine.model, steps, settings.order, settings.seed)
    with progress(len(steps), f"randomising ({settings.order})", settings.quiet) as advance:
        for step, model, missing in step_runs:
            without_reset.update(missing)
            stepped = Engine(
                dataclasses.replace(checkpoint, model=model),
                device=engine.device,
                batch_size=settings.batch_size,
                amp=settings.amp,
                configs=configs,
                ig_steps=settings.ig_steps,
                sg_samples=settings.sg_samples,
                occlusion_window=settings.occlusion_window,
            )
            maps = model_resolution_maps(stepped, tensors, classes, settings.batch_size)
            for method in methods:
                randomised = maps[names[method]]
                per_step[method].append(
                    {"step": step.name, **summarise(similarities(trained[method], randomised), settings.seed)}
                )
                example_maps[method].append(randomised[examples])
            # the control: a map that cannot depend on the model, through the very same steps
            again = np.stack([edges_map(r.model_pixels) for r in ok])
            control_steps.append({"step": step.name, **summarise(similarities(edges, again), settings.seed)})
            advance()
    pairs = sample_pairs(len(ok), REFERENCE_PAIRS, settings.seed)
    reference = {method: reference_level(trained[method], pairs, settings.seed) for method in methods}
    method_reports = {}
    for method in methods:
        verdict, reaches = _verdicts(per_step[method], reference[method], settings.order)
        method_reports[method] = {"per_step": per_step[method], "verdict": verdict, "reaches_reference_at": reaches}
    road = None
    if settings.road:
        count = min(settings.road_images, len(ok))  # the first of the chosen images: balanced by class
        rows = {method: trained[method][:count] for method in methods}
        rows["edges"] = edges[:count]
        rows["centre"] = np.stack([centre_map((size, size))] * count)
        rows["noise"] = np.stack([noise_map((size, size), settings.seed * 1000 + i) for i in range(count)])
        road = {
            "percentiles": list(ROAD_PERCENTILES),
            "images": count,
            "higher_is_more_faithful": True,
            "rows": road_rows(engine.model, tensors[:count], rows, classes[:count], settings.seed, settings.quiet),
        }
    reproducibility = None
    if other is not None:
        other_checkpoint, other_layer = other
        other_configs = [CamConfig(m, INPUT_LAYER if m in ATTRIBUTION else other_layer) for m in methods]
        other_engine = open_engine(settings, other_checkpoint, other_configs)
        theirs = model_resolution_maps(other_engine, tensors, classes, settings.batch_size)
        with torch.inference_mode():
            their_preds = [int(p) for p in other_engine.predict_tensors(tensors).argmax(1)]
        per_method = {}
        for method in methods:
            theirs_name = f"{method}@{INPUT_LAYER if method in ATTRIBUTION else other_layer}"
            summary = summarise(similarities(trained[method], theirs[theirs_name]), settings.seed)
            above = {
                measure: None
                if summary[measure]["mean"] is None or not reference[method][measure]["ci95"]
                else summary[measure]["mean"] > reference[method][measure]["ci95"][1]
                for measure in MEASURES
            }
            per_method[method] = {**summary, "above_reference": above}
        reproducibility = {
            "against": {"name": other_checkpoint.name, "sha256": other_checkpoint.sha256, "layer": other_layer},
            "explained_class": "the first checkpoint's prediction",
            "prediction_agreement": float(np.mean([a == b for a, b in zip(classes, their_preds, strict=True)])),
            "methods": per_method,
        }
        report["checkpoint_against"] = reproducibility["against"]
    names_list = engine.class_names
    report.update(
        {
            "methods": method_reports,
            "reference": reference,
            "control": {"name": CONTROL, "per_step": control_steps},
            "road": road,
            "reproducibility": reproducibility,
            "reinitialised_without_reset_parameters": sorted(without_reset),
            "images": [
                {
                    "image_id": r.item.image_id,
                    "label": r.item.label,
                    "pred": names_list[r.pred],
                    "confidence": float(r.probs[r.pred]),
                }
                for r in ok
            ],
            "failed": failed,
        }
    )
    text = write_report(report, settings.out / SANITY_REPORT)
    sanity_curves(report, outputs.path(CURVES_NAME))
    titles = [f"{ok[i].item.image_id} ({names_list[classes[i]]})" for i in examples]
    sanity_maps(example_maps, ["trained", *report["steps"]], titles, outputs.path(MAPS_NAME))
    show(sanity_table(report), settings.quiet)
    return SanityOutcome(report, text, len(failed))
