"""`btxrd-cam evidence`: does the prediction rest on the annotated lesion, and which explanation shows it?

An intervention on the image separates the two causes of a low agreement between heatmaps and outlines: a model
that decides from something else, or an explanation that fails to show the lesion the model uses. One engine pass
per annotated image gives the prediction and every configuration's map; from the same decode, at the model's input
resolution, copies of the input are built and run through the model (forwards only, one batch per image):

- `lesion_removed`: the lesion (every outline of the file, dilated by `--margin` px) filled;
- `control_removed`: the same shape moved to `--controls` places on the body that do not touch the lesion (the
  same area removed elsewhere; averaged over the places);
- `lesion_only`: everything but the lesion filled (is the lesion alone enough?);
- `cam_removed`, per configuration: as many of the map's highest-ranked pixels as the lesion has, filled (does
  the explanation find the evidence?).

The drop of the explained class's probability on each copy, whether the prediction changes, and whether the image
relies on the lesion (drop with the lesion removed − drop with the control removed > `--delta`) make each record;
`summarise` turns records into the report (a pure function of them). Fills and control placement live in
faithfulness.py, shared with sanity's ROAD.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from btxrd_cam.console import show, warn
from btxrd_cam.data import ImageItem, normalize_pixels
from btxrd_cam.engine import Engine, Explanation
from btxrd_cam.errors import InputError, per_image, raise_if_interrupted
from btxrd_cam.faithfulness import body_mask, dilate, fill_region, place_controls, top_pixels
from btxrd_cam.labelme import rasterize_annotation, read_labelme
from btxrd_cam.maps import upsample_cam
from btxrd_cam.metrics import pointing_game
from btxrd_cam.outputs import EVIDENCE_REPORT, output_folder
from btxrd_cam.pipeline import (
    annotated,
    checkpoint_info,
    complete,
    explain_items,
    image_context,
    load_split,
    open_cache,
    open_checkpoint,
    open_engine,
    resolve_configurations,
    resolve_reference,
    with_positions,
)
from btxrd_cam.reports import SCHEMA_VERSION, write_report
from btxrd_cam.scoring import annotation_mask
from btxrd_cam.settings import EvidenceSettings
from btxrd_cam.shards import WHOLE, Part, Shard
from btxrd_cam.statistics import bootstrap_ci, breakdowns, mean_ci, paired_bootstrap

FIGURE_NAME = "evidence.png"
EXAMPLES_NAME = "evidence_examples.png"
COPY_KINDS = ("lesion_removed", "control_removed", "lesion_only")
BUILDERS = 2  # threads building copies (the imputation's sparse solves release the GIL)
TABLE_CELLS = ("shown", "missed", "elsewhere", "misleading")


@dataclass
class EvidenceOutcome:
    report: dict
    text: str
    failed: int
    empty: bool


@dataclass
class Copies:
    """One image's copies of the model input, built from its one decode, in the order they are run."""

    result: Explanation
    record: dict
    kinds: list[tuple[str, str | None]] = field(default_factory=list)  # (kind, configuration or None)
    tensors: list[np.ndarray] = field(default_factory=list)
    lesion: np.ndarray | None = None  # bool [S, S], the undilated lesion at model resolution
    removed: np.ndarray | None = None  # bool [S, S], what lesion_removed removes
    controls: list[np.ndarray] = field(default_factory=list)
    cam_regions: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, kind: str, tensor: np.ndarray, name: str | None = None) -> None:
        self.kinds.append((kind, name))
        self.tensors.append(tensor)


