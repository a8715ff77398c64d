import json

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn

from btxrd_cam.checkpoint import Checkpoint, save_upstream_checkpoint
from btxrd_cam.commands.sanity import choose_images, run_sanity, sample_pairs
from btxrd_cam.data import ImageItem
from btxrd_cam.engine import CamConfig, Engine
from btxrd_cam.errors import UsageError
from btxrd_cam.faithfulness import road_combined
from btxrd_cam.layers import randomisation_steps
from btxrd_cam.maps import spearman, upsample_cam
from btxrd_cam.randomisation import randomised_models
from btxrd_cam.settings import SanitySettings
from tests.conftest import TINY_ARCH, TINY_SIZE, make_tiny_model, project_settings


class TwoDetectorNet(nn.Module):
    """Feature 0 fires on bright pixels, feature 1 on dark ones; the trained classifier calls class 1 on bright
    evidence only, so its Grad-CAM is the bright region. Random classifier weights mix in the dark region."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.AvgPool2d(4), nn.Identity())
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])[:, :, None, None] / 3)
            self.features[0].bias.copy_(torch.tensor([-0.6, 0.4]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.0, 0.0], [30.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def _image():
    x = torch.full((1, 3, 32, 32), 0.5)
    x[:, :, 4:12, 4:12] = 1.0  # bright: the evidence
    x[:, :, 20:28, 18:26] = 0.0  # dark: what class 1 must ignore
    return x


def _ckpt(model, size=32, layer="features"):
    return Checkpoint(model, "x", ["Other", "Bright"], size, (0.0,) * 3, (1.0,) * 3, layer, None, "")


def test_randomising_the_classifier_must_change_the_cam():
    model = TwoDetectorNet().eval()
    steps, fallback = randomisation_steps(model, 32)
    assert fallback is None and steps[0].name == "classifier" and steps[0].modules == ("fc",)
    config = [CamConfig("gradcam", "features")]
    x = _image()
    _, trained = Engine(_ckpt(model), configs=config).explain_all(x, [1])
    trained = upsample_cam(trained["gradcam@features"][0], (32, 32))
    assert trained[4:12, 4:12].mean() > 0.5 and trained[20:28, 18:26].max() < 0.05  # the bright patch
    step, randomised_model, _ = next(randomised_models(model, steps, "cascading", seed=0))
    assert step.name == "classifier"
    _, after = Engine(_ckpt(randomised_model), configs=config).explain_all(x, [1])
    after = upsample_cam(after["gradcam@features"][0], (32, 32))
    assert spearman(trained, after) < 0.5
    assert torch.equal(model.fc.weight, torch.tensor([[0.0, 0.0], [30.0, 0.0]]))  # the user's model untouched


def _changed(model, trained_state) -> set[str]:
    state = model.state_dict()
    return {
        key.split(".")[0] if not key.startswith("blocks") else ".".join(key.split(".")[:2])
        for key, value in state.items()
        if not torch.equal(value, trained_state[key]) and "num_batches_tracked" not in key
    }


def test_cascading_and_independent_orders_randomise_the_right_modules():
    model = make_tiny_model().train()  # a mode to keep
    trained_state = {k: v.clone() for k, v in model.state_dict().items()}
    steps, _ = randomisation_steps(model, TINY_SIZE)
    assert [s.name for s in steps] == ["classifier", "head", *[f"blocks.{i}" for i in range(4, -1, -1)], "stem"]
    owners = {
        "classifier": {"classifier"},
        "head": {"conv_head", "bn2"},
        "stem": {"conv_stem", "bn1"},
        **{f"blocks.{i}": {f"blocks.{i}"} for i in range(5)},
    }
    cascading = {s.name: (_changed(m, trained_state), m.state_dict()) for s, m, _ in
                 randomised_models(model, steps, "cascading", seed=3)}  # fmt: skip
    independent = {s.name: (_changed(m, trained_state), m.state_dict()) for s, m, _ in
                   randomised_models(model, steps, "independent", seed=3)}  # fmt: skip
    so_far: set[str] = set()
    for step in steps:
        so_far |= owners[step.name]
        assert cascading[step.name][0] == so_far, step.name
        assert independent[step.name][0] == owners[step.name], step.name
        for key in independent[step.name][1]:  # step k draws the same weights in both orders
            if any(key == o or key.startswith(o + ".") for o in owners[step.name]):
                assert torch.equal(independent[step.name][1][key], cascading[step.name][1][key]), key
    # BatchNorm running statistics are reset with the weights
    assert torch.equal(cascading["head"][1]["bn2.running_mean"], torch.zeros_like(trained_state["bn2.running_mean"]))
    # the user's model is never altered: same weights, same mode
    assert all(torch.equal(v, trained_state[k]) for k, v in model.state_dict().items()) and model.training


def test_reference_pairs_never_pair_an_image_with_itself():
    pairs = sample_pairs(30, 200, seed=1)
    assert len(pairs) == 200 == len(set(pairs)) and all(i < j for i, j in pairs)
    assert sample_pairs(5, 200, seed=1) == [(i, j) for i in range(5) for j in range(i + 1, 5)]
    assert sample_pairs(30, 200, seed=1) == pairs  # fixed seed


def test_images_are_chosen_balanced_by_class_and_deterministically():
    items = [ImageItem(f"{label}{i}", None, label) for label in ("Normal", "Benign", "Malignant") for i in range(10)]
    items += [ImageItem(f"Extra{i}", None, "Normal") for i in range(20)]
    chosen, note = choose_images(items, 9, seed=0)
    assert note is None and sorted(c.label for c in chosen) == ["Benign"] * 3 + ["Malignant"] * 3 + ["Normal"] * 3
    assert choose_images(items, 9, seed=0)[0] == chosen and choose_images(items, 9, seed=1)[0] != chosen
    few, note = choose_images(items[:4], 48, seed=0)
    assert len(few) == 4 and "fewer than --images 48" in note


def test_road_equals_pytorch_grad_cams_road_combined():
    torch.manual_seed(0)
    model = make_tiny_model().eval()
    x = torch.randn(3, 3, 32, 32)
    maps = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    mine = road_combined(model, x, maps, [0, 1, 2], seed=11)
    torch.manual_seed(11)
    targets = [ClassifierOutputSoftmaxTarget(c) for c in (0, 1, 2)]
    expected = ROADCombined(percentiles=[20, 40, 60, 80])(x, maps, targets, model)
    np.testing.assert_array_equal(mine, expected)


def _settings(project, **extra):
    return project_settings(SanitySettings, project, **{"images": "6", "road_images": "2", **extra})


@pytest.fixture(scope="module")
def sanity_run(tmp_path_factory, tiny_project_template):
    import shutil

    project = tmp_path_factory.mktemp("sanity") / "project"
    shutil.copytree(tiny_project_template, project)
    ckpt = project / "checkpoints/best_stratified.pt"
    return project, run_sanity(_settings(project, against=ckpt))


def test_the_report_holds_steps_verdicts_controls_and_road(sanity_run):
    project, outcome = sanity_run
    report = json.loads(outcome.text)
    assert report["steps"][0] == "classifier" and report["steps"][-1] == "stem"
    assert set(report["methods"]) == {"gradcam", "gradcam++", "xgradcam", "layercam", "eigencam"}
    for body in report["methods"].values():
        assert [row["step"] for row in body["per_step"]] == report["steps"]
        assert set(body["verdict"].values()) <= {"passes", "fails"}
    # the control cannot depend on the model: exactly 1 at every step
    for row in report["control"]["per_step"]:
        assert row["spearman"] == {"mean": 1.0, "ci95": [1.0, 1.0]} and row["ssim"] == {"mean": 1.0, "ci95": [1.0, 1.0]}
    assert set(report["road"]["rows"]) == {*report["methods"], "edges", "centre", "noise"}
    assert report["road"]["images"] == 2 and report["road"]["percentiles"] == [20, 40, 60, 80]
    assert report["reference"]["gradcam"]["pairs"] == 15  # every pair of the 6 images
    for name in ("sanity_report.json", "sanity.png", "sanity_maps.png"):
        assert (project / "out" / name).is_file()
    assert json.loads((project / "out/sanity_report.json").read_text()) == json.loads(outcome.text)


def test_a_checkpoint_against_itself_is_identical(sanity_run):
    reproducibility = sanity_run[1].report["reproducibility"]
    assert reproducibility["prediction_agreement"] == 1.0
    for body in reproducibility["methods"].values():
        assert body["spearman"]["mean"] == pytest.approx(1.0) and body["ssim"]["mean"] == pytest.approx(1.0)


def test_same_inputs_give_byte_identical_json(sanity_run):
    project, outcome = sanity_run
    again = run_sanity(_settings(project, against=project / "checkpoints/best_stratified.pt", workers=2))
    assert again.text == outcome.text


def test_independent_order_has_no_verdict_but_says_where_the_reference_is_reached(tiny_project):
    report = run_sanity(_settings(tiny_project, order="independent", road=False, methods="gradcam")).report
    assert report["methods"]["gradcam"]["verdict"] == {"spearman": None, "ssim": None}
    assert report["road"] is None and report["settings"]["order"] == "independent"


def test_bad_inputs_are_usage_errors(tiny_project, tmp_path):
    with pytest.raises(UsageError, match="--images: got 0; must be a whole number ≥ 1"):
        _settings(tiny_project, images="0")
    with pytest.raises(UsageError, match="--methods: got saliency"):
        _settings(tiny_project, methods="saliency")
    other = tmp_path / "other.pt"
    save_upstream_checkpoint(other, make_tiny_model(), TINY_ARCH, ["A", "B", "C"], TINY_SIZE)
    with pytest.raises(UsageError, match="--against: .* is not comparable: it has classes A, B, C"):
        run_sanity(_settings(tiny_project, against=other))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(UsageError, match="not a readable PyTorch checkpoint"):
        run_sanity(_settings(tiny_project, against=tmp_path / "junk.pt"))


class Unstructured(nn.Module):
    """No Linear classifier and no sequence of stages."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(4, 2, 3)

    def forward(self, x):
        return self.b(self.a(x)).mean((2, 3))


def test_an_unrecognisable_model_falls_back_to_reverse_module_order():
    steps, fallback = randomisation_steps(Unstructured(), 16)
    assert [s.name for s in steps] == ["b", "a"] and "no recognisable classifier" in fallback
