import cv2
import numpy as np
import pytest
import timm
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from torch import nn

from btxrd_cam.checkpoint import Checkpoint, resolve_target_layer
from btxrd_cam.data import ImageItem
from btxrd_cam.engine import METHODS, SINGLE_PASS, CamConfig, Engine, eigen_projection, frozen_eval
from btxrd_cam.errors import UsageError
from btxrd_cam.layers import auto_layers
from btxrd_cam.maps import upsample_cam
from tests.conftest import gray_image


def _checkpoint(model, size=64, layer=None, names=("Normal", "Benign", "Malignant")):
    return Checkpoint(
        model=model,
        arch="x",
        class_names=list(names),
        image_size=size,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        target_layer_name=layer or resolve_target_layer(model, size),
        path=None,
        sha256="",
    )


def _model(arch):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=3).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics so that images differ
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("arch", ["test_efficientnet", "resnet18"])
@pytest.mark.parametrize("method, cls", [("gradcam", GradCAM), ("hirescam", HiResCAM), ("gradcam++", GradCAMPlusPlus)])
def test_single_pass_maps_equal_pytorch_grad_cam(arch, method, cls):
    model = _model(arch)
    ckpt = _checkpoint(model)
    x = torch.randn(4, 3, 64, 64)
    engine = Engine(ckpt, method=method)
    logits, cams = engine.explain_tensors(x, [None, 0, 2, None])
    with torch.inference_mode():
        plain = model(x)
    assert torch.allclose(logits, plain, atol=1e-5)  # the prediction comes from the CAM pass
    targets = [int(plain[0].argmax()), 0, 2, int(plain[3].argmax())]
    with cls(model, target_layers=[ckpt.target_layer]) as reference:
        expected = reference(x, [ClassifierOutputTarget(t) for t in targets])
    mine = np.stack([upsample_cam(c, (64, 64)) for c in cams])
    assert np.abs(mine - expected).max() <= 1e-4


@pytest.mark.parametrize("arch", ["test_efficientnet", "resnet18"])
def test_one_pass_over_every_method_and_layer_equals_pytorch_grad_cam_run_for_each(arch):
    model = _model(arch)
    ckpt = _checkpoint(model)
    layers = auto_layers(model, ckpt.target_layer_name, 64)
    assert len(layers) == 4
    configs = [CamConfig(method, layer) for method in SINGLE_PASS for layer in layers]
    engine = Engine(ckpt, configs=configs)
    x = torch.randn(4, 3, 64, 64)
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    logits, maps = engine.explain_all(x, [None, 0, 2, None])
    handle.remove()
    assert len(calls) == 1 and list(maps) == [c.name for c in configs]  # one forward for all 28
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient was computed
    with torch.inference_mode():
        plain = model(x)
    assert torch.allclose(logits, plain, atol=1e-5)
    targets = [ClassifierOutputTarget(t) for t in (int(plain[0].argmax()), 0, 2, int(plain[3].argmax()))]
    for config in configs:
        with METHODS[config.method](model, target_layers=[model.get_submodule(config.layer)]) as reference:
            expected = reference(x, targets)
        mine = np.stack([upsample_cam(c, (64, 64)) for c in maps[config.name]])
        assert np.abs(mine - expected).max() <= 1e-4, config.name
        assert maps[config.name].shape[1:] == engine.grids[config.layer]


def test_eigen_projection_equals_the_librarys():
    rng = np.random.default_rng(0)
    for shape in [(2, 64, 3, 3), (2, 8, 12, 12)]:
        activations = rng.standard_normal(shape).astype(np.float32)
        activations[0, 0, 0, 0] = np.nan
        np.testing.assert_allclose(eigen_projection(activations), get_2d_projection(activations), atol=1e-5)


def test_layers_after_the_earliest_are_not_cut_off_and_a_gradient_free_method_shares_the_pass():
    model = _model("test_efficientnet")
    ckpt = _checkpoint(model)
    engine = Engine(ckpt, configs=[CamConfig("eigencam", "blocks.2"), CamConfig("gradcam", "bn2")])
    x = torch.randn(2, 3, 64, 64)
    _, maps = engine.explain_all(x, [1, 1])
    with GradCAM(model, target_layers=[model.bn2]) as reference:
        expected = reference(x, [ClassifierOutputTarget(1)] * 2)
    assert np.abs(np.stack([upsample_cam(c, (64, 64)) for c in maps["gradcam@bn2"]]) - expected).max() <= 1e-4
    with EigenCAM(model, target_layers=[model.blocks[2]]) as reference:
        expected = reference(x, None)
    assert np.abs(np.stack([upsample_cam(c, (64, 64)) for c in maps["eigencam@blocks.2"]]) - expected).max() <= 1e-4


