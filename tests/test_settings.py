from pathlib import Path

import pytest
import torch

from btxrd_cam.errors import UsageError
from btxrd_cam.settings import (
    AnnotateSettings,
    GallerySettings,
    InferSettings,
    build_settings,
    default_checkpoint,
    infer_split,
)


def lines(exc: pytest.ExceptionInfo) -> list[str]:
    return str(exc.value).splitlines()


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1", "nan", "abc"])
def test_threshold_outside_open_interval_names_option_value_and_allowed(tiny_ckpt, value):
    with pytest.raises(UsageError) as exc:
        build_settings(AnnotateSettings, ckpt=tiny_ckpt, threshold=value)
    (line,) = lines(exc)
    assert line.startswith(f"--threshold: got {value};")
    assert "strictly between 0 and 1" in line and "otsu" in line and "tune" in line


@pytest.mark.parametrize("value, expected", [("0.3", 0.3), ("otsu", "otsu"), ("TUNE", "tune")])
def test_threshold_accepts_numbers_otsu_and_tune(tiny_ckpt, value, expected):
    assert build_settings(AnnotateSettings, ckpt=tiny_ckpt, threshold=value).threshold == expected


def test_every_problem_gets_its_own_line(tiny_ckpt, tmp_path):
    with pytest.raises(UsageError) as exc:
        build_settings(
            GallerySettings,
            ckpt=tmp_path / "missing.pt",
            k="0",
            batch_size="x",
            subset="dev",
            split="weird",
            device="tpu",
        )
    got = {line.split(":")[0] for line in lines(exc)}
    assert got == {"--ckpt", "--k", "--batch-size", "--subset", "--split", "--device"}


def test_checkpoint_must_be_a_file(tmp_path):
    with pytest.raises(UsageError, match="--ckpt: got .*must be a checkpoint file"):
        build_settings(InferSettings, ckpt=tmp_path)


def test_missing_default_checkpoint_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BTXRD_CAM_CKPT", raising=False)
    with pytest.raises(UsageError, match="btxrd-cam demo"):
        build_settings(InferSettings, ckpt=default_checkpoint())


def test_env_variable_overrides_default_checkpoint(monkeypatch, tiny_ckpt):
    monkeypatch.setenv("BTXRD_CAM_CKPT", str(tiny_ckpt))
    assert default_checkpoint() == tiny_ckpt


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error; this machine has CUDA")
def test_cuda_where_there_is_none_is_an_error_and_auto_falls_back(tiny_ckpt):
    with pytest.raises(UsageError, match="--device: got cuda:0; CUDA is not available"):
        build_settings(InferSettings, ckpt=tiny_ckpt, device="cuda:0")
    assert build_settings(InferSettings, ckpt=tiny_ckpt, device="auto").torch_device.type == "cpu"


def test_split_is_inferred_from_checkpoint_name(tmp_path):
    assert infer_split(Path("checkpoints/best_center.pt")) == "center"
    assert infer_split(Path("checkpoints/best_stratified.pt")) == "stratified"
    assert infer_split(Path("model.pt")) == "stratified"
    ckpt = tmp_path / "best_center.pt"
    ckpt.write_bytes(b"x")
    assert build_settings(GallerySettings, ckpt=ckpt).split == "center"


def test_split_may_be_a_manifest_path(tiny_ckpt, tmp_path):
    manifest = tmp_path / "mine.csv"
    manifest.write_text("image_id,split,label\n")
    assert build_settings(InferSettings, ckpt=tiny_ckpt, split=str(manifest)).split == str(manifest)
    with pytest.raises(UsageError, match="--split: got .*manifest file does not exist"):
        build_settings(InferSettings, ckpt=tiny_ckpt, split=str(tmp_path / "nope.csv"))


def test_unwritable_out_is_refused_before_anything_runs(tiny_ckpt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="--out: got .*not a writable directory"):
        build_settings(GallerySettings, ckpt=tiny_ckpt, out=blocker / "sub")


def test_defaults_follow_upstream_layout(tiny_ckpt):
    settings = build_settings(GallerySettings, ckpt=tiny_ckpt)
    assert (settings.data_root, settings.splits_dir, settings.subset, settings.out, settings.k) == (
        Path("data_raw"),
        Path("data/splits"),
        "test",
        Path("results/gradcam"),
        3,
    )
    assert settings.batch_size == 16 and settings.method == "gradcam" and settings.target == "pred"
