"""Shards: which images a shard takes, and the partial results it leaves for `merge`.

A run is split by position in the manifest, batch by batch: the images the run explains are dealt out in batches of
`--batch-size` consecutive images, and shard K of N takes the batches whose index is ≡ K (mod N) — stable whatever
the number of workers, and the same images a shard of any later re-run takes. Whole batches, not single images:
a model's floating-point results depend in their last bits on which images share its batch (measured: 1e-10 in the
logits, enough to flip a pixel at a threshold), so only an image explained beside the same images gives the same
numbers — and a merged report byte for byte the same as one run's. With `--batch-size 1` the dealing is image by
image (positions ≡ K mod N). A shard computes what each
of its images needs (the command's records, and the arrays its summary and figures use) and writes one *part* under
`<out>/shards/<command>/`: `K-of-N.json` (schema version, command, settings, context, records) and `K-of-N.npz`
(arrays), both atomically. No summary, no figure: those are computed from all the parts at merge time, by the very
function an unsharded run calls on its single part — so the two paths cannot diverge.

Not for: computing records (commands/) or running workers (executors.py).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from btxrd_cam.errors import UsageError, one_line
from btxrd_cam.outputs import OutputFolder, write_atomic

SHARD_FORMAT = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
SHARDS_FOLDER = "shards"
PART_VERSION = 1


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 ≤ index < count)."""

    index: int
    count: int

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def take(self, items: list, batch_size: int = 1) -> list:
        """The shard's items: those of the batches (`batch_size` consecutive items) whose index ≡ index (mod count)."""
        batches = [items[i : i + batch_size] for i in range(0, len(items), max(1, batch_size))]
        return [item for b, batch in enumerate(batches) if b % self.count == self.index for item in batch]


WHOLE = Shard(0, 1)


def parse_shard(text: str) -> Shard:
    """`K/N` → Shard; ValueError saying what is allowed (`3/3`, `-1/2`, `a/b` are refused)."""
    match = SHARD_FORMAT.fullmatch(str(text))
    allowed = "must be K/N with whole numbers 0 ≤ K < N (e.g. 0/4)"
    if not match:
        raise ValueError(allowed)
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 0 <= index < count:
        raise ValueError(allowed)
    return Shard(index, count)


@dataclass
class Part:
    """What one shard (or a whole run) computed: records (each with its `position` in the manifest), arrays (`r_…`:
    a row per record, in the records' order; others named uniquely), extras (lists, gathered at merge), and what the
    summary needs to know about the run (`context`: checkpoint, configurations, …). `settings` is the command's
    settings as JSON; `shard` which part of the run this is, dealt in batches of `batch_size` images."""

    command: str
    settings: dict
    context: dict
    records: list[dict]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    shard: Shard = WHOLE
    batch_size: int | None = None


def write_part(part: Part, out: Path) -> Path:
    """Write a part under `<out>/shards/<command>/` (JSON and NPZ, each atomically); returns the JSON's path."""
    folder = OutputFolder(out)
    base = folder.path(SHARDS_FOLDER, part.command, part.shard.name)
    payload = {
        "part_version": PART_VERSION,
        "command": part.command,
        "shard": {"index": part.shard.index, "count": part.shard.count, "batch_size": part.batch_size},
        "settings": part.settings,
        "context": part.context,
        "extra": part.extra,
        "records": part.records,
    }
    from btxrd_cam.reports import to_json

    buffer = io.BytesIO()
    np.savez(buffer, **part.arrays)
    write_atomic(base.with_suffix(".npz"), buffer.getvalue())
    return write_atomic(
        base.with_suffix(".json"), to_json(payload, indent=None, digits=None)
    )  # exact: summarised later


