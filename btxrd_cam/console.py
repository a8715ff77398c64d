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
        stderr.print(f"[yellow]warning:[/] {message}", highlight=False)


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
