"""`btxrd-cam report`: one browsable, offline HTML page of a results folder — every image, every number.

A renderer of reports, not a command that explains: it reads the JSON the other commands wrote there (gallery,
annotate-iou, compare, sanity, and an `infer --metrics` file), never loads a model or decodes an image, and writes
one page from the Jinja2 template in `btxrd_cam/templates/` (autoescaped; CSS and JS inline). Images are linked
relative to the page, or embedded with `--self-contained`. A malformed report, or one of a newer schema, becomes
a note on the page; the rest renders.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from btxrd_cam import __version__
from btxrd_cam.errors import UsageError, one_line
from btxrd_cam.outputs import (
    ANNOTATION_REPORT,
    AUDIT_REPORT,
    COMPARISON_REPORT,
    EVIDENCE_REPORT,
    GALLERY_REPORT,
    HTML_REPORT,
    SANITY_REPORT,
    overlay_folder,
    overlay_name,
    write_atomic,
)
from btxrd_cam.reports import SCHEMA_VERSION
from btxrd_cam.schemas import validated
from btxrd_cam.settings import ReportSettings

REPORT_FILES = {
    "gallery": GALLERY_REPORT,
    "annotation": ANNOTATION_REPORT,
    "comparison": COMPARISON_REPORT,
    "sanity": SANITY_REPORT,
    "evidence": EVIDENCE_REPORT,
    "audit": AUDIT_REPORT,
}
COMMANDS = {
    "gallery": "gallery",
    "annotation": "annotate-iou",
    "comparison": "compare",
    "sanity": "sanity",
    "evidence": "evidence",
    "audit": "audit",
}
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
TABLE_METRICS = ("iou", "dice", "pointing_game", "pxap")


@dataclass
class ReportOutcome:
    path: Path
    sections: list[str]
    notes: list[str]


def _read(path: Path, command: str | None) -> tuple[dict | None, str | None]:
    """A report's contents, or why it cannot be shown."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"{path.name}: not readable JSON ({one_line(exc, 120)})"
    if not isinstance(data, dict):
        return None, f"{path.name}: not a btxrd-cam report (a JSON {type(data).__name__})"
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        return None, f"{path.name}: not a btxrd-cam report (no schema_version)"
    if version > SCHEMA_VERSION:
        return None, (
            f"{path.name}: schema version {version} is newer than this btxrd-cam ({__version__}) reads "
            f"({SCHEMA_VERSION}); upgrade btxrd-cam to show it"
        )
    if command and data.get("command") != command:
        return None, f"{path.name}: written by {one_line(repr(data.get('command')), 40)}, not {command!r}"
    try:
        return validated(data, command or "infer"), None
    except ValueError as exc:
        return None, f"{path.name}: not the shape of a {command or 'metrics'} report ({one_line(exc, 160)})"


def _metrics_files(folder: Path) -> list[Path]:
    """JSON files an `infer --metrics` run saved in the folder (recognised by their contents)."""
    found = []
    for path in sorted(folder.glob("*.json")):
        if path.name in REPORT_FILES.values() or path.stat().st_size > 2**20:
            continue
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(data, dict) and (
            data.get("command") == "infer" or {"per_class", "confusion_matrix"} <= set(data)
        ):
            found.append(path)
    return found


def read_reports(folder: Path) -> tuple[dict[str, dict], list[str]]:
    """The reports present in the folder and a note for each that cannot be shown; UsageError when there is none."""
    if not folder.is_dir():
        raise UsageError(
            f"RESULTS_DIR: got {folder}; no such directory (run gallery, annotate-iou, compare or sanity first)"
        )
    reports, notes = {}, []
    for key, name in REPORT_FILES.items():
        path = folder / name
        if path.is_file():
            data, note = _read(path, COMMANDS[key])
            if data is not None:
                reports[key] = data
            else:
                notes.append(note)
    metrics = _metrics_files(folder)
    if metrics:
        data = json.loads(metrics[0].read_bytes())
        version = data.get("schema_version", SCHEMA_VERSION)  # metrics files of btxrd-cam 0.1 carry none
        if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
            notes.append(f"{metrics[0].name}: schema version {one_line(version, 20)} is not one this btxrd-cam reads")
        else:
            try:
                reports["classification"] = {**validated(data, "infer"), "file": metrics[0].name}
            except ValueError as exc:
                notes.append(f"{metrics[0].name}: not the shape of a metrics file ({one_line(exc, 160)})")
    if not reports and not notes:
        looked = ", ".join(REPORT_FILES.values())
        raise UsageError(f"RESULTS_DIR: no report in {folder} (looked for {looked} and an `infer --metrics` JSON)")
    return reports, notes


class _Links:
    """Where the page finds a file of the results folder: a path relative to the page, or a data: URI. Only files
    that lie under the results folder once symlinks are resolved are linked or embedded: a name from a report that
    points elsewhere (an absolute path, `../`, a symlink out of the folder) becomes a note, never a link — a page
    meant to be sent must not carry a local file (`/proc/self/environ`, a key) that happened to be named."""

    def __init__(self, folder: Path, page: Path, embed: bool) -> None:
        self.folder, self.page_dir, self.embed = folder, page.parent, embed
        self.root = folder.resolve()
        self.notes: list[str] = []

    def __call__(self, name: str | None) -> str | None:
        if not name or not isinstance(name, str):
            return None
        path = self.folder / name
        try:
            inside = path.resolve().is_relative_to(self.root)
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a name with a NUL
            inside = False
        if not inside:
            note = f"{one_line(name, 80)}: lies outside the results folder: not linked"
            if note not in self.notes:
                self.notes.append(note)
            return None
        if not path.is_file():
            return None
        if self.embed:
            mime = MIME.get(path.suffix.lower(), "application/octet-stream")
            return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
        return Path(os.path.relpath(path, self.page_dir)).as_posix()


