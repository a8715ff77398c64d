"""The one small error hierarchy. The library raises these; only the CLI maps them to exit codes."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class BtxrdCamError(Exception):
    """Base class of every error btxrd-cam raises on purpose."""


class UsageError(BtxrdCamError):
    """Options or inputs that make the whole command impossible (CLI exit code 2)."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be loaded safely or does not match the requested architecture."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT (CLI exit code 143)."""


_signalled: list[int] = []  # the signals received (SIGINT 2, SIGTERM 15)


def on_signal(signum, frame=None) -> None:
    """The CLI's SIGINT/SIGTERM handler. It only remembers the signal: raising at an arbitrary point — inside
    torch's import, a pybind11 callback, a library's bare `except:` — can crash the process or be swallowed. The
    work stops at the next safe point (`raise_if_interrupted`: every image, every batch, every file write). A
    second signal raises at once."""
    _signalled.append(signum)
    if len(_signalled) > 1:
        raise KeyboardInterrupt() if signum == 2 else Terminated()


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt (SIGINT) or Terminated (SIGTERM) when a signal has been received: a safe point.
    Checked before anything is written, so an interrupted run never replaces a report."""
    if _signalled:
        raise KeyboardInterrupt() if _signalled[0] == 2 else Terminated()


class InputError(BtxrdCamError):
    """One input file (image, annotation, manifest row) that cannot be used; a batch records it and goes on."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{Path(self.path).name}: {reason}")


STRICT_ENV = "BTXRD_CAM_STRICT"  # set (the test suite does): unexpected exceptions inside a batch propagate


ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def one_line(value: object, limit: int = 200) -> str:
    """A message on one line, at most `limit` characters, memory addresses (`<object at 0x7f…>`) blanked: they
    differ from run to run, and reports must not."""
    text = ADDRESS.sub("0x…", " ".join(str(value).split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def per_image(work: Callable[[], T], fail: Callable[[str], T], path: Path | str | None = None, named: bool = True) -> T:
    """The per-image boundary, the one place where one image's failure becomes its record instead of the batch's.

    Runs `work()`; on InputError returns `fail("<file>: <reason>")` (just the reason when `named` is False, for a
    record that already names its file); on any other exception — a decoder or library crash, an overflow, a
    memory error — the same, with the exception's type, so that nothing one file contains can stop a batch.
    With BTXRD_CAM_STRICT set (the test suite), those unexpected exceptions propagate instead: programming errors
    must surface where they are tested, not hide in a record.
    """
    try:
        return work()
    except InputError as exc:
        return fail(str(exc) if named else exc.reason)
    except Exception as exc:
        if os.environ.get(STRICT_ENV):
            raise
        reason = f"unexpected {type(exc).__name__}: {one_line(exc)}"
        return fail(f"{Path(path).name}: {reason}" if named and path else reason)
