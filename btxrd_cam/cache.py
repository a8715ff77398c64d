"""The engine's memory: what it computed for an image, kept in the output folder so that re-runs skip the model.

An entry holds, for one image, the logits and probabilities, the raw low-resolution map of every configuration
asked for so far, the original size, and what drawing needs without decoding again (the model-size pixels and,
when asked, the thumbnail) — keyed by everything that determines them: the checkpoint's sha256 and class names,
the image file's content (sha256 of its bytes) and resolved path, the preprocessing (input size, mean, std,
`--fast-decode`, `--dicom-window`), the target rule with the class index it names (and the label, for `--target
true`), `--amp`, `--aug-smooth`, `--eigen-smooth` and the format version. Nothing in an entry depends on the
annotation (region, resolution and threshold are applied to it afresh), so those are not in the key.

The cache is an optimisation, never a source of truth. A lookup hits only when the entry's stored key equals the one
asked for, it holds every configuration asked for, and it passes validation: a bounded header and members (no
member is read whose declared size is absurd), the types and shapes the engine would have produced (as many logits
as classes, each map the shape of its layer's grid, the model's input size), finite values in their ranges, and a
digest binding the arrays to the key (an entry moved or copied under another image's key fails it). Anything else —
stale, truncated, corrupt, foreign, of another version — is recomputed, with one warning per run. The digest is no
signature: whoever can write the results folder can forge an entry; keep it writable by you only. Entries are
written atomically (temp file + rename), so an interrupted or concurrent run leaves either a whole entry or none.

Not for: deciding what to compute (engine.py) or what commands keep (commands/).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from btxrd_cam.data import ImageItem
from btxrd_cam.errors import one_line
from btxrd_cam.outputs import write_atomic

CACHE_VERSION = 2
MAX_HEADER_BYTES = 1 << 20
MAX_MEMBER_BYTES = 64 << 20  # the largest array an entry holds: model pixels of a 4096-px RGB input, 48 MB
MAX_SIDE = 1_000_000
HASH_CHUNK = 1 << 20


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


class InvalidEntry(ValueError):
    """An entry that is not what the engine would have written: recomputed."""


def content_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks (a radiograph of a few MB costs ~1 ms)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ExplanationCache:
    """Entries under `folder` (`<out>/.cache/`), one file per image and context (see the module docstring).

    context: what, besides the image, determines the engine's results (class_names and image_size among them, which
    validation uses); shapes: {configuration name: (h, w)} of the maps the engine makes, to validate them."""

    def __init__(self, folder: Path, context: dict, warn=None, shapes: dict | None = None) -> None:
        self.folder = Path(folder)
        self.context = {"version": CACHE_VERSION, **context}
        self.warn = warn or (lambda message: None)
        self.shapes = dict(shapes or {})
        self.hits = 0
        self.misses = 0
        self.rejected = 0
        self._digests: dict[Path, tuple[tuple, str]] = {}
        self._rejected: set[str] = set()
        self._warned = False

    def _key(self, item: ImageItem, target: str) -> dict | None:
        try:
            path = Path(item.path).resolve()
            stat = path.stat()
            identity = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
            known = self._digests.get(path)
            if known is None or known[0] != identity:
                known = (identity, content_digest(path))
                self._digests[path] = known
        except OSError:
            return None  # a missing file: decoding it becomes the image's error, nothing to cache
        key = {**self.context, "image": str(path), "content_sha256": known[1], "target": target}
        if target == "true":
            key["label"] = item.label
        return key

    def _path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npz"

    def probe(self, item: ImageItem, target: str, names: list[str], thumbnail: int | None) -> bool:
        """Whether an entry holds everything asked for (reads its header only; `load` validates the rest)."""
        key = self._key(item, target)
        header = self._read(key, item, header_only=True)[0] if key is not None else None
        served = header is not None and _serves(header, names, thumbnail)
        self.misses += not served
        return served

    def load(self, item: ImageItem, target: str, names: list[str], thumbnail: int | None) -> CachedImage | None:
        """The cached computation of this image if it holds everything asked for and passes validation, else None
        (a miss)."""
        key = self._key(item, target)
        found = self._read(key, item) if key is not None else (None, None)
        if found[1] is not None and _serves(found[0], names, thumbnail):
            self.hits += 1
            return found[1]
        self.misses += 1
        return None

    def _reject(self, item: ImageItem, reason: str) -> tuple[None, None]:
        if item.image_id not in self._rejected:  # probed, then loaded: one entry counted once
            self._rejected.add(item.image_id)
            self.rejected += 1
        if not self._warned:  # one warning per run, however many entries are rejected
            self._warned = True
            self.warn(
                f"ignoring a cache entry that is not valid ({item.image_id}: {reason}) and any others: recomputing"
            )
        return None, None

    def _read(self, key: dict, item: ImageItem, header_only: bool = False) -> tuple[dict | None, CachedImage | None]:
        """(header, entry) of the file for this key — the entry None when only the header is asked for — or (None,
        None) when there is no file, it holds another key, or it fails validation (one warning per run)."""
        path = self._path(key)
        if not path.is_file():
            return None, None
        try:
            with zipfile.ZipFile(path) as archive:
                members = {info.filename: info for info in archive.infolist()}
                for name, info in members.items():
                    limit = MAX_HEADER_BYTES if name == "header.npy" else MAX_MEMBER_BYTES
                    if info.file_size > limit:
                        raise InvalidEntry(f"member {one_line(name, 40)} declares {info.file_size:,} bytes")
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(bytes(_array(data, "header", np.uint8, 1)).decode())
                if not isinstance(header, dict):
                    raise InvalidEntry("its header is not an object")
                if header.get("key") != key:
                    return None, None  # another image or context under the same name: never trusted
                if header_only:
                    return header, None
                entry = self._validated(header, data)
        except InvalidEntry as exc:
            return self._reject(item, str(exc))
        except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, zipfile.BadZipFile) as exc:
            return self._reject(item, f"unreadable: {one_line(exc, 80)}")
        return header, entry

    def _validated(self, header: dict, data) -> CachedImage:
        """The entry's arrays, checked against what the engine writes; InvalidEntry for anything else."""
        classes = len(self.context.get("class_names") or []) or None
        size = self.context.get("image_size")
        names = header.get("maps")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidEntry("its map names are not a list of strings")
        logits = _array(data, "logits", np.float32, 1, length=classes)
        probs = _array(data, "probs", np.float32, 1, length=logits.size)
        if not (np.all((probs >= 0) & (probs <= 1)) and abs(float(probs.sum()) - 1) < 1e-3):
            raise InvalidEntry("its probabilities are not a distribution")
        maps = {}
        for i, name in enumerate(names):
            cam = _array(data, f"map_{i}", np.float32, 2)
            if cam.min(initial=0) < 0 or cam.max(initial=0) > 1:
                raise InvalidEntry(f"map {one_line(name, 40)} leaves [0, 1]")
            if name in self.shapes and tuple(cam.shape) != tuple(self.shapes[name]):
                raise InvalidEntry(f"map {one_line(name, 40)} is {list(cam.shape)}, not {list(self.shapes[name])}")
            maps[name] = cam
        pixels = _array(data, "model_pixels", np.uint8, (2, 3))
        if size is not None and pixels.shape[:2] != (size, size) or (pixels.ndim == 3 and pixels.shape[2] != 3):
            raise InvalidEntry(f"its model pixels are {list(pixels.shape)}, not {size}x{size}")
        orig = header.get("orig_size")
        if not (isinstance(orig, list) and len(orig) == 2 and all(_whole(v, 1, MAX_SIDE) for v in orig)):
            raise InvalidEntry("its original size is not two whole numbers")
        thumbnail = None
        if "thumbnail" in data.files:
            thumbnail = _decode_png(bytes(_array(data, "thumbnail", np.uint8, 1)))
            wanted = header.get("thumbnail_size")
            if not _whole(wanted, 1, MAX_SIDE) or max(thumbnail.shape[:2]) > wanted:
                raise InvalidEntry("its thumbnail is not the size it claims")
        source, warnings = header.get("source"), header.get("warnings", [])
        if source is not None and not isinstance(source, dict):
            raise InvalidEntry("its source is not an object")
        if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
            raise InvalidEntry("its warnings are not a list of strings")
        arrays = {"logits": logits, "probs": probs, "model_pixels": pixels, **{f"map_{n}": maps[n] for n in names}}
        if header.get("digest") != _digest(header["key"], arrays):
            raise InvalidEntry("its arrays do not belong to its key (moved, copied or edited)")
        return CachedImage(logits, probs, (int(orig[0]), int(orig[1])), maps, pixels, thumbnail, source, warnings)

    def store(self, item: ImageItem, target: str, entry: CachedImage, thumbnail: int | None) -> None:
        """Write (atomically) this image's entry, keeping the maps of configurations a former entry held."""
        key = self._key(item, target)
        if key is None:
            return
        previous_header, previous = self._read(key, item)
        maps = dict(previous.maps) if previous is not None else {}
        maps.update(entry.maps)
        thumb = entry.thumbnail
        if thumb is None and previous is not None and previous_header.get("thumbnail_size"):
            thumb, thumbnail = previous.thumbnail, previous_header["thumbnail_size"]
        names = sorted(maps)
        arrays = {
            "logits": np.asarray(entry.logits, np.float32),
            "probs": np.asarray(entry.probs, np.float32),
            "model_pixels": np.asarray(entry.model_pixels, np.uint8),
            **{f"map_{name}": np.asarray(maps[name], np.float32) for name in names},
        }
        header = {
            "key": key,
            "orig_size": list(entry.orig_size),
            "maps": names,
            "source": entry.source,
            "warnings": entry.warnings,
            "thumbnail_size": thumbnail if thumb is not None else None,
            "digest": _digest(key, arrays),
        }
        members = {
            "header": np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8),
            "logits": arrays["logits"],
            "probs": arrays["probs"],
            "model_pixels": arrays["model_pixels"],
            **{f"map_{i}": arrays[f"map_{name}"] for i, name in enumerate(names)},
        }
        if thumb is not None:
            members["thumbnail"] = np.frombuffer(_encode_png(thumb), dtype=np.uint8)  # lossless, 2-3x smaller
        buffer = io.BytesIO()
        np.savez(buffer, **members)
        try:
            write_atomic(self._path(key), buffer.getvalue())
        except OSError as exc:  # a full disk costs the cache, never the run
            self.warn(f"could not write the cache ({one_line(exc, 80)})")


