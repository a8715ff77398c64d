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

import torch
from torch import nn

from btxrd_cam.data import DEFAULT_CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD
from btxrd_cam.errors import CheckpointError, one_line
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
    notes: list[str] = field(default_factory=list)  # what was assumed or left aside, for people (stderr)

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


RESAVE = (
    "re-save its weights as a state dict — torch.save(model.state_dict(), 'weights.pt') — and pass --arch and "
    "--class-names (or save the upstream format)"
)


def _safe_load(path: Path) -> tuple[object, str]:
    """The checkpoint's contents (`weights_only=True`; `.safetensors` through safetensors) and its sha256, from one
    read of the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
    digest = hashlib.sha256(data).hexdigest()
    if Path(path).suffix.lower() == ".safetensors" or _looks_like_safetensors(data):
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(data), digest
        except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({one_line(exc, 120)})") from None
    if _is_torchscript(data):
        raise CheckpointError(f"{path}: refused — a TorchScript archive holds code, not just weights; {RESAVE}")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), digest
    except pickle.UnpicklingError as exc:
        if not _looks_like_pickle(data[:4]):  # not a checkpoint at all
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_reason(exc)})") from None
        raise CheckpointError(
            f"{path}: refused — it needs arbitrary unpickling (a whole pickled model?), which can run code; btxrd-cam "
            f"loads with weights_only=True only: {RESAVE}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_reason(exc)})") from None


def _looks_like_safetensors(data: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    if len(data) < 10:
        return False
    length = int.from_bytes(data[:8], "little")
    return 2 <= length <= len(data) - 8 and data[8:9] == b"{"


def _is_torchscript(data: bytes) -> bool:
    """A TorchScript archive: a zip whose members include `constants.pkl` or code under `code/`."""
    import zipfile

    if not data.startswith(b"PK\x03\x04"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 4096


def _image_size(value, path: Path, where: str = "config.data.image_size") -> int:
    """The checkpoint's input size: a whole number of pixels from 32 to 4096 (224 when it names none).
    CheckpointError (exit 2) otherwise — a size of 30,000 would have the process killed for its memory."""
    if value is None:
        return 224
    if isinstance(value, (list, tuple)) and value:  # timm's input_size (3, H, W) or img_size (H, W)
        value = value[-1]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise CheckpointError(f"{path}: {where} is not a whole number of pixels")
    if not MIN_IMAGE_SIZE <= int(value) <= MAX_IMAGE_SIZE:
        allowed = f"btxrd-cam reads {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} px"
        raise CheckpointError(f"{path}: {where} is {int(value)}; {allowed}")
    return int(value)


PREFIXES = ("module.", "model.", "_orig_mod.")  # DDP, the upstream wrapper, torch.compile


def _strip_prefixes(state: dict) -> dict:
    """Peel the prefixes every key shares (`module.`, `model.`, `_orig_mod.`, in any nesting)."""
    changed = True
    while changed and state:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _match_model_keys(state: dict, model_keys: list[str]) -> tuple[dict, int] | None:
    """The part of `state` that holds the model's weights — under whatever prefix carries all of them (a Lightning
    module's `model.` or `net.`, nested `_orig_mod.`) — and how many other entries were left aside; None if no
    prefix carries them all."""
    wanted = set(model_keys)
    probe = model_keys[0]
    prefixes = {k[: -len(probe)] for k in state if k.endswith(probe)}
    for prefix in sorted(prefixes, key=len):
        found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if wanted <= set(found):
            return {k: found[k] for k in model_keys}, len(state) - len(wanted)
    return None


def _create_model(arch: str, num_classes: int, attn_layer: str | None, image_size: int) -> nn.Module:
    """timm's model, `pretrained=False`, built for the checkpoint's input size when the model is fixed-size (a ViT
    or Swin trained at 384 must be built at 384: its position embeddings and windows depend on it)."""
    import timm  # here, not at the top: a re-run the cache answers never builds a model, nor imports timm

    kwargs = {"pretrained": False, "num_classes": num_classes}
    if attn_layer:
        kwargs["block_args"] = {"attn_layer": attn_layer}
    try:
        try:
            return timm.create_model(arch, img_size=image_size, **kwargs)
        except TypeError:  # a convolutional network takes any size and no img_size
            return timm.create_model(arch, **kwargs)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise CheckpointError(f"--arch: {one_line(exc, 160)}") from None


@dataclass
class _Parsed:
    """What a checkpoint file says, whatever its format."""

    state: dict
    arch: str | None
    names: list[str] | None
    image_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    attn_layer: str | None = None
    metadata: dict = field(default_factory=dict)
    kind: str = "state dict"


def _parse(raw, path: Path, arch: str | None, class_names: list[str] | None) -> _Parsed:
    """The upstream format, a PyTorch Lightning checkpoint, a timm train.py checkpoint or a bare state dict."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict (upstream format or a state dict), got {type(raw).__name__}")
    if "model_state_dict" in raw:
        config = raw.get("config") or {}
        model_cfg = config.get("model") or {} if isinstance(config, dict) else {}
        data_cfg = config.get("data") or {} if isinstance(config, dict) else {}
        norm = raw.get("normalization") or {}
        return _Parsed(
            state=raw["model_state_dict"],
            arch=arch or model_cfg.get("backbone") or model_cfg.get("name"),
            names=class_names or raw.get("class_names") or model_cfg.get("class_names"),
            image_size=_image_size(data_cfg.get("image_size"), path),
            mean=tuple(float(v) for v in norm.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in norm.get("std", IMAGENET_STD)),
            attn_layer=model_cfg.get("attn_layer"),
            metadata={k: raw[k] for k in ("epoch", "val_loss") if isinstance(raw.get(k), (int, float))},
            kind="upstream",
        )
    if isinstance(raw.get("state_dict"), dict):
        hyper = raw.get("hyper_parameters") if isinstance(raw.get("hyper_parameters"), dict) else {}
        args = raw.get("args") if isinstance(raw.get("args"), dict) else {}
        timm_arch = raw.get("arch") if isinstance(raw.get("arch"), str) else None
        lightning = "pytorch-lightning_version" in raw or "hyper_parameters" in raw
        named = hyper.get("arch") or hyper.get("backbone") or hyper.get("model_name")
        size = hyper.get("image_size") or hyper.get("img_size") or args.get("img_size") or args.get("input_size")
        return _Parsed(
            state=raw["state_dict"],
            arch=arch or timm_arch or (named if isinstance(named, str) else None),
            names=class_names or _names(hyper.get("class_names")),
            image_size=_image_size(size, path, "the checkpoint's image size"),
            metadata={k: raw[k] for k in ("epoch", "global_step") if isinstance(raw.get(k), (int, float))},
            kind="Lightning" if lightning else "timm train.py" if timm_arch else "state dict",
        )
    if raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return _Parsed(state=raw, arch=arch, names=class_names)
    raise CheckpointError(
        f"{path}: not a checkpoint btxrd-cam recognises (the upstream format, a Lightning or timm train.py "
        "checkpoint, a state dict or a .safetensors file)"
    )


