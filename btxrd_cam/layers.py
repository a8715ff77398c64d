"""Finding layers in a model generically: the CAM layer, the feature stages, and how each layer's output becomes a
feature map — its layout.

Works from timm's `feature_info` where the model has it, else from the module tree and one dummy forward, so
that EfficientNet, ResNet, ConvNeXt and DenseNet need no special case. Transformers are a layout, not a special
model: a layer's output is read as one of a small table of layouts (`Layout`) —

- `nchw`: a convolutional feature map [B, C, h, w] (CNNs; any convolution or batch norm);
- `nhwc`: [B, h, w, C], permuted to [B, C, h, w] (timm's Swin and other models that declare `output_fmt` NHWC);
- `tokens`: [B, prefix + h·w, C] (ViT, DeiT, BEiT: `num_prefix_tokens` class / distillation / register tokens
  dropped, the patch tokens reshaped to the patch grid the model's `patch_embed.grid_size` names — never a grid
  guessed from a square root).

A layer whose layout cannot be known is refused, never guessed. The engine applies the layout where it captures
activations and gradients; nothing above it knows a model is a transformer. Not for: running the model on images
(engine.py) or loading it (checkpoint.py).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch
from torch import nn

from btxrd_cam.errors import CheckpointError, UsageError

TRUNK_CONTAINERS = ("features", "stages")
CONV_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


@dataclass(frozen=True)
class Layout:
    """How a layer's output becomes a feature map [B, C, h, w]: `kind` nchw, nhwc or tokens; `grid` (h, w); `prefix`
    tokens dropped before the patch tokens (tokens only)."""

    kind: str
    grid: tuple[int, int]
    prefix: int = 0

    def to_nchw(self, tensor: torch.Tensor) -> torch.Tensor:
        """The layer's output (or its gradient) as [B, C, h, w]."""
        if self.kind == "nchw":
            return tensor
        if self.kind == "nhwc":
            return tensor.permute(0, 3, 1, 2)
        batch, _, channels = tensor.shape
        return tensor[:, self.prefix :, :].reshape(batch, *self.grid, channels).permute(0, 3, 1, 2)


def patch_grid(model: nn.Module) -> tuple[int, int] | None:
    """The patch grid (h, w) of a vision transformer (timm's `patch_embed.grid_size`), None for other models."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        return None
    try:
        height, width = (int(v) for v in grid)
    except (TypeError, ValueError):
        return None
    return height, width


def layer_layout(model: nn.Module, module: nn.Module, output) -> Layout | str:
    """The layout of one layer's output (seen in a dummy forward), or why it cannot be known."""
    if not isinstance(output, torch.Tensor):
        return f"outputs {type(output).__name__}, not a tensor"
    shape = list(output.shape)
    if output.ndim == 4:
        declared = str(getattr(model, "output_fmt", "NCHW")).upper()
        if isinstance(module, CONV_MODULES) or declared != "NHWC":
            return Layout("nchw", (shape[2], shape[3]))
        return Layout("nhwc", (shape[1], shape[2]))
    if output.ndim == 3:
        grid = patch_grid(model)
        prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        if grid is not None:
            patches = grid[0] * grid[1]
            if shape[1] == prefix + patches:
                return Layout("tokens", grid, prefix)
            if shape[1] == patches:
                return Layout("tokens", grid, 0)
        return f"outputs tokens {shape} whose patch grid is not known (no patch_embed.grid_size to match)"
    return f"outputs {shape}, not a feature map ([B, C, h, w], [B, h, w, C] or tokens [B, N, C])"


def describe_names(names: list[str], limit: int = 5) -> str:
    """`a, b, c, d, e (+3 more)`: a few names for an error message."""
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def parse_layer_name(name: str) -> str:
    """`stages[-1]` → `stages.-1`; dotted names pass through."""
    return re.sub(r"\[(-?\d+)\]", r".\1", name).strip(".")


