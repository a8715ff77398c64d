"""What the commands write into a results folder, by name: the one place the writers and the HTML report agree on.

Light on purpose (no numpy, no torch): `btxrd-cam report` reads a folder without loading a model.
"""

from __future__ import annotations

import hashlib
import re

GALLERY_REPORT = "gallery.json"
ANNOTATION_REPORT = "annotation_report.json"
COMPARISON_REPORT = "comparison_report.json"
SANITY_REPORT = "sanity_report.json"
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
