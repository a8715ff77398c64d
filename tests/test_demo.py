import csv
import json

import numpy as np
from typer.testing import CliRunner

from btxrd_cam.checkpoint import load_checkpoint
from btxrd_cam.cli import app
from btxrd_cam.commands.demo import synthesize, write_dataset
from btxrd_cam.data import DATASET_COLUMNS, load_image, read_metadata
from btxrd_cam.labelme import rasterize_annotation


def test_lesions_sit_exactly_where_the_annotations_say():
    rng = np.random.default_rng(5)
    for label in ("Benign", "Malignant"):
        image = synthesize(rng, label, "IMG000001.jpeg", 1)
        mask = rasterize_annotation({"shapes": image.shapes}, *image.pixels.shape).mask
        assert 0.002 < mask.mean() < 0.2
        normal = synthesize(np.random.default_rng(5), "Normal", "IMG000002.jpeg", 1)
        assert normal.shapes == [] and label != "Normal"


def test_global_intensity_statistics_do_not_give_the_class_away():
    rng = np.random.default_rng(0)
    stats = {label: [] for label in ("Normal", "Benign", "Malignant")}
    for i in range(24):
        label = ("Normal", "Benign", "Malignant")[i % 3]
        pixels = synthesize(rng, label, "x", 1).pixels
        stats[label].append((pixels.mean(), pixels.std()))
    means = {label: np.mean(values, axis=0) for label, values in stats.items()}
    for a in means.values():
        for b in means.values():
            assert abs(a[0] - b[0]) < 6 and abs(a[1] - b[1]) < 4


def test_dataset_layout_is_btxrd_and_deterministic(tmp_path):
    first = write_dataset(tmp_path / "a", n_images=30, seed=7)
    second = write_dataset(tmp_path / "b", n_images=30, seed=7)
    assert first == second
    root = tmp_path / "a" / "data_raw"
    assert (root / "images" / "IMG000001.jpeg").read_bytes() == (
        tmp_path / "b" / "data_raw" / "images" / "IMG000001.jpeg"
    ).read_bytes()
    with (root / "dataset.csv").open() as f:
        assert tuple(next(csv.reader(f))) == DATASET_COLUMNS
    metadata = read_metadata(root)
    assert len(metadata) == 30 and {m.label for m in metadata.values()} == {"Normal", "Benign", "Malignant"}
    annotations = sorted(p.stem for p in (root / "Annotations").iterdir())
    assert annotations == sorted(k for k, m in metadata.items() if m.label != "Normal")
    kinds = {json.loads(p.read_text())["shapes"][0]["shape_type"] for p in (root / "Annotations").iterdir()}
    assert kinds == {"polygon", "rectangle"}
    sizes = {load_image(p)[1] for p in (root / "images").iterdir()}
    assert any(h > w for h, w in sizes) and any(w > h for h, w in sizes)
    assert all(512 <= max(s) <= 1024 for s in sizes)
    for split in ("stratified", "center"):
        ids = [set(i for i, _ in first[split][s]) for s in ("train", "val", "test")]
        assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and sum(map(len, ids)) == 30


def test_demo_command_writes_a_loadable_upstream_checkpoint(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "demo",
            str(tmp_path / "d"),
            "--images",
            "30",
            "--arch",
            "test_efficientnet",
            "--image-size",
            "48",
            "--epochs",
            "1",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert 0 <= summary["test_macro_auc"] <= 1
    ckpt = load_checkpoint(tmp_path / "d" / "checkpoints" / "best_stratified.pt")
    assert ckpt.arch == "test_efficientnet" and ckpt.image_size == 48 and ckpt.target_layer_name == "bn2"
    for name in ("stratified", "center"):
        for subset in ("train", "val", "test"):
            assert (tmp_path / "d" / "data" / "splits" / f"{name}_{subset}.csv").is_file()