def image_seed(seed: int, image_id: str) -> int:
    """A seed for one image's controls and imputation noise that depends on the image, not on its position in
    the split (a shard of the split draws what the whole run would)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{image_id}".encode()).digest()[:4], "little")


def normal_class(names: list[str]) -> int | None:
    """The index of the class named Normal (case-insensitive), else None."""
    lowered = [n.lower() for n in names]
    return lowered.index("normal") if "normal" in lowered else None


def _record(result: Explanation, names: list[str], error: str | None) -> dict:
    item = result.item
    ok = result.ok and result.probs is not None
    return {
        "image_id": item.image_id,
        "label": item.label,
        "pred": names[result.pred] if ok else None,
        "confidence": float(result.probs[result.pred]) if ok else None,
        "target": names[result.target] if ok and result.target is not None else None,
        "subtype": item.subtype,
        **image_context(item, result.orig_size),
        "lesion_area": None,
        "removed_pixels": None,
        "lesions": None,
        "region_used": None,
        "controls_placed": None,
        "p": None,
        "drop": None,
        "flip": None,
        "to_normal": None,
        "relies_on_lesion": None,
        "pointing_game": None,
        "warnings": list(result.warnings),
        "error": error,
    }


def build_copies(result: Explanation, engine: Engine, settings: EvidenceSettings, names: list[str]) -> Copies:
    """Every copy of one explained image's model input (InputError for an unusable annotation)."""
    record = _record(result, engine.class_names, result.error)
    copies = Copies(result, record)
    if not result.ok:
        return copies
    item, ckpt = result.item, engine.checkpoint
    size = ckpt.image_size
    data = read_labelme(item.annotation)
    drawn = rasterize_annotation(
        data, *result.orig_size, path=item.annotation, draw_size=(size, size), region=settings.region
    )
    if drawn.area == 0:
        raise InputError(item.annotation, f"annotation has no area at the model's {size}x{size} input")
    lesion, removed = drawn.mask, dilate(drawn.mask, settings.margin)
    tensor = normalize_pixels(result.model_pixels, ckpt.mean, ckpt.std)  # exactly the engine's input
    seed = image_seed(settings.seed, item.image_id)
    generator = torch.Generator().manual_seed(seed)
    controls = place_controls(removed, body_mask(result.model_pixels), settings.controls, seed)
    warnings = [*record["warnings"], *drawn.warnings]
    if not controls:
        warnings.append("no control region fits (an equal area elsewhere on the body): relies_on_lesion unknown")
    elif len(controls) < settings.controls:
        warnings.append(f"only {len(controls)} of {settings.controls} control regions fit")
    copies.add("lesion_removed", fill_region(tensor, removed, settings.fill, generator))
    for control in controls:
        copies.add("control_removed", fill_region(tensor, control, settings.fill, generator))
    copies.add("lesion_only", fill_region(tensor, ~removed, settings.fill, generator))
    count = int(removed.sum())
    for name in names:
        region = top_pixels(upsample_cam(result.maps[name], (size, size)), count)
        copies.cam_regions[name] = region
        copies.add("cam_removed", fill_region(tensor, region, settings.fill, generator), name)
    scoring = annotation_mask(
        data, result.orig_size, settings.resolution, size, path=item.annotation, region=settings.region
    ).mask
    record.update(
        lesion_area=float(lesion.mean()),
        removed_pixels=count,
        lesions=drawn.lesions,
        region_used=drawn.region_used,
        controls_placed=len(controls),
        pointing_game={name: pointing_game(upsample_cam(result.maps[name], scoring.shape), scoring) for name in names},
        warnings=warnings,
    )
    copies.lesion, copies.removed, copies.controls = lesion, removed, controls
    return copies


