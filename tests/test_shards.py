"""Shards and merge: N shards + `merge` write the very files one run writes (byte for byte), merge refuses sets that
are not one whole run, `--shard` is validated, the Ray executor gives the single-process files, and a re-run the
cache answers completely never imports timm."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from btxrd_cam.shards import Shard, parse_shard
from tests.conftest import invoke

KEPT_APART = {".cache", "shards"}  # the cache and the parts are how a run got there, not what it wrote


def written(out: Path) -> dict[str, bytes]:
    """Every file a run wrote under `out` (its cache and shard parts aside), by relative path."""
    files = {}
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if path.is_file() and relative.parts[0] not in KEPT_APART:
            files[str(relative)] = path.read_bytes()
    return files


def assert_same_files(one: Path, merged: Path) -> None:
    expected, got = written(one), written(merged)
    assert sorted(got) == sorted(expected)
    different = [name for name in expected if expected[name] != got[name]]
    assert different == [], f"differ from one run: {different}"


def run_whole_and_sharded(project: Path, args: list[str], count: int) -> tuple[Path, Path, list]:
    whole = invoke([*args, "-q", "-O", "whole"], project)
    assert whole.exit_code == 0, whole.output
    results = []
    for index in range(count):
        result = invoke([*args, "-q", "-O", "sharded", "--shard", f"{index}/{count}"], project)
        assert result.exit_code == 0, result.output
        said = json.loads(result.stdout)  # a shard writes its part only, and says so on stdout: no report, no summary
        assert said["shard"] == f"{index}-of-{count}" and (project / said["part"]).is_file()
        results.append(result)
    assert not (project / "sharded" / "annotation_report.json").exists()
    merged = invoke(["merge", "sharded", "-q"], project)
    assert merged.exit_code == 0, merged.output
    return project / "whole", project / "sharded", [whole, merged]


# --batch-size 2: shards of whole batches, so that each shard holds images of several batches and one run's batches
SHARDED_COMMANDS = {
    "annotate-iou": ["annotate-iou", "--batch-size", "2"],
    "annotate-iou tuned": ["annotate-iou", "--batch-size", "2", "--threshold", "tune"],
    "compare": ["compare", "--batch-size", "2", "--methods", "gradcam,layercam,eigencam", "--layers", "auto"],
    "evidence": ["evidence", "--batch-size", "2", "--controls", "2"],
}


@pytest.mark.parametrize("name", list(SHARDED_COMMANDS))
def test_three_shards_and_merge_write_the_files_of_one_run_byte_for_byte(tiny_project, name):
    args = SHARDED_COMMANDS[name]
    whole, sharded, (one, merged) = run_whole_and_sharded(tiny_project, args, 3)
    parts = sorted(p.name for p in (sharded / "shards").rglob("*-of-3.*"))
    assert parts == ["0-of-3.json", "0-of-3.npz", "1-of-3.json", "1-of-3.npz", "2-of-3.json", "2-of-3.npz"]
    assert merged.stdout == one.stdout
    report = next(whole.glob("*_report.json"))
    assert json.loads(report.read_text())["evaluated"] > 3  # more images than shards: every shard had work
    assert_same_files(whole, sharded)


@pytest.mark.parametrize(
    "args",
    [
        ["gallery", "--batch-size", "2"],
        ["sanity", "--batch-size", "2", "--images", "6", "--road-images", "3", "--methods", "gradcam,layercam"],
    ],
    ids=["gallery", "sanity"],
)
def test_gallery_and_sanity_merge_to_the_files_of_one_run(tiny_project, args):
    whole, sharded, (one, merged) = run_whole_and_sharded(tiny_project, args, 2)
    assert merged.stdout == one.stdout
    assert_same_files(whole, sharded)


def test_infer_shards_merge_to_the_same_records(tiny_project):
    one = invoke(["infer", "-q", "--batch-size", "2", "--metrics", "metrics.json"], tiny_project)
    assert one.exit_code == 0
    expected_metrics = (tiny_project / "metrics.json").read_bytes()
    (tiny_project / "metrics.json").unlink()
    for index in range(3):
        result = invoke(["infer", "-q", "--batch-size", "2", "--metrics", "metrics.json", "--shard", f"{index}/3"],
                        tiny_project)  # fmt: skip
        assert result.exit_code == 0 and json.loads(result.stdout)["command"] == "infer"
    assert not (tiny_project / "metrics.json").exists()
    merged = invoke(["merge", "-q"], tiny_project)
    assert merged.exit_code == 0
    assert merged.stdout == one.stdout and len(one.stdout.splitlines()) > 3
    assert (tiny_project / "metrics.json").read_bytes() == expected_metrics


def test_an_empty_shard_is_a_part_like_any_other(tiny_project):
    """More shards than batches: the empty ones still leave a part, and the merge equals one run."""
    args = ["annotate-iou", "--batch-size", "16"]
    whole, sharded, _ = run_whole_and_sharded(tiny_project, args, 4)
    records = [json.loads(p.read_text())["records"] for p in sorted((sharded / "shards").rglob("*.json"))]
    assert [] in records
    assert_same_files(whole, sharded)


@pytest.mark.parametrize("value", ["3/3", "-1/2", "a/b", "1/0", "2", "1/2/3"])
def test_a_bad_shard_exits_2_naming_the_option(tiny_project, value):
    result = invoke(["annotate-iou", "-q", "--shard", value], tiny_project)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--shard" in lines[0] and value in lines[0] and "0 ≤ K < N" in lines[0]
    assert "Traceback" not in result.output
    assert not (tiny_project / "results").exists()


def test_shard_dealing_is_stable_and_covers_every_item_once():
    items = list(range(23))
    for batch_size in (1, 2, 5):
        for count in (1, 2, 3, 7):
            dealt = [Shard(k, count).take(items, batch_size) for k in range(count)]
            assert sorted(i for shard in dealt for i in shard) == items
    assert Shard(1, 3).take(items, 1) == [1, 4, 7, 10, 13, 16, 19, 22]  # image by image: position ≡ K mod N
    assert Shard(1, 3).take(items, 2) == [2, 3, 8, 9, 14, 15, 20, 21]  # whole batches of 2: batch index ≡ K mod N
    assert parse_shard(" 2 / 5 ") == Shard(2, 5)


def _shards(project: Path, args: list[str], shards: list[str], out="sharded"):
    for value in shards:
        result = invoke([*args, "-q", "-O", out, "--shard", value], project)
        assert result.exit_code == 0, result.output


def test_merge_names_a_missing_shard_and_writes_nothing(tiny_project):
    _shards(tiny_project, ["annotate-iou"], ["0/3", "2/3"])
    result = invoke(["merge", "sharded", "-q"], tiny_project)
    assert result.exit_code == 2
    assert "annotate-iou" in result.stderr and "shard(s) 1 of 3 missing" in result.stderr
    assert not (tiny_project / "sharded" / "annotation_report.json").exists()


def test_merge_names_a_duplicate_shard(tiny_project):
    _shards(tiny_project, ["annotate-iou"], ["0/2", "1/2"])
    folder = tiny_project / "sharded/shards/annotate-iou"
    for suffix in (".json", ".npz"):
        shutil.copy(folder / f"1-of-2{suffix}", folder / f"1-of-2-again{suffix}")
    result = invoke(["merge", "sharded", "-q"], tiny_project)
    assert result.exit_code == 2
    assert "shard 1 twice" in result.stderr and "1-of-2-again.json" in result.stderr


def test_merge_refuses_shards_of_other_settings_or_counts_naming_the_files(tiny_project):
    _shards(tiny_project, ["annotate-iou"], ["0/2"])
    _shards(tiny_project, ["annotate-iou", "--threshold", "0.3"], ["1/2"])
    result = invoke(["merge", "sharded", "-q"], tiny_project)
    assert result.exit_code == 2
    assert "1-of-2.json was run with other settings than 0-of-2.json (threshold)" in result.stderr
    _shards(tiny_project, ["annotate-iou"], ["1/3"])
    result = invoke(["merge", "sharded", "-q"], tiny_project)
    assert result.exit_code == 2 and "1-of-3.json is one of 3 shards, 0-of-2.json one of 2" in result.stderr


def test_merge_refuses_shards_dealt_in_other_batches(tiny_project):
    _shards(tiny_project, ["annotate-iou", "--batch-size", "2"], ["0/2"])
    _shards(tiny_project, ["annotate-iou", "--batch-size", "4"], ["1/2"])
    result = invoke(["merge", "sharded", "-q"], tiny_project)
    assert result.exit_code == 2
    assert "1-of-2.json was dealt in batches of 4 (--batch-size), 0-of-2.json of 2" in result.stderr


def test_merge_refuses_shards_of_another_checkpoint(tiny_project):
    _shards(tiny_project, ["annotate-iou"], ["0/2"])
    other = tiny_project / "checkpoints/other.pt"
    from btxrd_cam.checkpoint import save_upstream_checkpoint
    from btxrd_cam.data import DEFAULT_CLASS_NAMES
    from tests.conftest import TINY_ARCH, TINY_SIZE, make_tiny_model

    save_upstream_checkpoint(other, make_tiny_model(seed=5), TINY_ARCH, list(DEFAULT_CLASS_NAMES), TINY_SIZE)
    shutil.copy(other, tiny_project / "checkpoints/best_stratified.pt")
    _shards(tiny_project, ["annotate-iou"], ["1/2"])
    result = invoke(["merge", "sharded", "-q"], tiny_project)
    assert result.exit_code == 2 and "1-of-2.json was run with another checkpoint than 0-of-2.json" in result.stderr


def test_merge_refuses_a_part_of_a_newer_version_naming_it(tiny_project):
    _shards(tiny_project, ["annotate-iou"], ["0/1"])
    part = tiny_project / "sharded/shards/annotate-iou/0-of-1.json"
    payload = json.loads(part.read_text())
    payload["part_version"] = 99
    part.write_text(json.dumps(payload))
    result = invoke(["merge", "sharded", "-q"], tiny_project)
    assert result.exit_code == 2
    assert "sharded/shards/annotate-iou/0-of-1.json: written by a newer btxrd-cam (part version 99" in result.stderr
    assert "Traceback" not in result.output


def test_merge_without_shards_exits_2(tiny_project):
    result = invoke(["merge", "nothing-here", "-q"], tiny_project)
    assert result.exit_code == 2 and "nothing-here; no such directory" in result.stderr
    (tiny_project / "empty").mkdir()
    result = invoke(["merge", "empty", "-q"], tiny_project)
    assert result.exit_code == 2 and "no shards under empty/shards" in result.stderr


def test_shard_and_the_ray_executor_do_not_mix(tiny_project):
    result = invoke(["annotate-iou", "-q", "--shard", "0/2", "--executor", "ray"], tiny_project)
    assert result.exit_code == 2 and "--shard" in result.stderr and "--executor" in result.stderr


def test_the_ray_executor_writes_the_files_of_one_run(tiny_project):
    ray = pytest.importorskip("ray", reason="the [ray] extra (make install installs it)")
    whole = invoke(["annotate-iou", "-q", "--batch-size", "2", "-O", "whole"], tiny_project)
    assert whole.exit_code == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = invoke(["annotate-iou", "-q", "--batch-size", "2", "-O", "on-ray", "--executor", "ray"], tiny_project)
    finally:
        ray.shutdown()
    assert on_ray.exit_code == 0, on_ray.output
    parts = sorted(p.name for p in (tiny_project / "on-ray/shards/annotate-iou").glob("*.json"))
    assert parts == ["0-of-2.json", "1-of-2.json"]  # one actor per CPU, an actor per shard
    assert on_ray.stdout == whole.stdout
    assert_same_files(tiny_project / "whole", tiny_project / "on-ray")


def leaves(value) -> list:
    """Every number of a JSON value, in order (booleans and strings as they are)."""
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in leaves(value[key])]
    if isinstance(value, list):
        return [leaf for item in value for leaf in leaves(item)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _run_reporting_timm(project: Path, args: list[str]) -> subprocess.CompletedProcess:
    """The command in a fresh interpreter that says, on exit, whether timm was ever imported."""
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('TIMM', 'timm' in sys.modules, file=sys.stderr))\n"
        "from btxrd_cam.cli import main\n"
        f"sys.argv = ['btxrd-cam', *{args!r}]\n"
        "main()\n"
    )
    return subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True, text=True, timeout=300)


def test_a_fully_cached_rerun_builds_no_model_and_never_imports_timm(tiny_project):
    first = _run_reporting_timm(tiny_project, ["annotate-iou", "-q"])
    assert first.returncode == 0, first.stderr
    assert "TIMM True" in first.stderr  # the first run builds the model
    report = tiny_project / "results/gradcam/annotation_report.json"
    at_first = report.read_bytes()
    again = _run_reporting_timm(tiny_project, ["annotate-iou", "-q"])
    assert again.returncode == 0, again.stderr
    assert "TIMM False" in again.stderr
    assert report.read_bytes() == at_first
    otsu = _run_reporting_timm(tiny_project, ["annotate-iou", "-q", "--threshold", "otsu"])
    assert otsu.returncode == 0 and "TIMM False" in otsu.stderr
    assert json.loads(report.read_text())["threshold"]["mode"] == "otsu"


def test_a_rerun_with_one_image_missing_from_the_cache_builds_the_model_then(tiny_project):
    assert (
        _run_reporting_timm(tiny_project, ["compare", "-q", "--methods", "gradcam", "--layers", "auto"]).returncode == 0
    )
    report = tiny_project / "results/gradcam/comparison_report.json"
    at_first = json.loads(report.read_text())
    entries = sorted((tiny_project / "results/gradcam/.cache").glob("??/*.npz"))
    entries[0].unlink()
    again = _run_reporting_timm(tiny_project, ["compare", "-q", "--methods", "gradcam", "--layers", "auto"])
    assert again.returncode == 0, again.stderr
    assert "TIMM True" in again.stderr  # the miss built the model, and the run went on
    rerun = json.loads(report.read_text())
    assert [r["image_id"] for r in rerun["records"]] == [r["image_id"] for r in at_first["records"]]
    assert rerun["configurations"] == at_first["configurations"]
    # the missing image is explained in a batch of its own: equal up to the last bits of its floats
    assert leaves(rerun["records"]) == pytest.approx(leaves(at_first["records"]), abs=1e-4)
    assert len(sorted((tiny_project / "results/gradcam/.cache").glob("??/*.npz"))) == len(entries)


def test_a_deferred_engine_builds_its_model_once_whichever_threads_ask(tiny_project):
    from concurrent.futures import ThreadPoolExecutor

    from btxrd_cam.commands.annotate import run_annotate
    from btxrd_cam.deferred import DeferredEngine
    from btxrd_cam.pipeline import open_engine
    from btxrd_cam.settings import AnnotateSettings
    from tests.conftest import project_settings

    settings = project_settings(AnnotateSettings, tiny_project)
    run_annotate(settings)  # keeps the checkpoint's facts beside the cache
    engine = open_engine(settings)
    assert isinstance(engine, DeferredEngine) and "model" not in vars(engine)
    assert engine.class_names == ["Normal", "Benign", "Malignant"]  # known from the facts, nothing built
    builds, build = [], vars(engine)["_build"]
    vars(engine)["_build"] = lambda: builds.append(1) or build()
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: engine.model, range(8)))
    assert builds == [1] and all(model is models[0] for model in models)
    with pytest.raises(AttributeError):
        getattr(engine, "no_such_attribute")  # noqa: B009 (the attribute access is the test)
