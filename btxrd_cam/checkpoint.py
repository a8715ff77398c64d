"""Checkpoints: the upstream training format (or a bare timm state dict) → a ready timm model, loaded safely.

`load_checkpoint(path) -> Checkpoint` is our factory for users' files, as `timm.create_model` is for models.
Not for: running the model (engine.py).
"""

from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from btxrd_cam.data import DEFAULT_CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD
from btxrd_cam.errors import CheckpointError
from btxrd_cam.layers import describe_names, get_layer, resolve_target_layer


@dataclass
class Checkpoint:
    """A loaded classifier and everything needed to preprocess for it and explain it."""

    model: nn.Module
    arch: str
    class_names: list[str]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    target_layer_name: str
    path: Path
    sha256: str
    metadata: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def target_layer(self) -> nn.Module:
        return self.model.get_submodule(self.target_layer_name)


def _first_reason(exc: Exception) -> str:
    """The line of torch's message that names the cause (it leads with advice about weights_only)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported" in line or "invalid load key" in line:
            return line
    return lines[-1] if lines else type(exc).__name__


def _looks_like_pickle(head: bytes) -> bool:
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # torch.save zip, or a raw pickle


def _safe_load(path: Path) -> tuple[object, str]:
    """The checkpoint's contents (weights_only=True) and its sha256, from one read of the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), digest
    except pickle.UnpicklingError as exc:
        if not _looks_like_pickle(data[:4]):  # not a checkpoint at all
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_reason(exc)})") from None
        raise CheckpointError(
            f"{path}: refused — this checkpoint needs arbitrary unpickling, which can run code; btxrd-cam loads "
            f"with weights_only=True only. Re-save it as tensors and plain types ({_first_reason(exc)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_reason(exc)})") from None


MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 4096


def _image_size(value, path: Path) -> int:
    """The checkpoint's input size: a whole number of pixels from 32 to 4096 (224 when it names none).
    CheckpointError (exit 2) otherwise — a size of 30,000 would have the process killed for its memory."""
    if value is None:
        return 224
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise CheckpointError(f"{path}: config.data.image_size is not a whole number of pixels")
    if not MIN_IMAGE_SIZE <= int(value) <= MAX_IMAGE_SIZE:
        raise CheckpointError(
            f"{path}: config.data.image_size is {int(value)}; btxrd-cam reads {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px"
        )
    return int(value)


def _strip_prefixes(state: dict) -> dict:
    keys = list(state)
    for prefix in ("module.", "model."):
        if keys and all(k.startswith(prefix) for k in keys):
            state = {k[len(prefix) :]: v for k, v in state.items()}
            keys = list(state)
    return state


def _create_model(arch: str, num_classes: int, attn_layer: str | None) -> nn.Module:
    kwargs = {"pretrained": False, "num_classes": num_classes}
    if attn_layer:
        kwargs["block_args"] = {"attn_layer": attn_layer}
    try:
        return timm.create_model(arch, **kwargs)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise CheckpointError(f"--arch: {exc}") from None


def load_checkpoint(
    path: Path,
    arch: str | None = None,
    class_names: list[str] | None = None,
    target_layer: str | None = None,
) -> Checkpoint:
    """Load a checkpoint safely (`weights_only=True`) and build its model with timm (`pretrained=False`).

    Accepts the upstream training format (`model_state_dict` + `config` + `class_names` + `normalization`)
    or a bare state dict of timm keys (optionally prefixed `module.`/`model.`) together with `arch` and
    `class_names`. Raises CheckpointError with the reason for anything else.
    """
    path = Path(path)
    raw, digest = _safe_load(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict (upstream format or a state dict), got {type(raw).__name__}")
    metadata: dict = {}
    if "model_state_dict" in raw:
        config = raw.get("config") or {}
        model_cfg = config.get("model") or {}
        data_cfg = config.get("data") or {}
        state = raw["model_state_dict"]
        arch = arch or model_cfg.get("backbone") or model_cfg.get("name")
        names = class_names or raw.get("class_names") or model_cfg.get("class_names")
        image_size = _image_size(data_cfg.get("image_size"), path)
        norm = raw.get("normalization") or {}
        mean = tuple(float(v) for v in norm.get("mean", IMAGENET_MEAN))
        std = tuple(float(v) for v in norm.get("std", IMAGENET_STD))
        attn_layer = model_cfg.get("attn_layer")
        metadata = {k: raw[k] for k in ("epoch", "val_loss") if k in raw and isinstance(raw[k], (int, float))}
    else:
        state, names, image_size, mean, std, attn_layer = (
            raw,
            class_names,
            224,
            IMAGENET_MEAN,
            IMAGENET_STD,
            None,
        )
        if not arch:
            raise CheckpointError(f"{path}: a bare state dict needs --arch (e.g. efficientnet_b0)")
    if not arch:
        raise CheckpointError(f"{path}: the checkpoint does not name its backbone; pass --arch")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the model state is not a dict of tensors")
    state = _strip_prefixes(state)
    head = _classifier_rows(state)
    names = list(names) if names else (list(DEFAULT_CLASS_NAMES) if head in (None, 3) else None)
    if not names:
        raise CheckpointError(f"{path}: the checkpoint has {head} classes and no class names; pass --class-names")
    if head is not None and head != len(names):
        raise CheckpointError(f"{path}: {len(names)} class names given for a {head}-class classifier")
    model = _create_model(arch, len(names), attn_layer)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shape_errors = [k for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shape_errors:
        problems = []
        if missing:
            problems.append(f"missing keys: {describe_names(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {describe_names(unexpected)}")
        if shape_errors:
            problems.append(f"shape mismatch: {describe_names(shape_errors)}")
        raise CheckpointError(f"{path}: weights do not fit {arch} — " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    model.eval()
    layer_name = get_layer(model, target_layer)[0] if target_layer else resolve_target_layer(model, image_size)
    return Checkpoint(
        model=model,
        arch=arch,
        class_names=names,
        image_size=image_size,
        mean=mean,
        std=std,
        target_layer_name=layer_name,
        path=path,
        sha256=digest,
        metadata=metadata,
    )


def _classifier_rows(state: dict) -> int | None:
    """Number of classes of the final linear layer, read from the state dict when recognisable."""
    for key in ("classifier.weight", "fc.weight", "head.fc.weight", "head.weight", "last_linear.weight"):
        if key in state and state[key].ndim == 2:
            return int(state[key].shape[0])
    return None


def save_upstream_checkpoint(
    path: Path,
    model: nn.Module,
    arch: str,
    class_names: list[str],
    image_size: int,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    extra: dict | None = None,
) -> None:
    """Save a timm model exactly as the upstream training code does (wrapper keys start with `model.`)."""
    state = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "epoch": 0,
        "model_state_dict": state,
        "config": {
            "model": {
                "backbone": arch,
                "num_classes": len(class_names),
                "class_names": list(class_names),
                "dropout": 0.0,
            },
            "data": {"image_size": image_size},
        },
        "class_names": list(class_names),
        "normalization": {"mean": list(mean), "std": list(std)},
    }
    payload.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
