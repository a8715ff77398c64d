"""Reports and record files: JSON/JSONL/CSV serialisation, written atomically (temp file + rename).

Deterministic: the same records give byte-identical output (floats rounded to 6 decimals, no timestamps).
Not for: computing anything that goes into them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from btxrd_cam.outputs import write_atomic

if TYPE_CHECKING:
    from btxrd_cam.engine import Explanation

SCHEMA_VERSION = 1


def clean(value, digits: int | None = 6):
    """Plain JSON types: numpy scalars/arrays unwrapped, floats rounded to `digits` decimals (None: exact, for
    parts that are summarised later), NaN → None."""
    if isinstance(value, BaseModel):
        return clean(value.model_dump(), digits)
    if isinstance(value, dict):
        return {str(k): clean(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v, digits) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist(), digits)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            return None
        return value if digits is None else round(value, digits)
    if isinstance(value, Path):
        return str(value)
    return value


def to_json(value, indent: int | None = 2, digits: int | None = 6) -> str:
    return json.dumps(clean(value, digits), indent=indent, ensure_ascii=False, allow_nan=False) + "\n"


def write_report(report: BaseModel | dict, path: Path) -> str:
    """Write a JSON report atomically and return its text (the CLI prints the same text to stdout). The report is
    first checked against its command's model (schemas.py), the one `btxrd-cam report` reads it with."""
    from btxrd_cam.schemas import validated

    text = to_json(report)
    validated(json.loads(text), json.loads(text)["command"])
    write_atomic(path, text)
    return text


def prediction_record(result: Explanation, class_names: list[str]) -> dict:
    """The per-image record of `infer`: image_id, path, label, pred, confidence, probs, source (what a DICOM says
    about itself: modality, window used, …; null for other formats), warnings, error."""
    ok = result.ok and result.probs is not None
    return {
        "image_id": result.item.image_id,
        "path": str(result.item.path),
        "label": result.item.label,
        "pred": class_names[result.pred] if ok else None,
        "confidence": float(result.probs[result.pred]) if ok else None,
        "probs": {name: float(p) for name, p in zip(class_names, result.probs, strict=True)} if ok else None,
        "source": result.source,
        "warnings": list(result.warnings),
        "error": result.error,
    }


def format_records(records: list[dict], fmt: str, class_names: list[str]) -> str:
    """Records as JSONL (one object a line), one JSON array, or CSV with `p_<Class>` columns."""
    if fmt == "jsonl":
        return "".join(to_json(r, indent=None) for r in records)
    if fmt == "json":
        return to_json(records)
    buffer = io.StringIO()
    columns = ["image_id", "path", "label", "pred", "confidence", *[f"p_{c}" for c in class_names], "error"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for record in clean(records):
        row = {k: v for k, v in record.items() if k != "probs"}
        for name in class_names:
            row[f"p_{name}"] = (record.get("probs") or {}).get(name)
        writer.writerow({k: "" if v is None else _csv_cell(v) for k, v in row.items()})
    return buffer.getvalue()


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value):
    """A text cell that a spreadsheet would run as a formula (`=HYPERLINK(…)`, `+`, `-`, `@`, a tab or carriage
    return first) gets a leading apostrophe, as OWASP recommends; numbers pass as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def emit(text: str, output: Path | None) -> None:
    """Data goes to a file (atomically) when asked, else to stdout."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_atomic(output, text)
