"""Messages for people, on stderr: progress bars, tables, warnings.

They vanish with --quiet or when stderr is not a terminal; stdout stays for data. Errors are the CLI's job.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

stderr = Console(stderr=True)


def for_people(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


@contextlib.contextmanager
def progress(total: int, description: str, quiet: bool = False) -> Iterator[Callable[[], None]]:
    """A rich progress bar on stderr; yields `advance()`. Silent when not for people."""
    if not for_people(quiet):
        yield lambda *args, **kwargs: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda *args, **kwargs: bar.advance(task)


def show(renderable, quiet: bool = False) -> None:
    if for_people(quiet):
        stderr.print(renderable)


def warn(message: str, quiet: bool = False) -> None:
    if for_people(quiet):
        stderr.print(f"[yellow]warning:[/] {message}", highlight=False, markup=True)


def route_python_warnings(quiet: bool) -> None:
    """Python warnings (Pillow's, torch's, …) are for people too: shown as ours, and gone with --quiet or when
    stderr is not a terminal."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        warn(f"{category.__name__}: {message}", quiet)

    warnings.showwarning = show


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def metrics_table(metrics: dict):
    """Classification metrics as a rich table (per class rows, overall in the caption)."""
    from rich.table import Table

    table = Table(
        title="classification metrics",
        caption=(
            f"accuracy {_fmt(metrics['accuracy'])} · balanced accuracy {_fmt(metrics['balanced_accuracy'])} · "
            f"macro AUC {_fmt(metrics['macro_auc'])} · n={metrics['count']}"
        ),
    )
    for column in ("class", "n", "sensitivity", "specificity", "precision", "F1", "AUC"):
        table.add_column(column, justify="right" if column != "class" else "left")
    for name, row in metrics["per_class"].items():
        table.add_row(
            name,
            str(row["support"]),
            *(_fmt(row[k]) for k in ("sensitivity", "specificity", "precision", "f1", "auc")),
        )
    return table


def summary_table(title: str, summary: dict, metrics: tuple[str, ...]):
    """count/mean/median/IQR/min/max per metric as a rich table."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("metric", "n", "mean", "median", "IQR", "min", "max"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for metric in metrics:
        row = summary.get(metric) or {}
        table.add_row(
            metric,
            str(row.get("count", 0)),
            *(_fmt(row.get(k)) for k in ("mean", "median", "iqr", "min", "max")),
        )
    return table


def _interval(cell: dict) -> str:
    if cell.get("mean") is None:
        return "—"
    ci = cell.get("ci95")
    return f"{cell['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def comparison_table(report: dict, rank_by: str):
    """compare's ranking as a rich table: means (the ranking metric with its CI), × chance, and the paired
    difference to the reference with its CI."""
    from rich.table import Table

    reference = report["reference"]
    table = Table(
        title=f"CAM configurations vs annotations ({report['evaluated']} images), ranked by {rank_by}",
        caption=f"Δ: paired difference to the reference {reference}, 95% CI; * the CI excludes 0. "
        "EPG: energy pointing game; ×: EPG as a multiple of chance (the uniform map's).",
    )
    columns = ("#", "configuration", "IoU", "PG", "EPG", "×", f"{rank_by} [95% CI]", f"Δ {rank_by} [95% CI]")
    for column in columns:
        table.add_column(column, justify="left" if column == "configuration" else "right", no_wrap=True)
    baselines = {c["name"] for c in report["configurations"] if c["method"] is None}
    for position, name in enumerate(report["ranking"], start=1):
        row = report["summary"][name]
        paired = report["paired"].get(name, {}).get(rank_by)
        if name == reference:
            delta = "reference"
        elif paired and paired["difference"] is not None:
            delta = f"{paired['difference']:+.3f} [{paired['ci95'][0]:+.3f}, {paired['ci95'][1]:+.3f}]"
            delta += " *" if paired["excludes_zero"] else "  "
        else:
            delta = "—"
        table.add_row(
            str(position),
            name,
            _fmt(row["iou"]["mean"]),
            _fmt(row["pointing_game"]["mean"]),
            _fmt(row["energy_pointing_game"]["mean"]),
            _fmt(row["energy_pointing_game"].get("x_chance")),
            _interval(row[rank_by]),
            delta,
            style="dim" if name in baselines else "bold" if name == reference else None,
        )
    return table


def sanity_table(report: dict):
    """sanity's verdicts as a rich table: with every step randomised, each method's mean similarity to the trained
    map against the reference level, the verdict, where it first reaches the reference, and ROAD."""
    from rich.table import Table

    last = report["steps"][-1] if report["steps"] else "—"
    table = Table(
        title=f"Do the maps depend on the model? ({len(report['images'])} images, {report['settings']['order']})",
        caption=f"similarity to the trained map with every step up to '{last}' randomised; reference: the trained "
        "maps of unrelated images (upper end of the 95% CI). ROAD: higher is more faithful.",
    )
    for column in ("method", "Spearman", "ref ≤", "verdict", "SSIM", "ref ≤", "verdict", "reaches ref at", "ROAD"):
        table.add_column(column, justify="left" if column in ("method", "verdict", "reaches ref at") else "right")
    road = (report.get("road") or {}).get("rows", {})
    for method, body in report["methods"].items():
        final = body["per_step"][-1] if body["per_step"] else {}
        cells = []
        for measure in ("spearman", "ssim"):
            upper = (report["reference"][method][measure]["ci95"] or [None, None])[1]
            verdict = body["verdict"][measure] or "—"
            style = "green" if verdict == "passes" else "red" if verdict == "fails" else ""
            mean = (final.get(measure) or {}).get("mean")
            cells += [_fmt(mean), _fmt(upper), f"[{style}]{verdict}[/]" if style else verdict]
        reaches = body["reaches_reference_at"]
        where = (
            reaches["spearman"]
            if reaches["spearman"] == reaches["ssim"]
            else f"{reaches['spearman']} / {reaches['ssim']}"
        )
        table.add_row(method, *cells, str(where or "never"), _fmt((road.get(method) or {}).get("mean")))
    control = report.get("control") or {}
    if control.get("per_step"):
        final = control["per_step"][-1]
        spearman_mean, ssim_mean = _fmt(final["spearman"]["mean"]), _fmt(final["ssim"]["mean"])
        road_mean = _fmt((road.get(control["name"]) or {}).get("mean"))
        table.add_row(
            f"{control['name']} (control)", spearman_mean, "", "", ssim_mean, "", "", "", road_mean, style="dim"
        )
    for name in ("centre", "noise"):
        if name in road:
            table.add_row(f"{name} (control)", *[""] * 7, _fmt(road[name]["mean"]), style="dim")
    return table