def score_copies(copies: Copies, engine: Engine, settings: EvidenceSettings, names: list[str]) -> dict:
    """Run one image's copies through the model (one batch, no gradients) and complete its record."""
    record, result = copies.record, copies.result
    if not copies.tensors:
        return record
    logits = engine.predict_tensors(torch.from_numpy(np.stack(copies.tensors)))
    if not torch.isfinite(logits).all():
        return {**record, "error": "the model returned NaN or infinite values on a copy of the image"}
    probs = torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)
    target, pred = result.target, result.pred
    normal = normal_class(engine.class_names)
    original = float(result.probs[target])
    rows: dict[str, list] = {kind: [] for kind in COPY_KINDS}
    cams: dict[str, np.ndarray] = {}
    for (kind, name), row in zip(copies.kinds, probs, strict=True):
        if kind == "cam_removed":
            cams[name] = row
        else:
            rows[kind].append(row)

    def outcome(stack: list[np.ndarray]) -> tuple[float | None, float | None, float | None]:
        """(p of the target, flip share, to-normal share) averaged over a kind's copies (the controls' places)."""
        if not stack:
            return None, None, None
        array = np.stack(stack)
        predicted = array.argmax(axis=1)
        flips = float(np.mean(predicted != pred))
        to_normal = None if normal is None else float(np.mean((predicted == normal) & (predicted != pred)))
        return float(array[:, target].mean()), flips, to_normal

    p, flip, to_normal = {"original": original}, {}, {}
    for kind in COPY_KINDS:
        p[kind], flip[kind], to_normal[kind] = outcome(rows[kind])
    p["cam_removed"], flip["cam_removed"], to_normal["cam_removed"] = {}, {}, {}
    for name in names:
        p["cam_removed"][name], flip["cam_removed"][name], to_normal["cam_removed"][name] = outcome([cams[name]])
    drop = {kind: None if p[kind] is None else original - p[kind] for kind in COPY_KINDS}
    drop["cam_removed"] = {name: original - p["cam_removed"][name] for name in names}
    relies = None
    if drop["control_removed"] is not None:
        relies = bool(drop["lesion_removed"] - drop["control_removed"] > settings.delta)
    return {**record, "p": p, "drop": drop, "flip": flip, "to_normal": to_normal, "relies_on_lesion": relies}


# ---- the summary: a pure function of the records ---------------------------------------------------------------


def _kind_values(records: list[dict], kind: str, key: str = "drop") -> list[float | None]:
    return [r[key][kind] for r in records]


