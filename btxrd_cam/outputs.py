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
from collections.abc import Iterable
from pathlib import Path

from btxrd_cam.errors import InputError, UsageError, raise_if_interrupted

GALLERY_REPORT = "gallery.json"
ANNOTATION_REPORT = "annotation_report.json"
COMPARISON_REPORT = "comparison_report.json"
SANITY_REPORT = "sanity_report.json"
EVIDENCE_REPORT = "evidence_report.json"
AUDIT_REPORT = "audit_report.json"
HTML_REPORT = "report.html"

CACHE_FOLDER = ".cache"  # the engine's memory (cache.py): re-runs skip the model; safe to delete
OVERLAY_FOLDER = "images"  # per-image overlays: images/annotate-iou/<id>.jpg, images/compare/<configuration>/<id>.jpg
OVERLAY_LONG_SIDE = 384
UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")


def safe_name(text: str) -> str:
    """A file name from any text (an image id, a class name, a configuration): the text itself when it is made of
    letters, digits and `. _ @ + -` only and is not `.`/`..`-like, else its safe characters and a short hash of the
    whole text — so that `../x`, `x/../../y` or `<script>` can neither leave the folder nor collide with another."""
    text = str(text)
    safe = UNSAFE.sub("_", text).strip(".") or "unnamed"
    if safe != text:
        safe = f"{safe[:80]}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
    return safe


def overlay_name(image_id: str) -> str:
    """The file name of an image's overlay (see safe_name)."""
    return f"{safe_name(image_id)}.jpg"


def overlay_folder(command: str, configuration: str | None = None) -> str:
    """Where a command's per-image overlays go, relative to the results folder: each command (and, for compare,
    its configuration) its own folder, so the report shows each command's overlays beside its own numbers."""
    parts = [OVERLAY_FOLDER, command] + ([safe_name(configuration)] if configuration else [])
    return "/".join(parts)


class OutputFolder:
    """The one place that decides where a command's files go: every path is `root` joined with names that cannot
    climb out of it (no `..`, no separators, no absolute parts), checked again after resolving symlinks, and never
    one of the protected input files. Anything else is refused (InputError: a per-image failure)."""

    def __init__(self, root: Path, protected: Iterable[Path] = ()) -> None:
        self.root = Path(root)
        self.protected = {Path(p).resolve() for p in protected}

    def path(self, *names: str) -> Path:
        parts = [part for name in names for part in str(name).split("/")]
        for part in parts:
            if part in ("", ".", "..") or "\\" in part or "\x00" in part:
                raise InputError(self.root / "/".join(parts), "not a file name under --out: refused")
        candidate = self.root.joinpath(*parts)
        resolved = candidate.resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise InputError(candidate, f"resolves outside --out ({self.root}): refused")
        if resolved in self.protected:
            raise InputError(candidate, "would overwrite an input file: refused")
        return candidate

    def mkdir(self) -> OutputFolder:
        self.root.mkdir(parents=True, exist_ok=True)
        return self


def open_output_folder(
    out: Path,
    data: Iterable[Path] = (),
    inputs: Iterable[Path] = (),
    force: bool = False,
) -> OutputFolder:
    """The output folder of a command, checked before any work starts: `out` may lie neither inside one of the
    `data` folders (the data root, the splits) nor be the folder of one of the `inputs` — outputs there could
    overwrite radiographs, and the next run would read them back — unless `force`; even then no input file is ever
    overwritten (they are protected). UsageError (exit 2) otherwise."""
    resolved = Path(out).resolve()
    inputs = [Path(p) for p in inputs]
    if not force:
        for folder in data:
            folder = Path(folder)
            if folder.exists() and resolved.is_relative_to(folder.resolve()):
                raise UsageError(
                    f"--out: {out} lies inside the data ({folder}): outputs could overwrite or be read back as "
                    "images; choose another folder (or pass --force-out: no input file is overwritten even then)"
                )
        folders = {p.resolve().parent for p in inputs}
        if resolved in folders:
            raise UsageError(
                f"--out: {out} is the folder of an input image: outputs could overwrite inputs; choose another "
                "folder (or pass --force-out: no input file is overwritten even then)"
            )
    return OutputFolder(out, protected=inputs)


def output_folder(settings, inputs=()) -> OutputFolder:
    """The command's output folder (created), checked before any work: not inside the data root or the splits, not
    the folder of an input image, unless --force-out (and never over an input file); UsageError otherwise."""
    data = [getattr(settings, name, None) for name in ("data_root", "splits_dir")]
    folder = open_output_folder(settings.out, [d for d in data if d is not None], inputs, settings.force_out)
    return folder.mkdir()


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
