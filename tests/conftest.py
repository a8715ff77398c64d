"""Shared fixtures: tiny real data in tmp dirs and a tiny real timm checkpoint in the upstream format."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import hypothesis
import numpy as np
import pytest
import timm
import torch
from torch import nn
from typer.testing import CliRunner

from btxrd_cam.checkpoint import save_upstream_checkpoint
from btxrd_cam.cli import app
from btxrd_cam.data import DEFAULT_CLASS_NAMES
from btxrd_cam.errors import STRICT_ENV
from btxrd_cam.settings import build_settings
from btxrd_cam.synthetic import EQUAL_MIX, write_dataset

# Inside a batch, an unexpected exception would become one image's error record; in the tests it must surface.
os.environ[STRICT_ENV] = "1"

# Fuzzing profiles: a few hundred examples per property in CI, thousands with `make fuzz`.
hypothesis.settings.register_profile("ci", max_examples=200, deadline=5000, print_blob=True)
hypothesis.settings.register_profile("fuzz", max_examples=5000, deadline=5000, print_blob=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LABELME_SAMPLES = SHARED / "labelme-samples"
TINY_ARCH = "test_efficientnet"
TINY_SIZE = 64


class UpstreamWrapper(nn.Module):
    """The upstream training wrapper: a timm model under the attribute `model`."""

    def __init__(self, backbone: str, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.model = timm.create_model(backbone, pretrained=False, num_classes=num_classes, drop_rate=dropout)

    def forward(self, x):
        return self.model(x)


def make_tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(TINY_ARCH, pretrained=False, num_classes=3).eval()
    # random BatchNorm statistics make the tiny untrained model's outputs differ between images
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "best_stratified.pt"
    save_upstream_checkpoint(path, make_tiny_model(), TINY_ARCH, list(DEFAULT_CLASS_NAMES), TINY_SIZE)
    return path


@pytest.fixture(scope="session")
def tiny_project_template(tmp_path_factory, tiny_ckpt) -> Path:
    root = tmp_path_factory.mktemp("project")
    write_dataset(root, n_images=36, seed=3, mix=EQUAL_MIX)
    (root / "checkpoints").mkdir()
    shutil.copy(tiny_ckpt, root / "checkpoints" / "best_stratified.pt")
    return root


@pytest.fixture
def tiny_project(tmp_path, tiny_project_template) -> Path:
    """A fresh copy of a small BTXRD-layout project (36 images, tiny checkpoint) per test."""
    root = tmp_path / "project"
    shutil.copytree(tiny_project_template, root)
    return root


@pytest.fixture
def labelme_samples() -> Path:
    if not LABELME_SAMPLES.is_dir():
        pytest.fail(f"shared LabelMe samples missing at {LABELME_SAMPLES}")
    return LABELME_SAMPLES


def project_settings(model, project: Path, **extra):
    """Settings of `model` for a project made by the fixtures (output under project/out, no threads)."""
    values = dict(
        ckpt=project / "checkpoints/best_stratified.pt",
        data_root=project / "data_raw",
        splits_dir=project / "data/splits",
        quiet=True,
        workers=0,
    )
    if "out" in model.model_fields:
        values["out"] = project / "out"
    return build_settings(model, **{**values, **extra})


def write_labelme(path: Path, shapes: list[dict], height: int, width: int) -> Path:
    path.write_text(
        json.dumps(
            {
                "version": "5.2.1",
                "shapes": shapes,
                "imageHeight": height,
                "imageWidth": width,
                "imagePath": "elsewhere.jpg",
                "imageData": None,
            }
        )
    )
    return path


def gray_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def invoke(args, cwd=None):
    """`btxrd-cam ARGS` through Typer's CliRunner, run from `cwd` (the working directory put back after)."""
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        return CliRunner().invoke(app, args, catch_exceptions=False)
    finally:
        os.chdir(old)
