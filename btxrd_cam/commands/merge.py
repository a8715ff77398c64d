"""`btxrd-cam merge [OUT]`: the shards of each command under `<OUT>/shards/` put back together.

For each command with parts there: check that they make one whole run (the same command, settings, checkpoint, N
and batch size, every K exactly once), join them (records in manifest order), and finish exactly as one unsharded
run finishes — the same function, so the same JSON, byte for byte, and the same figures. Nothing here runs a model
(`finish` reads the few images its figures show, as in one run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from btxrd_cam.console import warn
from btxrd_cam.errors import UsageError
from btxrd_cam.outputs import output_folder
from btxrd_cam.pipeline import command_module
from btxrd_cam.settings import (
    AnnotateSettings,
    CompareSettings,
    EvidenceSettings,
    GallerySettings,
    InferSettings,
    MergeSettings,
    SanitySettings,
    build_settings,
)
from btxrd_cam.shards import check_parts, find_parts, join, read_part

SETTINGS = {
    "annotate-iou": AnnotateSettings,
    "compare": CompareSettings,
    "evidence": EvidenceSettings,
    "gallery": GallerySettings,
    "infer": InferSettings,
    "sanity": SanitySettings,
}


@dataclass
class Merged:
    command: str
    shards: int
    outcome: object


def run_merge(settings: MergeSettings) -> list[Merged]:
    found = find_parts(settings.out)
    if not found:
        raise UsageError(f"OUT: no shards under {settings.out / 'shards'} (run a command with --shard K/N first)")
    unknown = sorted(set(found) - set(SETTINGS))
    if unknown:
        raise UsageError(
            f"OUT: shards of {', '.join(unknown)} under {settings.out / 'shards'}: not a command that shards"
        )
    merged = []
    for command, paths in found.items():
        parts = [read_part(path) for path in paths]
        check_parts(parts, paths)
        values = {**parts[0].settings, "quiet": settings.quiet, "force_out": True}
        if "out" in SETTINGS[command].model_fields:
            values["out"] = settings.out
        command_settings = build_settings(SETTINGS[command], **values)
        outputs = output_folder(command_settings) if "out" in values else None
        outcome = command_module(command).finish(join(parts), command_settings, outputs)
        warn(f"merged {len(parts)} shards of {command}", settings.quiet)
        merged.append(Merged(command, len(parts), outcome))
    return merged


def report_path(out: Path, command: str) -> Path | None:
    from btxrd_cam import outputs

    names = {
        "annotate-iou": outputs.ANNOTATION_REPORT,
        "compare": outputs.COMPARISON_REPORT,
        "evidence": outputs.EVIDENCE_REPORT,
        "gallery": outputs.GALLERY_REPORT,
        "sanity": outputs.SANITY_REPORT,
    }
    return out / names[command] if command in names else None
