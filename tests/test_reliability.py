"""A hostile split through every batch command, interrupts, concurrent runs and file permissions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from btxrd_cam.outputs import write_atomic
from tests.conftest import invoke

SCRIPT = shutil.which("btxrd-cam", path=os.path.dirname(sys.executable))


def _test_ids(project):
    lines = (project / "data/splits/stratified_test.csv").read_text().splitlines()[1:]
    return [line.split(",")[0].split(".")[0] for line in lines]


def _annotated(project):
    return [i for i in _test_ids(project) if (project / "data_raw/Annotations" / f"{i}.json").is_file()]


def _sabotage(project) -> dict:
    """Break two images and five annotations of the test split in the ways a hostile user would; returns what
    each broken image should report, and which annotation still scores (with a warning)."""
    images = project / "data_raw/images"
    notes = project / "data_raw/Annotations"
    annotated = _annotated(project)
    plain = [i for i in _test_ids(project) if i not in annotated]
    broken = {}
    cut = next(images.glob(f"{plain[0]}.*"))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    broken[plain[0]] = "truncated"
    next(images.glob(f"{plain[1]}.*")).write_text("this is not a radiograph")
    broken[plain[1]] = "not an image"
    mutations = {
        "points far away": lambda d: d["shapes"][0].update(points=[[10**400, 1], [2, 3], [4, 5]]),
        "deep nesting": None,
        "mask box": lambda d: d["shapes"].__setitem__(
            0, {"shape_type": "mask", "points": [[0, 0], [50_000, 50_000]], "mask": "iVBORw0KGgo="}
        ),
        "bad points": lambda d: d["shapes"][0].update(points=[[1, "x"], [2, 3], [4, 5]]),
    }
    for image_id, (what, mutate) in zip(annotated, mutations.items(), strict=False):
        path = notes / f"{image_id}.json"
        if mutate is None:
            path.write_text("[" * 100_000 + "]" * 100_000)
        else:
            data = json.loads(path.read_text())
            mutate(data)
            path.write_text(json.dumps(data))
        broken[image_id] = what
    survivor = annotated[len(mutations)]
    path = notes / f"{survivor}.json"
    data = json.loads(path.read_text())
    data["imageHeight"] = float("inf")  # ignored with a warning; the image's own size is used
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(data).encode())  # saved with a byte-order mark
    return {"broken": broken, "survivor": survivor}


def test_a_hostile_split_costs_each_bad_file_its_record_and_nothing_else(tiny_project):
    splits = tiny_project / "data/splits"
    val = (splits / "stratified_val.csv").read_text().splitlines()[1:]
    with (splits / "stratified_test.csv").open("a") as f:  # a larger test split: val's images join it
        f.write("\n".join(val) + "\n")
    assert len(_annotated(tiny_project)) >= 6
    sabotage = _sabotage(tiny_project)
    broken, survivor = sabotage["broken"], sabotage["survivor"]
    ids = _test_ids(tiny_project)
    annotated = _annotated(tiny_project)
    image_failures = {i for i, what in broken.items() if what in ("truncated", "not an image")}

    result = invoke(["infer", "--format", "json", "-q"], tiny_project)
    assert result.exit_code == 1
    records = {r["image_id"]: r for r in json.loads(result.stdout)}
    assert set(records) == set(ids)
    assert {i for i, r in records.items() if r["error"]} == image_failures
    assert "truncated" in records[[i for i in image_failures if broken[i] == "truncated"][0]]["error"]

    result = invoke(["gallery", "-q", "--k", "1"], tiny_project)
    assert result.exit_code == 1
    assert {r["image_id"] for r in json.loads(result.stdout)["failed"]} == image_failures

    for command in ("annotate-iou", "compare"):
        args = [command, "-q"] + (["--methods", "gradcam", "--layers", "bn2"] if command == "compare" else [])
        result = invoke(args, tiny_project)
        assert result.exit_code == 1, (command, result.stderr)
        report = json.loads(result.stdout)
        failed = {r["image_id"]: r["error"] for r in report["failed"]}
        assert set(failed) == set(broken) & set(annotated), command
        for image_id, error in failed.items():
            assert error.startswith(f"{image_id}.json: "), error  # the file, then one line of reason
            assert "\n" not in error
        scored = {r["image_id"]: r for r in report["records"]}
        assert set(scored) == set(annotated) - set(broken), command  # every good image scored
        assert "not positive whole numbers" in " ".join(scored[survivor]["warnings"])
        assert "Traceback" not in result.output


def test_fast_decode_refuses_a_truncated_jpeg_and_quiet_means_quiet(tiny_project):
    image = next((tiny_project / "data_raw/images").glob("*.jpeg"))
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    done = subprocess.run(
        [SCRIPT, "infer", str(image), "--fast-decode", "-q"], cwd=tiny_project, capture_output=True, text=True
    )
    assert done.returncode == 1
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert "truncated" in record["error"]
    # nothing from libjpeg or Pillow reaches stderr: only the one line that explains the exit code
    assert done.stderr == "btxrd-cam: 1 image(s) failed; each is listed with its reason in the output\n"


def _wait_for_torch(process, timeout=120):
    """Until the child has imported torch (so it is inside the command), or has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with open(f"/proc/{process.pid}/maps") as maps:
                if "libtorch" in maps.read():
                    return
        except OSError:
            return
        time.sleep(0.05)


@pytest.mark.parametrize(
    "signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_an_interrupted_run_exits_cleanly_and_leaves_the_earlier_report(tiny_project, signum, code, word):
    out = tiny_project / "results/gradcam"
    first = subprocess.run([SCRIPT, "annotate-iou", "-q"], cwd=tiny_project, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # a longer run: the test images many times over, one per batch
    ids = _test_ids(tiny_project) * 30
    manifest = tiny_project / "long.csv"
    manifest.write_text("image_id,split,label\n" + "".join(f"{i},test,\n" for i in ids))
    process = subprocess.Popen(
        [SCRIPT, "annotate-iou", "--split", str(manifest), "--batch-size", "1", "-q"],
        cwd=tiny_project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_torch(process)
    time.sleep(0.5)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert stderr == f"btxrd-cam: {word}\n" and stdout == ""
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # no partial or temporary file; the earlier report and figures byte-identical
    for overlay in (out / "images/annotate-iou").iterdir():  # overlays written as the run went: each one whole
        assert overlay.suffix == ".jpg" and overlay.read_bytes().endswith(b"\xff\xd9"), overlay.name


def test_two_runs_on_the_same_folder_each_leave_whole_files(tiny_project):
    processes = [
        subprocess.Popen([SCRIPT, "annotate-iou", "-q", "--threshold", threshold], cwd=tiny_project,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for threshold in ("0.3", "0.6")
    ]  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [e for _, e in outputs]
    out = tiny_project / "results/gradcam"
    assert sorted(p.name for p in out.iterdir()) == [
        ".cache",
        "annotation_comparison.png",
        "annotation_metrics.png",
        "annotation_report.json",
        "images",
    ]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left
    report = (out / "annotation_report.json").read_text()
    assert report in (outputs[0][0], outputs[1][0])  # whole, and one of the two runs' reports
    json.loads(report)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_permissions_a_plain_write_would(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = write_atomic(tmp_path / "report.json", "{}\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
