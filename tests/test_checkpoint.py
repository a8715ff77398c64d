import pickle

import pytest
import timm
import torch

from btxrd_cam.checkpoint import get_layer, load_checkpoint, resolve_target_layer
from btxrd_cam.errors import CheckpointError
from tests.conftest import TINY_ARCH, UpstreamWrapper, make_tiny_model


def _upstream_save(path, wrapper, image_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
    """Save exactly what the upstream training loop saves."""
    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)
    config = {
        "model": {
            "backbone": TINY_ARCH,
            "num_classes": 3,
            "class_names": ["Normal", "Benign", "Malignant"],
            "dropout": 0.3,
        },
        "data": {"image_size": image_size},
        "train": {"epochs": 3, "lr": 1e-3},
    }
    torch.save(
        {
            "epoch": 7,
            "model_state_dict": wrapper.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "scheduler_state_dict": scheduler.state_dict(),
            "val_loss": 0.42,
            "config": config,
            "class_names": ["Normal", "Benign", "Malignant"],
            "normalization": {"mean": list(mean), "std": list(std)},
            "class_weights": torch.tensor([1.0, 1.2, 3.4]),
        },
        path,
    )


def test_upstream_checkpoint_gives_the_wrappers_logits(tmp_path):
    torch.manual_seed(1)
    wrapper = UpstreamWrapper(TINY_ARCH, 3, dropout=0.3).eval()
    path = tmp_path / "best_stratified.pt"
    _upstream_save(path, wrapper)
    ckpt = load_checkpoint(path)
    assert (ckpt.arch, ckpt.class_names, ckpt.image_size) == (
        TINY_ARCH,
        ["Normal", "Benign", "Malignant"],
        64,
    )
    assert ckpt.mean == (0.5, 0.5, 0.5) and ckpt.std == (0.25, 0.25, 0.25)
    assert ckpt.metadata == {"epoch": 7, "val_loss": 0.42, "format": "upstream"} and len(ckpt.sha256) == 64
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), wrapper(x))
    assert not ckpt.model.training and ckpt.target_layer_name == "bn2"


@pytest.mark.parametrize("prefix", ["", "module.", "model.", "module.model."])
def test_bare_state_dict_with_prefixes_needs_arch_and_loads(tmp_path, prefix):
    model = make_tiny_model()
    path = tmp_path / "bare.pt"
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    with pytest.raises(CheckpointError, match="pass --arch"):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, arch=TINY_ARCH, class_names=["A", "B", "C"])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), model(x))
    assert ckpt.class_names == ["A", "B", "C"] and ckpt.image_size == 224


def test_unsafe_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for path in (tmp_path / "saved.pt", tmp_path / "pickled.pt"):
        if path.name == "saved.pt":
            torch.save({"model_state_dict": Evil()}, path)
        else:
            with path.open("wb") as f:
                pickle.dump({"model_state_dict": Evil()}, f)
        with pytest.raises(CheckpointError, match="refused .*weights_only=True"):
            load_checkpoint(path)
    assert not marker.exists()


def test_weights_of_another_architecture_list_the_mismatched_keys(tmp_path):
    path = tmp_path / "r.pt"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=3).state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit test_efficientnet — missing keys: .*unexpected keys: "):
        load_checkpoint(path, arch=TINY_ARCH)


