"""Re-runs without the model: what a checkpoint says about itself, kept beside the explanation cache, and an engine
that builds its model only when an image is not in the cache.

A re-run that needs nothing new from the model (another threshold, another region, the figures again) still spent
~7 s importing timm, reading the checkpoint and building the model before the cache answered every image. Everything
a command needs from the checkpoint besides the weights — its name, sha256, architecture, class names, input size,
normalisation and CAM layer, each layer's layout and grid, what `--layers auto` resolves to — is a small JSON file,
`<out>/.cache/checkpoints/<key>.json`, keyed by the checkpoint's sha256 and the options that change what it says
(`--arch`, `--class-names`, `--target-layer`). When it is there, the checkpoint is *deferred*: its file is hashed (to
know it is the same) but not unpickled, timm is not imported, no model is built; the engine is deferred too and
serves every image the cache holds. The first image the cache does not hold builds the real checkpoint and engine,
exactly as a first run would, and the run goes on.

Not for: what the cache holds per image (cache.py) or how the model runs (engine.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from pathlib import Path

from btxrd_cam.engine import INPUT_LAYER, LIBRARY_PATH, Engine
from btxrd_cam.layers import Layout
from btxrd_cam.outputs import CACHE_FOLDER, OutputFolder, write_atomic

FACTS_VERSION = 1
FACTS_FOLDER = "checkpoints"
CHECKPOINT_FIELDS = ("arch", "class_names", "image_size", "mean", "std", "target_layer_name", "sha256", "metadata")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def facts_path(settings, sha256: str) -> Path | None:
    """Where the facts of this checkpoint, read with these options, are kept (None when the command keeps no cache)."""
    if getattr(settings, "no_cache", True) or not hasattr(settings, "out"):
        return None
    options = {"arch": settings.arch, "class_names": settings.class_names, "target_layer": settings.target_layer}
    key = hashlib.sha256(json.dumps({"sha256": sha256, **options}, sort_keys=True).encode()).hexdigest()
    return OutputFolder(settings.out).path(CACHE_FOLDER, FACTS_FOLDER, f"{key}.json")


def read_facts(path: Path | None, sha256: str) -> dict | None:
    """The facts kept at `path` when they are whole and of this checkpoint; None otherwise (then the model is built)."""
    if path is None or not path.is_file() or path.stat().st_size > 1 << 20:
        return None
    try:
        facts = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(facts, dict) or facts.get("version") != FACTS_VERSION:
        return None
    checkpoint, layouts = facts.get("checkpoint"), facts.get("layouts")
    if not isinstance(checkpoint, dict) or checkpoint.get("sha256") != sha256 or not isinstance(layouts, dict):
        return None
    if not all(field in checkpoint for field in CHECKPOINT_FIELDS):
        return None
    return facts


def write_facts(path: Path | None, checkpoint, engine: Engine | None = None, auto: list[str] | None = None) -> None:
    """Keep (merging with what is kept) what the checkpoint and its engine say about themselves."""
    if path is None:
        return
    facts = read_facts(path, checkpoint.sha256) or {
        "version": FACTS_VERSION,
        "checkpoint": {
            **{field: getattr(checkpoint, field) for field in CHECKPOINT_FIELDS},
            "name": checkpoint.name,
            "path": str(checkpoint.path),
            "notes": list(getattr(checkpoint, "notes", [])),
        },
        "layouts": {},
        "auto_layers": None,
    }
    if engine is not None:
        for name, layout in engine.layouts.items():
            facts["layouts"][name] = {"kind": layout.kind, "grid": list(layout.grid), "prefix": layout.prefix}
    if auto is not None:
        facts["auto_layers"] = list(auto)
    # the facts spare a later run the model: losing them costs time, never a result
    with contextlib.suppress(OSError):
        write_atomic(path, json.dumps(facts, sort_keys=True, indent=1))


class DeferredCheckpoint:
    """A checkpoint known by its facts: everything but the model, which `loaded()` reads (once) when needed."""

    def __init__(self, facts: dict, path: Path, loader) -> None:
        checkpoint = facts["checkpoint"]
        for field in CHECKPOINT_FIELDS:
            setattr(self, field, checkpoint[field])
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        self.path, self.notes, self.facts = Path(path), list(checkpoint.get("notes") or []), facts
        self._loader, self._loaded = loader, None

    @property
    def name(self) -> str:
        return self.path.name

    def loaded(self):
        """The real checkpoint (read and its model built the first time)."""
        if self._loaded is None:
            self._loaded = self._loader()
        return self._loaded

    @property
    def model(self):
        return self.loaded().model

    def known_layers(self) -> dict[str, Layout]:
        return {
            name: Layout(body["kind"], tuple(body["grid"]), int(body.get("prefix", 0)))
            for name, body in self.facts["layouts"].items()
        }


class DeferredEngine(Engine):
    """An engine whose model is built on first use — the first image the cache does not hold. Until then it knows
    what the facts say (configurations, grids, layouts, the checkpoint's preprocessing) and serves cached images
    through Engine.run as it is; asking for anything of the model builds the real engine and becomes it."""

    def __init__(self, checkpoint: DeferredCheckpoint, build, device, configs, options: dict) -> None:
        self.checkpoint = checkpoint
        self.device = device
        self.configs = list(configs)
        known = checkpoint.known_layers()
        self.layouts = {c.layer: known[c.layer] for c in self.configs if c.layer != INPUT_LAYER}
        size = checkpoint.image_size
        self.grids = {name: layout.grid for name, layout in self.layouts.items()}
        self.grids[INPUT_LAYER] = (size, size)
        self._take_options(**options)
        self._build = build
        self._building = threading.Lock()

    def __getattr__(self, name: str):
        # only reached for what a deferred engine does not have: the model, its layers, the weightings. Scoring
        # threads may ask at the same time as the main thread: one builds, the others wait for it.
        lock = self.__dict__.get("_building")
        if name.startswith("__") or lock is None:
            raise AttributeError(name)
        with lock:
            build = self.__dict__.pop("_build", None)
            if build is not None:
                self.__dict__.update(build().__dict__)
        return object.__getattribute__(self, name)  # the real engine's attribute, or AttributeError


def can_defer(checkpoint: DeferredCheckpoint, configs) -> bool:
    """Whether the facts know every layer the configurations ask for (and nothing needs the library's own passes)."""
    known = checkpoint.known_layers()
    return all(c.layer == INPUT_LAYER or c.layer in known for c in configs) and not any(
        c.method in LIBRARY_PATH for c in configs
    )
