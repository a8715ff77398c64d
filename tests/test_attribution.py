"""Pixel attributions through Captum as engine methods: maps equal to Captum run directly with the same arguments,
scored beside the CAMs by compare, accepted by sanity and evidence, and bad options refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency
from pytorch_grad_cam.utils.image import scale_cam_image
from typer.testing import CliRunner

from btxrd_cam.checkpoint import Checkpoint
from btxrd_cam.cli import app
from btxrd_cam.commands.compare import run_compare
from btxrd_cam.engine import CamConfig, Engine, pixel_seed
from btxrd_cam.errors import UsageError
from btxrd_cam.settings import CompareSettings
from tests.conftest import make_tiny_model, project_settings

SIZE = 32


def _engine(**extra):
    model = make_tiny_model()
    checkpoint = Checkpoint(model, "x", ["Normal", "Benign", "Malignant"], SIZE, (0.5,) * 3, (0.25,) * 3, "bn2",
                            None, "")  # fmt: skip
    configs = [CamConfig(m, "input") for m in ("integrated-gradients", "smoothgrad", "occlusion")]
    return Engine(checkpoint, configs=configs, batch_size=3, **extra), model


def _as_map(attribution: torch.Tensor) -> np.ndarray:
    return scale_cam_image(attribution.detach().abs().sum(dim=1).numpy()).astype(np.float32)


def test_maps_equal_captum_run_directly_with_the_same_arguments():
    engine, model = _engine(ig_steps=8, sg_samples=4, occlusion_window=8)
    torch.manual_seed(0)
    x = torch.randn(3, 3, SIZE, SIZE)
    _, maps = engine.explain_all(x, [0, 1, 2])
    black = ((0 - 0.5) / 0.25) * torch.ones(1, 3, SIZE, SIZE)
    targets = [0, 1, 2]
    expected = IntegratedGradients(model).attribute(x, baselines=black, target=targets, n_steps=8)
    assert np.abs(maps["integrated-gradients@input"] - _as_map(expected)).max() <= 1e-4
    parts = []
    for i in range(3):
        torch.manual_seed(pixel_seed(x[i]))
        parts.append(
            NoiseTunnel(Saliency(model)).attribute(
                x[i : i + 1], nt_type="smoothgrad", nt_samples=4, stdevs=engine.smoothgrad_sigma(), target=i, abs=False
            )
        )
    assert np.abs(maps["smoothgrad@input"] - _as_map(torch.cat(parts))).max() <= 1e-4
    occluded = Occlusion(model).attribute(
        x, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), baselines=black, target=targets
    )
    assert np.abs(maps["occlusion@input"] - _as_map(occluded)).max() <= 1e-4
    assert all(m.shape == (3, SIZE, SIZE) and m.max() == pytest.approx(1, abs=1e-3) for m in maps.values())
    assert engine.smoothgrad_sigma() == pytest.approx(0.15 / 0.25)  # 15 % of the input's range (1/std)
    assert engine.passes_per_image(CamConfig("occlusion", "input")) == 7**2


def test_an_images_smoothgrad_map_does_not_depend_on_its_batch():
    engine, _ = _engine(sg_samples=4)
    torch.manual_seed(3)
    x = torch.randn(3, 3, SIZE, SIZE)
    _, together = engine.explain_all(x, [1, 1, 1])
    _, alone = engine.explain_all(x[2:], [1])
    np.testing.assert_allclose(together["smoothgrad@input"][2], alone["smoothgrad@input"][0], atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"ig_steps": 1}, "--ig-steps"), ({"sg_samples": 0}, "--sg-samples"), ({"occlusion_window": 33}, "--occlusion")],
)
def test_bad_attribution_options_are_refused(options, message):
    with pytest.raises(UsageError, match=message):
        _engine(**options)


def test_the_attribution_methods_explain_the_input_only():
    engine, _ = _engine()
    with pytest.raises(UsageError, match="explain the input"):
        Engine(engine.checkpoint, configs=[CamConfig("integrated-gradients", "bn2")])


def test_compare_ranks_a_pixel_attribution_beside_the_cams(tiny_project):
    settings = project_settings(
        CompareSettings, tiny_project, methods="gradcam,integrated-gradients", layers="bn2,blocks.2", ig_steps="4"
    )
    report = json.loads(run_compare(settings).text)
    names = [c["name"] for c in report["configurations"]]
    assert names == ["gradcam@bn2", "gradcam@blocks.2", "integrated-gradients@input", "uniform", "centre", "edges"]
    grids = {c["name"]: c["grid"] for c in report["configurations"]}
    assert grids["integrated-gradients@input"] == [64, 64] and "integrated-gradients@input" in report["ranking"]
    assert report["summary"]["integrated-gradients@input"]["pxap"]["mean"] is not None


@pytest.mark.parametrize(
    ("args", "option"),
    [(["--ig-steps", "1"], "--ig-steps"), (["--sg-samples", "0"], "--sg-samples"),
     (["--occlusion-window", "65", "--method", "occlusion"], "--occlusion-window")],
)  # fmt: skip
def test_the_cli_refuses_bad_attribution_options_with_exit_2(tiny_project, monkeypatch, args, option):
    monkeypatch.chdir(tiny_project)
    result = CliRunner().invoke(app, ["annotate-iou", "-q", *args])
    assert result.exit_code == 2 and option in result.stderr and "Traceback" not in result.output


def test_sanity_and_evidence_take_an_attribution_method(tiny_project, monkeypatch):
    monkeypatch.chdir(tiny_project)
    sanity = CliRunner().invoke(app, ["sanity", "--methods", "gradcam,smoothgrad", "--sg-samples", "2", "--images",
                                      "3", "--no-road", "-q"])  # fmt: skip
    assert sanity.exit_code == 0, sanity.stderr
    assert set(json.loads(sanity.stdout)["methods"]) == {"gradcam", "smoothgrad"}
    evidence = CliRunner().invoke(app, ["evidence", "--methods", "gradcam,occlusion", "--controls", "1", "-q"])
    assert evidence.exit_code == 0, evidence.stderr
    assert set(json.loads(evidence.stdout)["configurations"]) == {"gradcam@bn2", "occlusion@input"}