def _rate(values: list[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _copy_summary(records: list[dict], kind: str) -> dict:
    return {
        "drop": mean_ci(_kind_values(records, kind)),
        "flip_rate": _rate(_kind_values(records, kind, "flip")),
        "to_normal_rate": _rate(_kind_values(records, kind, "to_normal")),
    }


def _relies(records: list[dict]) -> dict:
    decided = [float(r["relies_on_lesion"]) for r in records if r["relies_on_lesion"] is not None]
    return {
        "share": float(np.mean(decided)) if decided else None,
        "ci95": bootstrap_ci(decided),
        "count": int(sum(decided)),
        "decided": len(decided),
    }


def summarise_group(records: list[dict]) -> dict:
    """Per copy kind the mean drop (95 % bootstrap CI), flip and to-normal rates; lesion − control paired; the
    share of images that rely on the lesion."""
    summary = {kind: _copy_summary(records, kind) for kind in COPY_KINDS}
    summary["lesion_vs_control"] = paired_bootstrap(
        _kind_values(records, "lesion_removed"), _kind_values(records, "control_removed")
    )
    summary["relies_on_lesion"] = _relies(records)
    summary["count"] = len(records)
    return summary


def configuration_summary(records: list[dict], name: str) -> dict:
    """What removing a configuration's top pixels does, against removing the lesion and the control, and the
    2 × 2 table of relies-on-lesion × pointing-game hit."""
    cam = [r["drop"]["cam_removed"][name] for r in records]
    table = dict.fromkeys(TABLE_CELLS, 0)
    for r in records:
        relies, hit = r["relies_on_lesion"], r["pointing_game"][name]
        if relies is None:
            continue
        cell = ("shown" if hit else "missed") if relies else ("misleading" if hit else "elsewhere")
        table[cell] += 1
    shows = table["shown"] / (table["shown"] + table["missed"]) if table["shown"] + table["missed"] else None
    return {
        "cam_removed": {
            "drop": mean_ci(cam),
            "flip_rate": _rate([r["flip"]["cam_removed"][name] for r in records]),
        },
        "cam_vs_lesion": paired_bootstrap(cam, _kind_values(records, "lesion_removed")),
        "cam_vs_control": paired_bootstrap(cam, _kind_values(records, "control_removed")),
        "table": table,
        "shows_evidence": shows,
    }


def summarise(records: list[dict], names: list[str]) -> tuple[dict, dict, dict]:
    """(summary, configurations, breakdowns) of the evaluated records."""
    summary = summarise_group(records)
    configurations = {name: configuration_summary(records, name) for name in names}
    groups = breakdowns(records, summarise_group, lambda r: r["lesion_area"]) if records else {}
    return summary, configurations, groups


def _change(drop: float | None, what: str) -> str:
    """A mean drop in words: "lowers it by 0.15", "raises it by 0.02", "barely changes it"."""
    if drop is None:
        return f"does not tell about {what}"
    if abs(drop) < 0.005:
        return f"barely changes {what}"
    return f"{'lowers' if drop > 0 else 'raises'} {what} by {abs(drop):.2f}"


def verdict(summary: dict, configurations: dict, reference: str) -> str | None:
    """One line a clinician reads: how often the model relies on the lesion, what an equal area elsewhere does,
    and how often the reference explanation shows that evidence."""
    relies = summary["relies_on_lesion"]
    if relies["share"] is None:
        return None
    lesion, control = summary["lesion_removed"]["drop"]["mean"], summary["control_removed"]["drop"]["mean"]
    ci = relies["ci95"] or [relies["share"], relies["share"]]
    line = (
        f"the model relies on the lesion in {100 * relies['share']:.0f} % of images [{100 * ci[0]:.0f}, "
        f"{100 * ci[1]:.0f}] ({relies['count']} of {relies['decided']}): removing the lesion "
        f"{_change(lesion, 'its confidence')}, removing an equal area elsewhere {_change(control, 'it')}"
    )
    shows = configurations.get(reference, {}).get("shows_evidence")
    if shows is not None:
        line += f"; {reference} shows that evidence in {100 * shows:.0f} % of them"
    elif relies["count"] == 0:
        line += f"; nothing for {reference} to show"
    return line


# ---- the command ------------------------------------------------------------------------------------------------


def _selected(record: dict, select: str) -> bool:
    return select == "all" or (record["pred"] is not None and record["pred"] == record["label"])


def _display(tensor: np.ndarray, mean, std) -> np.ndarray:
    """uint8 [S, S]: a (normalised) model input as the radiograph it shows (its first channel)."""
    values = (tensor[0] * std[0] + mean[0]) * 255.0
    return np.clip(values + 0.5, 0, 255).astype(np.uint8)


class _Examples:
    """The `top` most confident correctly classified images seen so far (ties: the smaller id), with what the
    examples figure shows of them — kept as the pass goes, so only `top` images' copies are ever held."""

    def __init__(self, top: int, reference: str, mean, std) -> None:
        self.top, self.reference, self.mean, self.std = top, reference, mean, std
        self.kept: list[tuple[tuple[float, str], dict]] = []

    def offer(self, copies: Copies, record: dict) -> None:
        if record["error"] is not None or record["p"] is None or record["pred"] != record["label"]:
            return
        key = (-record["confidence"], record["image_id"])
        if len(self.kept) >= self.top and key >= self.kept[-1][0]:
            return
        at = {}
        for i, kind in enumerate(copies.kinds):
            at.setdefault(kind, i)  # the first control: the one outlined

        def shown(kind, name=None):
            return _display(copies.tensors[at[(kind, name)]], self.mean, self.std)

        p = record["p"]
        model_pixels = copies.result.model_pixels
        panels = [("original", model_pixels if model_pixels.ndim == 2 else model_pixels[..., 0], p["original"])]
        panels.append(("lesion removed", shown("lesion_removed"), p["lesion_removed"]))
        if copies.controls:
            panels.append(("control removed", shown("control_removed"), p["control_removed"]))
        panels.append(("lesion only", shown("lesion_only"), p["lesion_only"]))
        panels.append(
            (
                f"{self.reference}\nregion removed",
                shown("cam_removed", self.reference),
                p["cam_removed"][self.reference],
            )
        )
        row = {
            "title": f"{record['image_id']}\n{record['label']}, p({record['target']})",
            "panels": panels,
            "lesion": copies.lesion,
            "control": copies.controls[0] if copies.controls else None,
            "cam_region": copies.cam_regions[self.reference],
        }
        self.kept = sorted([*self.kept, (key, row)], key=lambda kept: kept[0])[: self.top]

    def rows(self) -> list[dict]:
        return [row for _, row in self.kept]


def examine_items(
    engine: Engine,
    items: list[ImageItem],
    settings: EvidenceSettings,
    names: list[str],
    examples: _Examples | None = None,
    cache=None,
) -> list[dict]:
    """One engine pass over the items; each image's copies are built in threads beside it (from the same decode)
    and run through the model in the main thread — the engine's hooks are never in use then. Records in item
    order."""
    records: list[dict] = []
    pending: deque = deque()

    def fail(result: Explanation):
        return lambda reason: Copies(result, _record(result, engine.class_names, reason))

    def build(result: Explanation) -> Copies:
        raise_if_interrupted()
        where = result.item.annotation or result.item.path
        return per_image(lambda: build_copies(result, engine, settings, names), fail(result), where)

    def finish(copies: Copies) -> None:
        record = per_image(
            lambda: score_copies(copies, engine, settings, names),
            lambda reason: {**copies.record, "error": reason},
            copies.result.item.path,
        )
        if examples is not None:
            examples.offer(copies, record)
        records.append(record)

    with ThreadPoolExecutor(max_workers=BUILDERS, thread_name_prefix="evidence-copies") as builders:

        def each(result: Explanation) -> None:
            pending.append(builders.submit(build, result))
            while pending and (pending[0].done() or len(pending) > 2 * BUILDERS):
                finish(pending.popleft().result())

        try:
            explain_items(
                engine,
                items,
                target=settings.target,
                quiet=settings.quiet,
                description=f"evidence ({len(names)} configuration(s), {settings.controls} controls)",
                each=each,
                cache=cache,
            )
            while pending:
                finish(pending.popleft().result())
        except BaseException:
            builders.shutdown(wait=False, cancel_futures=True)
            raise
    return records


def make_engine(settings: EvidenceSettings) -> Engine:
    """The engine of the configurations asked for (by default the reference configuration only)."""
    checkpoint = open_checkpoint(settings)
    methods = settings.methods or [settings.method]
    configs, notes = resolve_configurations(methods, settings.layers or [checkpoint.target_layer_name], checkpoint)
    for note in notes:
        warn(note, settings.quiet)
    option = "--layers" if settings.layers not in (None, "auto") else "the layers chosen automatically"
    return open_engine(settings, checkpoint, configs, layer_option=option)


def examine(settings: EvidenceSettings, engine: Engine, outputs, shard: Shard = WHOLE) -> Part:
    """Every copy of the shard's annotated images through the model: the part `finish` summarises (with the
    shard's candidates for the examples figure)."""
    checkpoint = engine.checkpoint
    names = [c.name for c in engine.configs]
    default = f"{settings.method}@{checkpoint.target_layer_name}"
    reference, notes = resolve_reference(settings.reference, default, checkpoint, names)
    for note in notes:
        warn(note, settings.quiet)
    items = load_split(settings, engine.class_names)
    chosen = shard.take(with_positions(annotated(items)), settings.batch_size)
    examples = _Examples(settings.top, reference, checkpoint.mean, checkpoint.std)
    records = examine_items(
        engine, [item for _, item in chosen], settings, names, examples, open_cache(settings, engine)
    )
    records = [{**record, "position": position} for (position, _), record in zip(chosen, records, strict=True)]
    arrays, candidates = {}, []
    by_id = {r["image_id"]: r["position"] for r in records}
    for key, row in examples.kept:
        position = by_id[key[1]]
        for k, (_, pixels, _) in enumerate(row["panels"]):
            arrays[f"ex_{position}_panel_{k}"] = pixels
        for mask in ("lesion", "control", "cam_region"):
            if row[mask] is not None:
                arrays[f"ex_{position}_{mask}"] = row[mask]
        panels = [[name, p] for name, _, p in row["panels"]]
        candidates.append({"position": position, "key": list(key), "title": row["title"], "panels": panels})
    context = {
        "checkpoint": checkpoint_info(engine),
        "names": names,
        "methods": settings.methods or [settings.method],
        "reference": reference,
        "images_in_split": len(items),
        "annotated_images": len(annotated(items)),
    }
    return Part("evidence", settings.part_settings(), context, records, arrays, {"examples": candidates}, shard)


def _example_rows(part: Part, top: int) -> list[dict]:
    """The examples figure's rows: the `top` most confident correct images of all the shards' candidates."""
    chosen = sorted(part.extra.get("examples", []), key=lambda c: (c["key"][0], c["key"][1]))[:top]
    rows = []
    for candidate in chosen:
        position = candidate["position"]
        panels = [(name, part.arrays[f"ex_{position}_panel_{k}"], p) for k, (name, p) in enumerate(candidate["panels"])]
        rows.append(
            {
                "title": candidate["title"],
                "panels": panels,
                **{mask: part.arrays.get(f"ex_{position}_{mask}") for mask in ("lesion", "control", "cam_region")},
            }
        )
    return rows


def finish(part: Part, settings: EvidenceSettings, outputs) -> EvidenceOutcome:
    """The report of a part — one run's, or the shards' joined — with its figures: a pure function of the part."""
    from btxrd_cam.render import evidence_examples, evidence_figure

    context = part.context
    names, reference = context["names"], context["reference"]
    records = [{k: v for k, v in r.items() if k != "position"} for r in part.records]
    failed = [r for r in records if r["error"] is not None]
    evaluated = [r for r in records if r["error"] is None and _selected(r, settings.select)]
    summary, configurations, groups = summarise(evaluated, names)
    report = {
        "schema_version": SCHEMA_VERSION,
        "command": "evidence",
        "settings": {
            "split": settings.split,
            "subset": settings.subset,
            "methods": context["methods"],
            "layers": settings.layers,
            "reference": reference,
            "fill": settings.fill,
            "margin": settings.margin,
            "controls": settings.controls,
            "delta": settings.delta,
            "target": settings.target,
            "select": settings.select,
            "seed": settings.seed,
            "resolution": settings.resolution,
            "region": settings.region,
            "data_root": str(settings.data_root),
            "splits_dir": str(settings.splits_dir),
        },
        "checkpoint": context["checkpoint"],
        "fill": fill_description(settings.fill),
        "target": settings.target,
        "delta": settings.delta,
        "reference": reference,
        "images_in_split": context["images_in_split"],
        "annotated_images": context["annotated_images"],
        "evaluated": len(evaluated),
        "excluded_by_select": len(records) - len(failed) - len(evaluated),
        "summary": summary,
        "configurations": configurations,
        "breakdowns": groups,
        "verdict": verdict(summary, configurations, reference),
        "records": evaluated,
        "failed": failed,
    }
    text = write_report(report, outputs.path(EVIDENCE_REPORT))
    if context["annotated_images"]:
        evidence_figure(report, names, outputs.path(FIGURE_NAME))
        evidence_examples(_example_rows(part, settings.top), outputs.path(EXAMPLES_NAME))
    if report["verdict"]:
        show(f"[bold]evidence:[/] {report['verdict']}", settings.quiet)
    return EvidenceOutcome(report, text, len(failed), empty=not context["annotated_images"])


def run_evidence(settings: EvidenceSettings) -> EvidenceOutcome:
    """One run: examine every image (or this shard's, for `merge`; or every shard on Ray), then finish."""
    return complete("evidence", settings, output_folder(settings))


def fill_description(fill: str) -> dict:
    """The fill and its parameters, for the report."""
    from btxrd_cam.faithfulness import BLUR_SIGMA

    if fill == "impute":
        return {"name": "impute", "method": "ROAD noisy linear imputation (Rong et al. 2022)", "noise_std": 0.01}
    if fill == "blur":
        return {"name": "blur", "method": "Gaussian blur of the image", "sigma_fraction_of_side": BLUR_SIGMA}
    return {"name": "mean", "method": "each channel's mean over the image"}