def _digest(key: dict, arrays: dict[str, np.ndarray]) -> str:
    """sha256 binding the arrays (names, dtypes, shapes, bytes) to the key they were computed for."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _array(data, name: str, dtype, ndim, length: int | None = None) -> np.ndarray:
    """A member of the entry as an array of `dtype` with `ndim` dimensions (an int or a tuple of allowed ones),
    finite, of `length` elements when given; InvalidEntry otherwise."""
    if name not in data.files:
        raise InvalidEntry(f"it has no {name}")
    array = np.array(data[name])
    allowed = ndim if isinstance(ndim, tuple) else (ndim,)
    if array.dtype != dtype or array.ndim not in allowed or array.size == 0:
        raise InvalidEntry(f"its {name} is {array.dtype} {list(array.shape)}")
    if length is not None and array.size != length:
        raise InvalidEntry(f"its {name} holds {array.size} values, not {length}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidEntry(f"its {name} holds NaN or infinite values")
    return array


def _whole(value, low: int, high: int) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value == int(value)
        and low <= value <= high
    )


def _serves(header: dict, names: list[str], thumbnail: int | None) -> bool:
    """Whether an entry holds every configuration asked for, and the thumbnail when one is asked for."""
    held = header.get("maps")
    held = set(held) if isinstance(held, list) and all(isinstance(n, str) for n in held) else set()
    return all(name in held for name in names) and (thumbnail is None or header.get("thumbnail_size") == thumbnail)


def _encode_png(pixels: np.ndarray) -> bytes:
    rgb = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", rgb, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError("could not encode a thumbnail")
    return encoded.tobytes()


def _decode_png(data: bytes) -> np.ndarray:
    head = data[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 24:
        raise InvalidEntry("its thumbnail is not a PNG")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if width * height > 16 << 20:  # checked before decoding: a thumbnail is 384 px
        raise InvalidEntry(f"its thumbnail declares {width}x{height} pixels")
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise InvalidEntry("its thumbnail is unreadable")
    return pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
