"""`btxrd-cam infer`: batch predictions (no CAM) and, with labels, classification metrics.

The upstream `run_inference`: the same checkpoint and manifest give the same predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from btxrd_cam.console import metrics_table, show
from btxrd_cam.data import find_images
from btxrd_cam.engine import Engine
from btxrd_cam.metrics import classification_metrics
from btxrd_cam.outputs import OutputFolder, output_folder
from btxrd_cam.pipeline import checkpoint_info, complete, explain_items, load_split, open_engine
from btxrd_cam.reports import SCHEMA_VERSION, emit, format_records, prediction_record, write_report
from btxrd_cam.settings import InferSettings
from btxrd_cam.shards import WHOLE, Part, Shard


@dataclass
class InferOutcome:
    records: list[dict]
    metrics: dict | None
    failed: int


def label_metrics(records: list[dict], class_names: list[str]) -> dict | None:
    """Classification metrics of the labelled, successfully predicted records (+ the failed images)."""
    labelled = [r for r in records if r["label"] is not None]
    if not labelled:
        return None
    scored = [r for r in labelled if r["error"] is None]
    labels = np.array([class_names.index(r["label"]) for r in scored], dtype=int)
    probs = np.array([[r["probs"][c] for c in class_names] for r in scored], dtype=np.float64)
    metrics = classification_metrics(labels, probs.reshape(len(scored), len(class_names)), class_names)
    metrics["failed_images"] = [
        {"image_id": r["image_id"], "path": r["path"], "error": r["error"]} for r in records if r["error"] is not None
    ]
    return metrics


def make_engine(settings: InferSettings) -> Engine:
    return open_engine(settings)


def examine(settings: InferSettings, engine: Engine, outputs, shard: Shard = WHOLE) -> Part:
    """Predict the shard's images (inputs that name nothing are the first shard's records)."""
    names = engine.class_names
    failures = []
    if settings.inputs:
        items, failures = find_images(settings.inputs)
    else:
        items = load_split(settings, names)
    records = []
    if shard.index == 0:
        for position, (text, reason) in enumerate(failures):
            records.append(
                {
                    "position": position, "image_id": text, "path": text, "label": None, "pred": None,
                    "confidence": None, "probs": None, "source": None, "warnings": [], "error": reason,
                }
            )  # fmt: skip
    chosen = shard.take([(len(failures) + i, item) for i, item in enumerate(items)], settings.batch_size)
    predicted = explain_items(
        engine,
        [item for _, item in chosen],
        cams=False,
        quiet=settings.quiet,
        description="predicting",
        each=lambda result: prediction_record(result, names),
    )
    records += [{**record, "position": position} for (position, _), record in zip(chosen, predicted, strict=True)]
    context = {"checkpoint": checkpoint_info(engine)}
    return Part("infer", settings.part_settings(), context, records, {}, {}, shard)


def finish(part: Part, settings: InferSettings, outputs) -> InferOutcome:
    """The records (JSONL / JSON / CSV on stdout or -o) and the metrics of a part — one run's, or the shards'."""
    names = part.context["checkpoint"]["class_names"]
    records = [{k: v for k, v in r.items() if k != "position"} for r in part.records]
    metrics = label_metrics(records, names)
    if metrics is not None:
        show(metrics_table(metrics), settings.quiet)
        if settings.metrics:
            # the same keys as the metrics of stdout's table, plus what the HTML report needs to recognise the file
            saved = {"schema_version": SCHEMA_VERSION, "command": "infer", "checkpoint": part.context["checkpoint"]}
            saved["settings"] = {"split": settings.split, "subset": settings.subset, "inputs": settings.inputs}
            write_report({**saved, **metrics}, settings.metrics)  # checked against the model report reads it with
    emit(format_records(records, settings.format, names), settings.output)
    return InferOutcome(records, metrics, sum(r["error"] is not None for r in records))


def run_infer(settings: InferSettings) -> InferOutcome:
    """One run: predict every image (or this shard's, for `merge`; or every shard on Ray), then finish."""
    splitting = settings.shard is not None or settings.executor == "ray"
    outputs = output_folder(settings) if splitting else OutputFolder(settings.out)  # infer writes there only then
    return complete("infer", settings, outputs)