def test_a_layer_that_is_no_feature_map_is_refused():
    with pytest.raises(UsageError, match="'classifier' outputs \\[1, 3\\], not a feature map"):
        Engine(_checkpoint(_model("test_efficientnet")), configs=[CamConfig("gradcam", "classifier")])


def test_model_state_is_restored_and_no_gradient_leaks():
    model = _model("test_efficientnet").train()
    model.conv_stem.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    Engine(_checkpoint(model)).explain_tensors(torch.randn(2, 3, 64, 64), [None, None])
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    with frozen_eval(model):
        assert not model.training and not any(p.requires_grad for p in model.parameters())


class BrightPatchNet(nn.Module):
    """Class 1's score depends only on pixels brighter than 0.5; class 0 is a constant."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            conv.weight.fill_(1 / 3)
            conv.bias.fill_(-0.5)
        self.features = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.0], [40.0]]))
            self.fc.bias.copy_(torch.tensor([0.5, 0.0]))

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_known_answer_cam_peaks_inside_the_bright_patch(tmp_path):
    image = np.zeros((96, 64), np.uint8)
    image[56:72, 8:24] = 250  # the evidence
    image[8:24, 40:56] = 100  # a dim look-alike that the class ignores
    cv2.imwrite(str(tmp_path / "x.png"), image)
    ckpt = _checkpoint(BrightPatchNet().eval(), size=64, layer="features", names=("Other", "Patch"))
    ckpt.mean, ckpt.std = (0.0,) * 3, (1.0,) * 3
    (result,) = Engine(ckpt).run([ImageItem("x", tmp_path / "x.png")])
    assert result.pred == 1 and result.target == 1
    cam = upsample_cam(result.cam, result.orig_size)
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert 56 <= peak[0] < 72 and 8 <= peak[1] < 24
    assert cam[8:24, 40:56].max() < 0.1


def test_run_keeps_order_records_failures_and_goes_on(tmp_path):
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i}.png"), gray_image(40 + i, 50, seed=i))
    (tmp_path / "2.png").write_bytes(b"broken")
    items = [ImageItem(str(i), tmp_path / f"{i}.png", label="Benign") for i in range(5)]
    engine = Engine(_checkpoint(_model("test_efficientnet")), batch_size=2, workers=2)
    results = list(engine.run(items, target="true"))
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert results[2].error.startswith("not an image") and results[2].cam is None
    assert all(r.ok and r.target == 1 and r.cam.shape == (2, 2) for r in results if r.index != 2)
    assert results[4].orig_size == (44, 50)
    # the same images one by one, without threads, give the same answers
    again = list(Engine(_checkpoint(engine.model), batch_size=1, workers=0).run(items, target="true"))
    for a, b in zip(results, again, strict=True):
        assert (a.pred, a.error) == (b.pred, b.error)
        if a.ok:
            np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)


def test_unknown_target_class_is_a_usage_error():
    engine = Engine(_checkpoint(_model("test_efficientnet")))
    with pytest.raises(UsageError, match="--target: got Osteoma; must be pred, true or one of Normal, Benign"):
        list(engine.run([], target="Osteoma"))
    assert engine.class_index("malignant") == 2


def test_library_path_methods_give_model_resolution_maps():
    model = _model("test_efficientnet")
    x = torch.randn(2, 3, 32, 32)
    logits, cams = Engine(_checkpoint(model, size=32), method="scorecam").explain_tensors(x, [0, 1])
    with ScoreCAM(model, target_layers=[model.bn2]) as reference:
        expected = reference(x, [ClassifierOutputTarget(0), ClassifierOutputTarget(1)])
    assert cams.shape == (2, 32, 32) and np.abs(cams - expected).max() <= 1e-4
    assert torch.allclose(logits, model(x), atol=1e-5)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_memory_stays_flat_across_50_batches():
    engine = Engine(_checkpoint(_model("test_efficientnet")))
    x = torch.randn(8, 3, 64, 64)
    for _ in range(10):
        engine.explain_tensors(x, [None] * 8)
    before = _rss_mb()
    for _ in range(50):
        engine.explain_tensors(x, [None] * 8)
    assert _rss_mb() - before < 25