def get_layer(model: nn.Module, name: str, option: str = "--target-layer") -> tuple[str, nn.Module]:
    """Resolve a layer name (dotted, `[i]` indices allowed, negative too) to its canonical name and module.

    CheckpointError (a usage error) naming `option`, the value and the valid names at the level that failed.
    """
    parts, module, canonical = parse_layer_name(name).split("."), model, []
    for part in parts:
        children = dict(module.named_children())
        if part.lstrip("-").isdigit() and part.startswith("-") and children:
            part = list(children)[int(part)] if -len(children) <= int(part) else part
        if part not in children:
            where = f"{'.'.join(canonical)}'s children" if canonical else "top-level layers"
            raise CheckpointError(
                f"{option}: {name!r} is not a layer of this model (at {part!r}; {where}: "
                f"{describe_names(list(children))})"
            )
        module, canonical = children[part], [*canonical, part]
    return ".".join(canonical), module


def _dummy_forward(
    model: nn.Module, image_size: int, hooked: dict[str, nn.Module], order: list[str] | None = None
) -> dict[str, object]:
    """Outputs of the hooked modules (first call each) for one zero image, the model's mode left as it was; `order`
    receives the names in the order their modules returned."""
    outputs: dict[str, object] = {}
    handles = []

    def hook_for(name):
        def hook(module, inputs, output):
            if name not in outputs and order is not None:
                order.append(name)
            outputs.setdefault(name, output)

        return hook

    for name, module in hooked.items():
        handles.append(module.register_forward_hook(hook_for(name)))
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return outputs


def transformer_target_layer(model: nn.Module) -> str | None:
    """The CAM layer of a transformer, or None for other models. A ViT / DeiT / BEiT: the last block's `norm1`, as
    pytorch-grad-cam's ViT tutorial hooks it — the head reads the class token only, so the last block's output has
    no gradient at the patch tokens, while its `norm1` feeds the attention that mixes them into the class token. A
    model with NHWC stages (Swin): the last stage's output, the feature map its head pools."""
    blocks = getattr(model, "blocks", None)
    if patch_grid(model) is not None and isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
        last = len(blocks) - 1
        if hasattr(blocks[last], "norm1"):
            return f"blocks.{last}.norm1"
        return f"blocks.{last}"
    if str(getattr(model, "output_fmt", "")).upper() == "NHWC":
        info = getattr(model, "feature_info", None)
        names = [entry.get("module") for entry in info or [] if isinstance(entry, dict) and entry.get("module")]
        if names:
            return parse_layer_name(names[-1])
    return None


def resolve_target_layer(model: nn.Module, image_size: int = 224) -> str:
    """Name of the module whose output is the final 4-D feature map, the one global pooling reads (transformers:
    see transformer_target_layer).

    Found by one dummy forward: the feature map is what `forward_features` returns (timm), else the last 4-D
    output with more than one pixel. The outermost module producing that very tensor wins (EfficientNet `bn2`,
    ResNet `layer4`), descending into whole-trunk containers (`features`, `stages`) to their last child
    (DenseNet `features.norm5`, ConvNeXt `stages.3`). Pass-through modules (Identity) never count.
    """
    found = transformer_target_layer(model)
    if found is not None:
        return found
    outputs: list[tuple[str, torch.Tensor]] = []
    handles = []

    def hook_for(name):
        def hook(module, inputs, output):
            passthrough = bool(inputs) and output is inputs[0]
            if isinstance(output, torch.Tensor) and output.ndim == 4 and not passthrough:
                outputs.append((name, output))

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook_for(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, 3, image_size, image_size)
            if hasattr(model, "forward_features"):
                features = model.forward_features(x)
            else:
                model(x)
                features = next(o for _, o in reversed(outputs) if o.shape[-1] * o.shape[-2] > 1)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    producers = [name for name, output in outputs if output is features]
    if not producers:
        raise CheckpointError("could not find the feature-map layer of this model; pass --target-layer NAME")
    outermost = min(producers, key=lambda n: (n.count("."), -producers.index(n)))
    if outermost in TRUNK_CONTAINERS:
        children = [n for n in producers if n.startswith(outermost + ".") and n.count(".") == 1]
        if children:
            outermost = children[-1]
    return outermost


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def stage_container(model: nn.Module) -> str | None:
    """The child of the model that holds its stages (EfficientNet `blocks`, ConvNeXt `stages`): the sequence of at
    least three modules holding the most parameters, if that is over a quarter of the model's. None when the stages
    are top-level (ResNet)."""
    total = sum(p.numel() for p in model.parameters()) or 1
    sizes = {
        name: sum(p.numel() for p in child.parameters())
        for name, child in model.named_children()
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) >= 3
    }
    best = max(sizes, key=sizes.get, default=None)
    return best if best is not None and sizes[best] > total / 4 else None


