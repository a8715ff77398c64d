"""Any model our users train: ViT, DeiT (distilled: two prefix tokens), Swin (NHWC stages), ConvNeXt and ResNet —
maps equal to pytorch-grad-cam run with its tutorials' reshape transforms, and every command on each, from a
checkpoint in the upstream format."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import timm
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from typer.testing import CliRunner

from btxrd_cam.checkpoint import load_checkpoint, save_upstream_checkpoint
from btxrd_cam.cli import app
from btxrd_cam.data import DEFAULT_CLASS_NAMES
from btxrd_cam.engine import CamConfig, Engine
from btxrd_cam.errors import UsageError
from btxrd_cam.layers import auto_layers, layer_layouts
from btxrd_cam.maps import upsample_cam
from btxrd_cam.synthetic import EQUAL_MIX, write_dataset

# (timm name, input size): small inputs keep the tests fast; Swin's windows shrink with its input
MODELS = {
    "vit_tiny": ("vit_tiny_patch16_224", 64),
    "deit_tiny": ("deit_tiny_distilled_patch16_224", 64),
    "swin_tiny": ("swin_tiny_patch4_window7_224", 128),
    "convnext": ("test_convnext", 64),
    "resnet": ("test_resnet", 64),
}
REFERENCE = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM, "eigencam": EigenCAM}


def vit_reshape_transform(tensor, height, width, prefix):
    """pytorch-grad-cam's ViT tutorial transform (`reshape_transform(tensor, height=14, width=14)`), with the grid
    and the number of prefix tokens of the model at hand (1 for ViT, 2 for distilled DeiT)."""
    result = tensor[:, prefix:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def swin_reshape_transform(tensor):
    """pytorch-grad-cam's Swin tutorial reshapes [B, 49, C] tokens to [B, C, 7, 7]; timm ≥ 0.9's Swin stages give
    [B, H, W, C] already, so the same transform is a permutation."""
    return tensor.permute(0, 3, 1, 2)


def _model(name):
    arch, size = MODELS[name]
    torch.manual_seed(0)
    kwargs = {"img_size": size} if name in ("vit_tiny", "deit_tiny", "swin_tiny") else {}
    return timm.create_model(arch, pretrained=False, num_classes=3, **kwargs).eval(), arch, size


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """An upstream-format checkpoint of each model."""
    folder = tmp_path_factory.mktemp("transformers")
    paths = {}
    for name in MODELS:
        model, arch, size = _model(name)
        paths[name] = folder / f"{name}.pt"
        save_upstream_checkpoint(paths[name], model, arch, list(DEFAULT_CLASS_NAMES), size)
    return paths


@pytest.mark.parametrize(
    ("name", "layer", "default"),
    [
        ("vit_tiny", "blocks.11.norm1", True),
        ("vit_tiny", "blocks.8", False),
        ("deit_tiny", "blocks.11.norm1", True),
        ("deit_tiny", "blocks.5.norm1", False),
        ("swin_tiny", "layers.3", True),
        ("swin_tiny", "layers.2", False),
    ],
)
def test_transformer_maps_equal_pytorch_grad_cam_with_its_reshape_transform(checkpoints, name, layer, default):
    ckpt = load_checkpoint(checkpoints[name], target_layer=None if default else layer)
    assert ckpt.target_layer_name == layer
    model, size = ckpt.model, ckpt.image_size
    layout = layer_layouts(model, [layer], size)[layer]
    if name == "swin_tiny":
        assert layout.kind == "nhwc"
        transform = swin_reshape_transform
    else:
        assert layout.kind == "tokens" and layout.grid == tuple(model.patch_embed.grid_size)
        assert layout.prefix == (2 if name == "deit_tiny" else 1)
        transform = lambda t: vit_reshape_transform(t, *layout.grid, layout.prefix)  # noqa: E731
    torch.manual_seed(1)
    x = torch.randn(3, 3, size, size)
    engine = Engine(ckpt, configs=[CamConfig(method, layer) for method in REFERENCE])
    _, maps = engine.explain_all(x, [0, 1, 2])
    targets = [ClassifierOutputTarget(t) for t in (0, 1, 2)]
    for method, cls in REFERENCE.items():
        with cls(model, target_layers=[model.get_submodule(layer)], reshape_transform=transform) as reference:
            expected = reference(x, targets)
        mine = np.stack([upsample_cam(c, (size, size)) for c in maps[f"{method}@{layer}"]])
        assert np.abs(mine - expected).max() <= 1e-4, method
        assert expected.max() > 0  # a real map, not two zero maps agreeing


def test_a_layer_whose_layout_cannot_be_known_is_refused_never_guessed(checkpoints):
    ckpt = load_checkpoint(checkpoints["vit_tiny"])
    with pytest.raises(UsageError, match=r"--layers: 'head' outputs \[1, 3\], not a feature map.*choose"):
        layer_layouts(ckpt.model, ["head"], ckpt.image_size)
    with pytest.raises(UsageError, match="ablationcam"):
        Engine(ckpt, configs=[CamConfig("ablationcam", "blocks.11.norm1")])


def test_auto_layers_are_the_last_blocks_each_tensor_once():
    vit, _, size = _model("vit_tiny")
    assert auto_layers(vit, "blocks.11.norm1", size) == ["blocks.11.norm1", "blocks.10", "blocks.9", "blocks.8"]
    swin, _, size = _model("swin_tiny")
    assert auto_layers(swin, "layers.3", size) == ["layers.3", "layers.2", "layers.1", "layers.0"]
    torch.manual_seed(0)
    mobilenet = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=3).eval()
    layers = auto_layers(mobilenet, "blocks", 64)
    assert layers[0] == "blocks" and "blocks.5" not in layers and len(layers) == len(set(layers))


def test_a_fixed_size_model_is_built_at_the_checkpoints_size(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=96)
    path = tmp_path / "vit96.pt"
    save_upstream_checkpoint(path, model, "vit_tiny_patch16_224", list(DEFAULT_CLASS_NAMES), 96)
    ckpt = load_checkpoint(path)
    assert tuple(ckpt.model.patch_embed.img_size) == (96, 96) and tuple(ckpt.model.patch_embed.grid_size) == (6, 6)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(ckpt.model(x), model.eval()(x), atol=1e-5)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A small BTXRD-layout project of small images (every command's split)."""
    root = tmp_path_factory.mktemp("architectures")
    write_dataset(root, n_images=21, seed=2, mix=EQUAL_MIX, long_side_range=(96, 128))
    return root