def _names(value) -> list[str] | None:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) and value else None


def load_checkpoint(
    path: Path,
    arch: str | None = None,
    class_names: list[str] | None = None,
    target_layer: str | None = None,
) -> Checkpoint:
    """Load a checkpoint safely (`weights_only=True`; safetensors through safetensors) and build its model with timm
    (`pretrained=False`, at the checkpoint's input size for fixed-size models).

    Recognised: the upstream training format (`model_state_dict` + `config` + `class_names` + `normalization`); a
    PyTorch Lightning checkpoint (`state_dict` under the prefix that matches the architecture — extra entries such
    as `criterion.weight` left aside and counted); a timm train.py checkpoint (`arch` + `state_dict`, with or
    without `args`); a bare state dict or `.safetensors` file with `arch`; `module.`, `model.` and `_orig_mod.`
    prefixes. TorchScript archives and whole pickled models are refused with how to re-save them. Without class
    names, a 3-output model gets the upstream names (said in `notes`); any other is refused. Raises CheckpointError
    with the reason for anything else.
    """
    path = Path(path)
    raw, digest = _safe_load(path)
    parsed = _parse(raw, path, arch, class_names)
    notes: list[str] = []
    if not parsed.arch:
        what = "a bare state dict" if parsed.kind == "state dict" else f"this {parsed.kind} checkpoint"
        raise CheckpointError(f"{path}: {what} does not name its architecture; pass --arch (e.g. efficientnet_b0)")
    state = parsed.state
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the model state is not a dict of tensors")
    state = _strip_prefixes(state)
    rows = _classifier_rows(state)
    names = list(parsed.names) if parsed.names else None
    built = len(names) if names else rows or len(DEFAULT_CLASS_NAMES)
    model = _create_model(parsed.arch, built, parsed.attn_layer, parsed.image_size)
    expected = list(model.state_dict())
    if set(expected) - set(state):  # not the model's keys as they are: find the prefix that carries them
        matched = _match_model_keys(state, expected)
        if matched is not None:
            state, extra = matched
            if extra:
                notes.append(f"{extra} checkpoint entries that are not the model's weights were left aside")
            rows = _classifier_rows(state)
    elif len(state) > len(expected):
        extra = len(state) - len(expected)
        state = {k: state[k] for k in expected}
        notes.append(f"{extra} checkpoint entries that are not the model's weights were left aside")
    if not names:
        if rows not in (None, 3):
            raise CheckpointError(f"{path}: the checkpoint has {rows} classes and no class names; pass --class-names")
        names = list(DEFAULT_CLASS_NAMES)
        notes.append(f"no class names in the checkpoint: assuming {', '.join(names)} (pass --class-names)")
    if rows is not None and rows != len(names):
        raise CheckpointError(f"{path}: {len(names)} class names given for a {rows}-class classifier")
    if built != len(names):  # the prefix hid the classifier at first: build it for the classes it has
        model = _create_model(parsed.arch, len(names), parsed.attn_layer, parsed.image_size)
    expected_state = model.state_dict()
    missing = [k for k in expected_state if k not in state]
    unexpected = [k for k in state if k not in expected_state]
    shape_errors = [k for k, v in expected_state.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shape_errors:
        problems = []
        if missing:
            problems.append(f"missing keys: {describe_names(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {describe_names(unexpected)}")
        if shape_errors:
            problems.append(f"shape mismatch: {describe_names(shape_errors)}")
        raise CheckpointError(f"{path}: weights do not fit {parsed.arch} — " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    model.eval()
    image_size = parsed.image_size
    layer_name = get_layer(model, target_layer)[0] if target_layer else resolve_target_layer(model, image_size)
    return Checkpoint(
        model=model,
        arch=parsed.arch,
        class_names=names,
        image_size=image_size,
        mean=parsed.mean,
        std=parsed.std,
        target_layer_name=layer_name,
        path=path,
        sha256=digest,
        metadata={**parsed.metadata, "format": parsed.kind},
        notes=notes,
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