def read_part(path: Path) -> Part:
    """A part written by write_part; UsageError naming the file for anything else."""
    try:
        payload = json.loads(Path(path).read_bytes())
        if not isinstance(payload, dict):
            raise ValueError("not an object")
        version = payload.get("part_version")
        if isinstance(version, int) and version > PART_VERSION:
            raise UsageError(
                f"merge: {path}: written by a newer btxrd-cam (part version {version}; this one reads up to "
                f"{PART_VERSION}): merge with the version that wrote it"
            )
        if not isinstance(version, int) or version < 1:
            raise ValueError(f"part version {one_line(version, 20)} is not one this btxrd-cam reads")
        shard = Shard(int(payload["shard"]["index"]), int(payload["shard"]["count"]))
        arrays = {}
        npz = Path(path).with_suffix(".npz")
        with np.load(npz, allow_pickle=False) as data:
            arrays = {name: np.array(data[name]) for name in data.files}
        return Part(
            command=str(payload["command"]),
            settings=dict(payload["settings"]),
            context=dict(payload["context"]),
            records=list(payload["records"]),
            arrays=arrays,
            extra=dict(payload.get("extra") or {}),
            shard=shard,
            batch_size=payload["shard"].get("batch_size"),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"merge: {path}: not a readable shard ({one_line(exc, 120)})") from None


def find_parts(out: Path) -> dict[str, list[Path]]:
    """{command: [part JSON paths]} under `<out>/shards/`."""
    root = Path(out) / SHARDS_FOLDER
    if not root.is_dir():
        return {}
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        parts = sorted(folder.glob("*-of-*.json"))
        if parts:
            found[folder.name] = parts
    return found


def check_parts(parts: list[Part], paths: list[Path]) -> None:
    """The parts must make one whole run: the same command, settings, checkpoint and N, every K exactly once;
    UsageError (exit 2) naming the files otherwise."""
    first, where = parts[0], paths[0].name
    problems = []
    for part, path in zip(parts, paths, strict=True):
        if part.command != first.command:
            problems.append(f"{path.name} is of {part.command}, {where} of {first.command}")
        if part.shard.count != first.shard.count:
            problems.append(f"{path.name} is one of {part.shard.count} shards, {where} one of {first.shard.count}")
        if part.batch_size != first.batch_size:  # other batches deal other images to shard K
            problems.append(
                f"{path.name} was dealt in batches of {part.batch_size} (--batch-size), {where} of {first.batch_size}"
            )
        if part.settings != first.settings:
            keys = sorted(
                k for k in set(part.settings) | set(first.settings) if part.settings.get(k) != first.settings.get(k)
            )
            problems.append(f"{path.name} was run with other settings than {where} ({', '.join(keys)})")
        if part.context.get("checkpoint", {}).get("sha256") != first.context.get("checkpoint", {}).get("sha256"):
            problems.append(f"{path.name} was run with another checkpoint than {where}")
    seen: dict[int, str] = {}
    for part, path in zip(parts, paths, strict=True):
        if part.shard.index in seen:
            problems.append(f"shard {part.shard.index} twice: {seen[part.shard.index]} and {path.name}")
        seen[part.shard.index] = path.name
    missing = [k for k in range(first.shard.count) if k not in seen]
    if missing:
        problems.append(f"shard(s) {', '.join(map(str, missing))} of {first.shard.count} missing")
    if problems:
        raise UsageError(f"merge: {first.command}: " + "; ".join(problems))


def join(parts: list[Part]) -> Part:
    """One part of the whole run from its shards: records in manifest order, with the per-record arrays (named
    `r_…`, a row per record) in the same order; other arrays (named uniquely by the shard that made them) and extras
    gathered."""
    parts = sorted(parts, key=lambda p: p.shard.index)
    records = [r for p in parts for r in p.records]
    order = sorted(range(len(records)), key=lambda i: records[i]["position"])
    arrays: dict[str, np.ndarray] = {}
    for name in sorted({n for p in parts for n in p.arrays}):
        if name.startswith("r_"):
            stacked = np.concatenate([p.arrays[name] for p in parts])
            arrays[name] = stacked[order]
        else:
            arrays[name] = next(p.arrays[name] for p in parts if name in p.arrays)
    extra: dict = {}
    for part in parts:
        for key, value in part.extra.items():
            extra.setdefault(key, []).extend(value if isinstance(value, list) else [value])
    return Part(parts[0].command, parts[0].settings, parts[0].context, [records[i] for i in order], arrays, extra)
