"""What the commands write into a results folder, by name, and how: the bottom floor of every output.

The one place the writers and the HTML report agree on file names, and the one place files are written
(`write_atomic`: temp file + rename). Light on purpose (no numpy, no torch): `btxrd-cam report` reads a folder
without loading a model, and the cache writes through here without importing the engine.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from btxrd_cam.errors import raise_if_interrupted

GALLERY_REPORT = "gallery.json"
ANNOTATION_REPORT = "annotation_report.json"
COMPARISON_REPORT = "comparison_report.json"
SANITY_REPORT = "sanity_report.json"
EVIDENCE_REPORT = "evidence_report.json"
AUDIT_REPORT = "audit_report.json"
HTML_REPORT = "report.html"

CACHE_FOLDER = ".cache"  # the engine's memory (cache.py): re-runs skip the model; safe to delete
OVERLAY_FOLDER = "images"  # per-image overlays of annotate-iou and compare
OVERLAY_LONG_SIDE = 384


def overlay_name(image_id: str) -> str:
    """The file name of an image's overlay: its id when that is a safe file name, else the safe characters and a
    short hash (so that `../x` or `<script>` can neither escape the folder nor collide)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", image_id).strip(".") or "image"
    if safe != image_id:
        safe = f"{safe[:80]}-{hashlib.sha256(image_id.encode()).hexdigest()[:10]}"
    return f"{safe}.jpg"


def _umask() -> int:
    """The process's umask, read without changing it (os.umask can only be read by setting it, which would race
    with other threads creating files)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write a whole file or nothing: a temp file in the same directory, then an atomic rename. The file gets the
    permissions a plain write would (0666 less the umask: 0644 under the usual 022), not the temp file's 0600, so
    a shared results folder stays readable; concurrent writers each rename a whole file into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        raise_if_interrupted()  # an interrupted run replaces nothing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