def stage_names(model: nn.Module) -> list[str]:
    """The model's stages in forward order: the children of its stage container that hold parameters (`blocks.0`
    … `blocks.6`), or the top-level sequences holding parameters (ResNet `layer1` … `layer4`); [] when neither."""
    container = stage_container(model)
    if container is not None:
        children = getattr(model, container).named_children()
        return [f"{container}.{name}" for name, child in children if _has_parameters(child)]
    return [
        name for name, child in model.named_children() if isinstance(child, nn.Sequential) and _has_parameters(child)
    ]


def feature_stages(model: nn.Module, image_size: int = 224) -> list[str]:
    """Modules whose outputs are the model's feature maps at each resolution, in forward order.

    timm's `feature_info` where the model has it (EfficientNet-B0 `blocks.0, 1, 2, 4, 6`; ResNet `act1,
    layer1 … layer4`); otherwise, from one dummy forward, the last stage at each spatial resolution.
    """
    info = getattr(model, "feature_info", None)
    if info:
        names = [entry.get("module") for entry in info if isinstance(entry, dict) and entry.get("module")]
        if names:
            return [parse_layer_name(n) for n in names]
    candidates = stage_names(model)
    outputs = _dummy_forward(model, image_size, {n: model.get_submodule(n) for n in candidates})
    last_at: dict[tuple[int, int], str] = {}
    for name in candidates:
        output = outputs.get(name)
        if isinstance(output, torch.Tensor) and output.ndim == 4:
            last_at.pop(tuple(output.shape[-2:]), None)
            last_at[tuple(output.shape[-2:])] = name  # re-inserted: dict order follows the last module
    return list(last_at.values())


def auto_layers(model: nn.Module, target_layer: str, image_size: int = 224, earlier: int = 3) -> list[str]:
    """`--layers auto`: the target layer, then the outputs of the `earlier` stages before it, latest first — each
    tensor once (MobileNetV3's `blocks` and `blocks.5` are one), and only stages that run before the target layer
    (a ViT's last block runs after its `norm1`, and its output has no gradient at the patch tokens).

    EfficientNet-B0: bn2, blocks.6, blocks.4, blocks.2; ResNet: layer4 … layer1; ViT-Tiny: blocks.11.norm1,
    blocks.10, blocks.9, blocks.8; Swin: layers.3 … layers.0.
    """
    stages = [name for name in reversed(feature_stages(model, image_size)) if name != target_layer]
    modules = {name: model.get_submodule(name) for name in [target_layer, *stages]}
    order: list[str] = []
    outputs = _dummy_forward(model, image_size, modules, order)
    target_at = order.index(target_layer) if target_layer in order else len(order)
    chosen, seen = [target_layer], [outputs.get(target_layer)]
    for name in stages:
        output = outputs.get(name)
        if name not in order or order.index(name) > target_at or any(output is s for s in seen):
            continue
        chosen.append(name)
        seen.append(output)
        if len(chosen) == earlier + 1:
            break
    return chosen


