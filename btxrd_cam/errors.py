"""The one small error hierarchy. The library raises these; only the CLI maps them to exit codes."""

from __future__ import annotations

from pathlib import Path


class BtxrdCamError(Exception):
    """Base class of every error btxrd-cam raises on purpose."""


class UsageError(BtxrdCamError):
    """Options or inputs that make the whole command impossible (CLI exit code 2)."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be loaded safely or does not match the requested architecture."""


class InputError(BtxrdCamError):
    """One input file (image, annotation, manifest row) that cannot be used; a batch records it and goes on."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{Path(self.path).name}: {reason}")
