import json
import os

import numpy as np
import pytest

from btxrd_cam.outputs import write_atomic
from btxrd_cam.reports import clean, format_records, to_json


def test_clean_makes_plain_deterministic_json():
    value = {
        "a": np.float32(0.1234567891),
        "b": np.int64(3),
        "c": np.array([1.0, np.nan]),
        "d": np.bool_(True),
    }
    assert clean(value) == {"a": 0.123457, "b": 3, "c": [1.0, None], "d": True}
    assert to_json(value) == to_json(dict(value))


def test_write_atomic_leaves_no_partial_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    write_atomic(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_record_formats():
    records = [
        {
            "image_id": "a",
            "path": "a.png",
            "label": None,
            "pred": "B",
            "confidence": 0.75,
            "probs": {"A": 0.25, "B": 0.75},
            "error": None,
        },
        {
            "image_id": "b",
            "path": "b.png",
            "label": None,
            "pred": None,
            "confidence": None,
            "probs": None,
            "error": "not an image",
        },
    ]
    lines = format_records(records, "jsonl", ["A", "B"]).splitlines()
    assert [json.loads(line)["image_id"] for line in lines] == ["a", "b"]
    assert json.loads(format_records(records, "json", ["A", "B"]))[1]["error"] == "not an image"
    csv_lines = format_records(records, "csv", ["A", "B"]).splitlines()
    assert csv_lines[0] == "image_id,path,label,pred,confidence,p_A,p_B,error"
    assert csv_lines[1] == "a,a.png,,B,0.75,0.25,0.75,"
    assert csv_lines[2] == "b,b.png,,,,,,not an image"
