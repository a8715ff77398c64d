"""The engine's memory: what it computed for an image, kept in the output folder so that re-runs skip the model.

An entry holds, for one image, the logits and probabilities, the raw low-resolution map of every configuration
asked for so far, the original size, and what drawing needs without decoding again (the model-size pixels and,
when asked, the thumbnail) — keyed by everything that determines them: the checkpoint's sha256, the image file's
identity (resolved path, size, modification time), the preprocessing (input size, mean, std, `--fast-decode`,
`--dicom-window`), the target rule (and the label, for `--target true`), `--amp`, `--aug-smooth`, `--eigen-smooth`
and the format version. A lookup hits only when the entry's stored key equals the one asked for and holds every
configuration asked for; anything else — stale, truncated, corrupt, foreign, of another version — is recomputed
(with a warning when the file is unreadable), never trusted. Entries are written atomically (temp file + rename),
so an interrupted or concurrent run leaves either a whole entry or none.

Not for: deciding what to compute (engine.py) or what commands keep (commands/).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from btxrd_cam.data import ImageItem
from btxrd_cam.errors import one_line
from btxrd_cam.outputs import write_atomic

CACHE_VERSION = 1


@dataclass
class CachedImage:
    """One image as the engine computed it (see Explanation for the arrays' shapes)."""

    logits: np.ndarray
    probs: np.ndarray
    orig_size: tuple[int, int]
    maps: dict[str, np.ndarray]
    model_pixels: np.ndarray
    thumbnail: np.ndarray | None
    source: dict | None
    warnings: list[str]


class ExplanationCache:
    """Entries under `folder` (`<out>/.cache/`), one file per image and context (see the module docstring)."""

    def __init__(self, folder: Path, context: dict, warn=None) -> None:
        self.folder = Path(folder)
        self.context = {"version": CACHE_VERSION, **context}
        self.warn = warn or (lambda message: None)
        self.hits = 0
        self.misses = 0

    def _key(self, item: ImageItem, target: str) -> dict | None:
        try:
            path = Path(item.path).resolve()
            stat = path.stat()
        except OSError:
            return None  # a missing file: decoding it becomes the image's error, nothing to cache
        key = {**self.context, "image": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        key["target"] = target
        if target == "true":
            key["label"] = item.label
        return key

    def _path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npz"

    def probe(self, item: ImageItem, target: str, names: list[str], thumbnail: int | None) -> bool:
        """Whether an entry holds everything asked for (reads its header only)."""
        key = self._key(item, target)
        header = self._header(key, item) if key is not None else None
        served = header is not None and _serves(header, names, thumbnail)
        self.misses += not served
        return served

    def load(self, item: ImageItem, target: str, names: list[str], thumbnail: int | None) -> CachedImage | None:
        """The cached computation of this image if it holds everything asked for, else None (a miss)."""
        key = self._key(item, target)
        found = self._read(key, item) if key is not None else None
        if found is not None and _serves(found[0], names, thumbnail):
            self.hits += 1
            return found[1]
        self.misses += 1
        return None

    def _header(self, key: dict, item: ImageItem) -> dict | None:
        found = self._read(key, item, header_only=True)
        return found[0] if found is not None else None

    def _read(self, key: dict, item: ImageItem, header_only: bool = False) -> tuple[dict, CachedImage | None] | None:
        """(header, entry) of the file for this key — the entry None when only the header is asked for — or None
        when there is no file, it is unreadable (with a warning) or it holds another key."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(bytes(data["header"]).decode())
                if header.get("key") != key:
                    return None  # another image or context under the same name: never trusted
                if header_only:
                    return header, None
                maps = {name: np.array(data[f"map_{i}"]) for i, name in enumerate(header["maps"])}
                thumbnail = _decode_png(bytes(data["thumbnail"])) if "thumbnail" in data.files else None
                entry = CachedImage(
                    logits=np.array(data["logits"]),
                    probs=np.array(data["probs"]),
                    orig_size=(int(header["orig_size"][0]), int(header["orig_size"][1])),
                    maps=maps,
                    model_pixels=np.array(data["model_pixels"]),
                    thumbnail=thumbnail,
                    source=header.get("source"),
                    warnings=list(header.get("warnings", [])),
                )
        except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, zipfile.BadZipFile) as exc:
            self.warn(f"ignoring an unreadable cache entry for {item.image_id} ({one_line(exc, 80)}): recomputing")
            return None
        return header, entry

    def store(self, item: ImageItem, target: str, entry: CachedImage, thumbnail: int | None) -> None:
        """Write (atomically) this image's entry, keeping the maps of configurations a former entry held."""
        key = self._key(item, target)
        if key is None:
            return
        previous = self._read(key, item)
        maps = dict(previous[1].maps) if previous is not None else {}
        maps.update(entry.maps)
        thumb = entry.thumbnail
        if thumb is None and previous is not None and previous[0].get("thumbnail_size"):
            thumb, thumbnail = previous[1].thumbnail, previous[0]["thumbnail_size"]
        names = sorted(maps)
        header = {
            "key": key,
            "orig_size": list(entry.orig_size),
            "maps": names,
            "source": entry.source,
            "warnings": entry.warnings,
            "thumbnail_size": thumbnail if thumb is not None else None,
        }
        arrays = {
            "header": np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8),
            "logits": entry.logits,
            "probs": entry.probs,
            "model_pixels": entry.model_pixels,
            **{f"map_{i}": maps[name] for i, name in enumerate(names)},
        }
        if thumb is not None:
            arrays["thumbnail"] = np.frombuffer(_encode_png(thumb), dtype=np.uint8)  # lossless, 2-3x smaller
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        try:
            write_atomic(self._path(key), buffer.getvalue())
        except OSError as exc:  # a full disk costs the cache, never the run
            self.warn(f"could not write the cache ({one_line(exc, 80)})")


def _serves(header: dict, names: list[str], thumbnail: int | None) -> bool:
    """Whether an entry holds every configuration asked for, and the thumbnail when one is asked for."""
    held = set(header.get("maps", []))
    return all(name in held for name in names) and (thumbnail is None or header.get("thumbnail_size") == thumbnail)


def _encode_png(pixels: np.ndarray) -> bytes:
    rgb = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", rgb, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError("could not encode a thumbnail")
    return encoded.tobytes()


def _decode_png(data: bytes) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ValueError("unreadable thumbnail")
    return pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