def _evidence_columns(reports: dict) -> dict[str, dict]:
    """Per image id, evidence's drop with the lesion and with the control removed, and whether it relies on the
    lesion (for the per-image table)."""
    columns = {}
    for record in (reports.get("evidence") or {}).get("records", []):
        drop = record.get("drop") or {}
        columns[str(record.get("image_id"))] = {
            "drop_lesion": drop.get("lesion_removed"),
            "drop_control": drop.get("control_removed"),
            "relies": record.get("relies_on_lesion"),
        }
    return columns


def _rows(reports: dict, links: _Links) -> tuple[list[dict], str | None]:
    """The per-image table: annotate-iou's records and failures, with annotate-iou's overlays (else compare's, at
    its reference, with compare's overlays; else evidence's), and evidence's columns where evidence examined the
    image."""
    if "annotation" in reports:
        report, source = reports["annotation"], "annotate-iou"
        read = lambda r, m: r.get(m)  # noqa: E731
        overlays = overlay_folder("annotate-iou")
    elif "comparison" in reports:
        report, source = reports["comparison"], f"compare ({reports['comparison'].get('reference')})"
        reference = report.get("reference")
        read = lambda r, m: ((r.get("metrics") or {}).get(reference) or {}).get(m)  # noqa: E731
        overlays = overlay_folder("compare", str(reference))
    elif "evidence" in reports:
        report, source = reports["evidence"], "evidence"
        read = lambda r, m: None  # noqa: E731
        overlays = None
    else:
        return [], None
    records = report.get("records", []) + report.get("failed", [])
    evidence = _evidence_columns(reports)
    rows = []
    for record in records:
        image_id = str(record.get("image_id"))
        rows.append(
            {
                "image_id": image_id,
                "label": record.get("label"),
                "pred": record.get("pred"),
                "confidence": record.get("confidence"),
                "subtype": record.get("subtype"),
                "metrics": {m: read(record, m) for m in TABLE_METRICS},
                "evidence": evidence.get(image_id),
                "error": record.get("error"),
                "outcome": "failed" if record.get("error") else
                "correct" if record.get("pred") == record.get("label") else "missed",
                "overlay": links(f"{overlays}/{overlay_name(image_id)}") if overlays else None,
            }
        )  # fmt: skip
    rows.sort(key=lambda r: r["image_id"])
    return rows, source


def _header(reports: dict) -> dict:
    """Checkpoint and split, from the first report that names them."""
    for key in ("annotation", "comparison", "evidence", "sanity", "gallery", "classification"):
        if key in reports and isinstance(reports[key].get("checkpoint"), dict):
            settings = reports[key].get("settings") or {}
            return {
                "checkpoint": reports[key]["checkpoint"],
                "split": settings.get("split"),
                "subset": settings.get("subset"),
            }
    empty = {"name": None, "sha256": None, "arch": None, "image_size": None, "target_layer": None, "class_names": []}
    return {"checkpoint": empty, "split": None, "subset": None}


def build_page(folder: Path, page: Path, reports: dict, notes: list[str], embed: bool) -> str:
    """The page's HTML; a reference that cannot be linked adds its note to `notes` (the page is drawn again then,
    so that the notes at its top list it)."""
    links = _Links(folder, page, embed)
    html = _render(folder, page, reports, notes, links)
    if links.notes:
        notes.extend(note for note in links.notes if note not in notes)
        html = _render(folder, page, reports, notes, _Links(folder, page, embed))
    return html


def _render(folder: Path, page: Path, reports: dict, notes: list[str], links: _Links) -> str:
    import jinja2

    rows, rows_source = _rows(reports, links)
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("btxrd_cam", "templates"),
        autoescape=True,  # every string from a file is escaped: ids, class names, paths, errors, settings
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    environment.filters["num"] = lambda v, digits=3: "—" if v is None else f"{v:.{digits}f}"
    environment.filters["ci"] = lambda c: "" if not c else f"[{c[0]:.3f}, {c[1]:.3f}]"
    template = environment.get_template("report.html.j2")
    return template.render(
        version=__version__,
        header=_header(reports),
        reports={key: reports.get(key) for key in (*REPORT_FILES, "classification")},
        has_evidence=any(r["evidence"] is not None for r in rows),
        notes=notes,
        rows=rows,
        rows_source=rows_source,
        link=links,
        classes=sorted({r["label"] for r in rows if r["label"]}),
        subtypes=sorted({r["subtype"] for r in rows if r["subtype"]}),
    )


def run_report(settings: ReportSettings) -> ReportOutcome:
    folder = settings.results_dir
    reports, notes = read_reports(folder)
    page = settings.output or folder / HTML_REPORT
    html = build_page(folder, page, reports, notes, settings.self_contained)
    write_atomic(page, html)
    return ReportOutcome(page, sorted(reports), notes)
