import csv
import json
from collections import Counter

import numpy as np
from typer.testing import CliRunner

from btxrd_cam.checkpoint import load_checkpoint
from btxrd_cam.cli import app
from btxrd_cam.data import DATASET_COLUMNS, load_image, read_metadata
from btxrd_cam.labelme import rasterize_annotation
from btxrd_cam.synthetic import DEMO_LESION_FLOOR, synthesize, write_dataset


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
    first = write_dataset(tmp_path / "a", n_images=40, seed=7)
    second = write_dataset(tmp_path / "b", n_images=40, seed=7)
    assert first == second
    root = tmp_path / "a" / "data_raw"
    assert (root / "images" / "IMG000001.jpeg").read_bytes() == (
        tmp_path / "b" / "data_raw" / "images" / "IMG000001.jpeg"
    ).read_bytes()
    with (root / "dataset.csv").open() as f:
        assert tuple(next(csv.reader(f))) == DATASET_COLUMNS
    metadata = read_metadata(root)
    counts = Counter(m.label for m in metadata.values())
    assert counts == {"Normal": 20, "Benign": 16, "Malignant": 4}  # BTXRD's 50 / 41 / 9 %
    assert all(m.view in ("frontal", "lateral", "oblique") and m.body_region and m.center for m in metadata.values())
    annotations = sorted(p.stem for p in (root / "Annotations").iterdir())
    assert annotations == sorted(k for k, m in metadata.items() if m.label != "Normal")
    for path in (root / "Annotations").iterdir():
        data = json.loads(path.read_text())
        assert data["imageData"] is None and isinstance(data["version"], str)
        shapes = data["shapes"]
        # BTXRD's convention: per lesion one polygon and one rectangle, both labelled with the subtype
        assert [s["shape_type"] for s in shapes] == ["polygon", "rectangle"] * (len(shapes) // 2)
        assert {s["label"] for s in shapes} == {metadata[path.stem].subtype}
    sizes = {load_image(p)[1] for p in (root / "images").iterdir()}
    assert any(h > w for h, w in sizes) and all(400 <= max(s) <= 1024 for s in sizes)
    for split in ("stratified", "center"):
        ids = [set(i for i, _ in first[split][s]) for s in ("train", "val", "test")]
        assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and sum(map(len, ids)) == 40


def test_the_demo_follows_btxrds_facts_as_far_as_it_can(tmp_path):
    """Lesion sizes by class, several lesions for multiple osteochondromas, malignant images smaller."""
    rng = np.random.default_rng(2)
    areas, sides, multiple = {"Benign": [], "Malignant": []}, {"Normal": [], "Benign": [], "Malignant": []}, []
    for i in range(36):
        label = ("Normal", "Benign", "Malignant")[i % 3]
        subtype = "multiple osteochondromas" if i == 4 else None
        image = synthesize(rng, label, f"x{i}", 1, subtype=subtype)
        sides[label].append(max(image.pixels.shape))
        if label != "Normal":
            annotation = rasterize_annotation({"shapes": image.shapes}, *image.pixels.shape)
            areas[label].append(annotation.mask.mean())
            if subtype:
                multiple.append(annotation.lesions)
    assert multiple[0] >= 2
    assert np.median(areas["Malignant"]) > np.median(areas["Benign"]) >= DEMO_LESION_FLOOR
    assert min(min(a) for a in areas.values()) >= 0.9 * DEMO_LESION_FLOOR  # rasterised polygons, not exact
    assert np.median(sides["Malignant"]) < 0.75 * np.median(sides["Normal"])


def test_the_marker_cue_puts_the_class_in_a_corner_and_a_lesion_on_every_image():
    rng = np.random.default_rng(0)
    for label in ("Normal", "Benign", "Malignant"):
        image = synthesize(rng, label, "x", 1, long_side_range=(120, 140), cue="marker")
        assert len(image.shapes) == 2 and image.lesion_looks[0] in ("benign", "malignant")
        corner = image.pixels[: image.pixels.shape[0] // 4, : image.pixels.shape[1] // 3]
        assert (corner > 200).sum() > 0  # the bars


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