def layer_layouts(model: nn.Module, names: list[str], image_size: int, option: str = "--layers") -> dict:
    """{name: Layout} of each named layer at the model's input size; UsageError naming the layer, its output and
    how to choose another for a layer the forward never calls or whose layout cannot be known (a classifier, a
    pooled vector, tokens without a known grid)."""
    modules = {name: model.get_submodule(name) for name in names}
    outputs = _dummy_forward(model, image_size, modules)
    layouts = {}
    for name in names:
        if name not in outputs:
            raise UsageError(f"{option}: {name!r} is never called in the model's forward pass, so it has no map")
        layout = layer_layout(model, modules[name], outputs[name])
        if isinstance(layout, str):
            raise UsageError(
                f"{option}: {name!r} {layout}; choose a layer whose output is a feature map — the stages before "
                "global pooling, or a transformer block (e.g. blocks.N.norm1)"
            )
        layouts[name] = layout
    return layouts


def layer_grids(model: nn.Module, names: list[str], image_size: int, option: str = "--layers") -> dict:
    """The feature grid (h, w) each named layer outputs at the model's input size (see layer_layouts)."""
    return {name: layout.grid for name, layout in layer_layouts(model, names, image_size, option).items()}


def classifier_name(model: nn.Module) -> str | None:
    """The module that computes the logits: timm's `get_classifier()`, else the last Linear layer; None if neither
    is found (or it has no parameters)."""
    named = dict(model.named_modules())
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        with contextlib.suppress(Exception):
            classifier = getter()
            found = next((name for name, module in named.items() if module is classifier and name), None)
            if found and any(True for _ in classifier.parameters()):
                return found
    linears = [name for name, module in named.items() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


@dataclass(frozen=True)
class RandomisationStep:
    """One step of the model parameter randomisation test: a name and the modules it re-initialises."""

    name: str
    modules: tuple[str, ...]


def randomisation_steps(model: nn.Module, image_size: int = 224) -> tuple[list[RandomisationStep], str | None]:
    """The model's parts from the top down (Adebayo et al. 2018): the classifier, the head (what runs between the
    last stage and the classifier: EfficientNet `conv_head` + `bn2`), each stage from the last to the first
    (`blocks.6` … `blocks.0`; ResNet `layer4` … `layer1`), then the stem (what runs before the first stage).

    Found generically from the module tree and one dummy forward. Returns (steps, fallback): when no classifier or
    no stages are recognisable, the steps are the top-level modules holding parameters in reverse forward order, and
    `fallback` says so.
    """
    classifier, stages = classifier_name(model), stage_names(model)
    leaves = {
        name: module
        for name, module in model.named_modules()
        if name and any(True for _ in module.parameters(recurse=False))
    }
    called = list(_dummy_forward(model, image_size, leaves))  # forward order of the modules that hold weights
    if classifier is None or not stages:
        top = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
        order = {name: min((i for i, leaf in enumerate(called) if _under(leaf, name)), default=-1) for name in top}
        reason = "no recognisable classifier" if classifier is None else "no recognisable stages"
        steps = [RandomisationStep(name, (name,)) for name in sorted(top, key=lambda n: -order[n])]
        return steps, f"{reason}: randomising the top-level modules in reverse forward order instead"
    first = min(i for i, leaf in enumerate(called) if any(_under(leaf, s) for s in stages))
    last = max(i for i, leaf in enumerate(called) if any(_under(leaf, s) for s in stages))
    outside = [(i, leaf) for i, leaf in enumerate(called) if not any(_under(leaf, s) for s in stages)]
    outside = [(i, leaf) for i, leaf in outside if not _under(leaf, classifier)]
    head = tuple(leaf for i, leaf in outside if i > last)
    stem = tuple(leaf for i, leaf in outside if i < first)
    steps = [RandomisationStep("classifier", (classifier,))]
    if head:
        steps.append(RandomisationStep("head", head))
    steps += [RandomisationStep(stage, (stage,)) for stage in reversed(stages)]
    if stem:
        steps.append(RandomisationStep("stem", stem))
    return steps, None


def _under(name: str, parent: str) -> bool:
    return name == parent or name.startswith(parent + ".")