def test_class_count_mismatch_and_garbage_files(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(make_tiny_model().state_dict(), path)
    with pytest.raises(CheckpointError, match="2 class names given for a 3-class"):
        load_checkpoint(path, arch=TINY_ARCH, class_names=["A", "B"])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(junk)


@pytest.mark.parametrize(
    "arch, layer",
    [
        ("test_efficientnet", "bn2"),
        ("efficientnet_b0", "bn2"),
        ("resnet18", "layer4"),
        ("test_convnext", "stages.3"),
        ("densenet121", "features.norm5"),
    ],
)
def test_target_layer_is_the_final_feature_map_layer(arch, layer):
    model = timm.create_model(arch, pretrained=False, num_classes=3)
    assert resolve_target_layer(model, 64) == layer


def test_target_layer_by_name_with_negative_index():
    model = timm.create_model("test_convnext", pretrained=False, num_classes=3)
    assert get_layer(model, "stages[-1]")[0] == "stages.3"
    assert get_layer(model, "stages.1.blocks")[0] == "stages.1.blocks"
    with pytest.raises(CheckpointError, match="--target-layer: 'stages.9' is not a layer"):
        get_layer(model, "stages.9")


# ---- the checkpoint formats users hold ------------------------------------------------------------------------


def _expect_same(ckpt, model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), model.eval()(x))


@pytest.mark.parametrize("prefix", ["model.", "net.", "model._orig_mod."])
def test_a_lightning_checkpoint_loads_under_its_prefix_and_counts_what_it_left_aside(tmp_path, prefix):
    model = make_tiny_model()
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    state["criterion.weight"] = torch.ones(3)  # a loss's class weights, saved by Lightning beside the model
    path = tmp_path / "epoch=3.ckpt"
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.4.0", "hyper_parameters": {"lr": 1e-3},
                "epoch": 3, "global_step": 120}, path)  # fmt: skip
    with pytest.raises(CheckpointError, match="this Lightning checkpoint does not name its architecture; pass --arch"):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, arch=TINY_ARCH, class_names=["Normal", "Benign", "Malignant"])
    _expect_same(ckpt, model)
    assert ckpt.metadata["format"] == "Lightning" and any("1 checkpoint entries" in n for n in ckpt.notes)


def test_a_timm_train_checkpoint_without_args_names_its_own_architecture(tmp_path):
    model = make_tiny_model()
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 9, "arch": TINY_ARCH, "state_dict": model.state_dict(), "version": 2, "metric": 0.9}, path)
    ckpt = load_checkpoint(path)
    _expect_same(ckpt, model)
    assert ckpt.arch == TINY_ARCH and ckpt.class_names == ["Normal", "Benign", "Malignant"]
    assert any("assuming Normal, Benign, Malignant" in note for note in ckpt.notes)


def test_safetensors_and_torch_compile_prefixes_load(tmp_path):
    from safetensors.torch import save_file

    model = make_tiny_model()
    path = tmp_path / "weights.safetensors"
    save_file({f"_orig_mod.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(path))
    ckpt = load_checkpoint(path, arch=TINY_ARCH, class_names=["Normal", "Benign", "Malignant"])
    _expect_same(ckpt, model)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00" * 8)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(bad, arch=TINY_ARCH)


def test_torchscript_and_whole_pickled_models_are_refused_with_how_to_resave(tmp_path):
    model = make_tiny_model()
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(1, 3, 64, 64)), scripted)
    with pytest.raises(CheckpointError, match=r"TorchScript.*torch\.save\(model\.state_dict\(\)"):
        load_checkpoint(scripted)
    pickled = tmp_path / "whole.pt"
    torch.save(model, pickled)
    with pytest.raises(CheckpointError, match=r"whole pickled model.*torch\.save\(model\.state_dict\(\)"):
        load_checkpoint(pickled)


def test_arch_without_class_names_needs_three_outputs_and_says_what_it_assumed(tmp_path):
    import timm

    three, five = tmp_path / "three.pt", tmp_path / "five.pt"
    torch.save(make_tiny_model().state_dict(), three)
    torch.save(timm.create_model(TINY_ARCH, pretrained=False, num_classes=5).state_dict(), five)
    ckpt = load_checkpoint(three, arch=TINY_ARCH)
    assert ckpt.class_names == ["Normal", "Benign", "Malignant"] and ckpt.notes
    with pytest.raises(CheckpointError, match="5 classes and no class names; pass --class-names"):
        load_checkpoint(five, arch=TINY_ARCH)