@pytest.mark.parametrize("name", list(MODELS))
def test_every_command_runs_on_each_architecture(project, checkpoints, name, monkeypatch, tmp_path):
    work = tmp_path / name
    shutil.copytree(project, work)
    (work / "checkpoints").mkdir(exist_ok=True)
    shutil.copy(checkpoints[name], work / "checkpoints/best_stratified.pt")
    monkeypatch.chdir(work)
    image = sorted((work / "data_raw/images").iterdir())[0]
    runs = {
        "infer": ["infer", "-q"],
        "explain-image": ["explain-image", str(image), "--out", "cams", "-q"],
        "gallery": ["gallery", "--k", "1", "-q"],
        "annotate-iou": ["annotate-iou", "-q"],
        "compare": ["compare", "--methods", "gradcam,layercam", "-q"],
        "evidence": ["evidence", "--controls", "1", "-q"],
        "sanity": ["sanity", "--images", "3", "--road-images", "1", "--methods", "gradcam", "-q"],
    }
    for command, args in runs.items():
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (command, result.stderr[-2000:])
    comparison = json.loads((work / "results/gradcam/comparison_report.json").read_text())
    grids = {c["name"]: c["grid"] for c in comparison["configurations"] if c["method"]}
    assert len(grids) == 8 and all(min(grid) >= 1 and max(grid) <= 64 for grid in grids.values())
    if name == "swin_tiny":  # not the [7, 768] of an NHWC map read as NCHW
        assert grids["gradcam@layers.3"] == [4, 4]
