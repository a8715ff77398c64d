"""The command line: options → pydantic settings → one library function per command → exit code.

Exit codes: 0 success; 1 some images or annotations failed (listed in the output) or nothing to score;
2 invalid options or inputs (one line per problem, no traceback).
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from btxrd_cam import __version__
from btxrd_cam.errors import BtxrdCamError, Terminated, UsageError, on_signal, raise_if_interrupted
from btxrd_cam.settings import (
    SANITY_METHODS,
    SCORING_RESOLUTION,
    SINGLE_PASS_METHODS,
    AnnotateSettings,
    AuditSettings,
    CompareSettings,
    DemoSettings,
    EvidenceSettings,
    ExplainSettings,
    GallerySettings,
    InferSettings,
    MergeSettings,
    ReportSettings,
    SanitySettings,
    build_settings,
    default_checkpoint,
)

app = typer.Typer(
    name="btxrd-cam",
    help="Explain a BTXRD bone-tumour radiograph classifier with class-activation maps.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

MODEL = "Model and CAM"
DATA = "Data (upstream layout by default)"

Ckpt = Annotated[
    Path | None,
    typer.Option(
        "--ckpt",
        help="Checkpoint.",
        show_default="$BTXRD_CAM_CKPT or checkpoints/best_stratified.pt",
        rich_help_panel=MODEL,
    ),
]
Arch = Annotated[str | None, typer.Option(help="timm architecture, for a bare state dict.", rich_help_panel=MODEL)]
ClassNames = Annotated[
    str | None,
    typer.Option("--class-names", help="Comma-separated class names, for a bare state dict.", rich_help_panel=MODEL),
]
TargetLayer = Annotated[
    str | None,
    typer.Option(
        "--target-layer",
        help="Layer to explain.",
        show_default="found automatically, e.g. bn2",
        rich_help_panel=MODEL,
    ),
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=MODEL)]
BatchSize = Annotated[str, typer.Option("--batch-size", metavar="INT", help="Images per batch.", rich_help_panel=MODEL)]
Workers = Annotated[
    str | None,
    typer.Option(metavar="INT", help="Threads decoding images.", show_default="min(4, cores)", rich_help_panel=MODEL),
]
Amp = Annotated[
    bool, typer.Option("--amp", show_default="off", help="Autocast (bf16/fp16) on CUDA.", rich_help_panel=MODEL)
]
Method = Annotated[
    str,
    typer.Option(
        help="gradcam, hirescam, gradcam++, xgradcam, layercam, eigencam, eigengradcam, scorecam, ablationcam; or a "
        "pixel attribution: integrated-gradients, smoothgrad, occlusion.",
        rich_help_panel=MODEL,
    ),
]
Target = Annotated[str, typer.Option(help="Class to explain: pred, true or a class name.", rich_help_panel=MODEL)]
AugSmooth = Annotated[
    bool,
    typer.Option(
        "--aug-smooth", show_default="off", help="Test-time augmentation smoothing (6 passes).", rich_help_panel=MODEL
    ),
]
EigenSmooth = Annotated[
    bool,
    typer.Option(
        "--eigen-smooth", show_default="off", help="First principal component smoothing.", rich_help_panel=MODEL
    ),
]
FastDecode = Annotated[
    bool,
    typer.Option(
        "--fast-decode",
        show_default="off",
        help="Decode JPEGs at a reduced DCT scale (faster, not exact).",
        rich_help_panel=MODEL,
    ),
]
DicomWindow = Annotated[
    str,
    typer.Option(
        "--dicom-window",
        help="DICOM display window: file (the file's own; minmax when it has none), minmax, or percentile "
        "(0.5–99.5 % of the values).",
        rich_help_panel=MODEL,
    ),
]
IgSteps = Annotated[
    str,
    typer.Option(
        "--ig-steps", metavar="INT", help="Integrated Gradients: steps from the black baseline.", rich_help_panel=MODEL
    ),
]
SgSamples = Annotated[
    str, typer.Option("--sg-samples", metavar="INT", help="SmoothGrad: noisy copies per image.", rich_help_panel=MODEL)
]
OcclusionWindow = Annotated[
    str | None,
    typer.Option(
        "--occlusion-window",
        metavar="PX",
        help="Occlusion: side of the occluded square (stride half of it).",
        show_default="1/8 of the input's side",
        rich_help_panel=MODEL,
    ),
]
ShardOption = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="K/N",
        help="Compute shard K of N (images at manifest positions ≡ K mod N) into <out>/shards/; then `merge`.",
        rich_help_panel="Running (shards, Ray)",
    ),
]
Executor = Annotated[
    str,
    typer.Option(
        help="local, or ray: the run's shards on a Ray cluster (one actor per GPU, else per --ray-cpus CPUs).",
        rich_help_panel="Running (shards, Ray)",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="auto (a running cluster) or HOST:PORT.",
        show_default="a local Ray started for the run",
        rich_help_panel="Running (shards, Ray)",
    ),
]
RayCpus = Annotated[
    str,
    typer.Option(
        "--ray-cpus",
        metavar="INT",
        help="CPUs per Ray actor when the cluster has no GPU.",
        rich_help_panel="Running (shards, Ray)",
    ),
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", show_default="off", help="No progress, tables or warnings on stderr.")
]
DataRoot = Annotated[
    Path,
    typer.Option("--data-root", help="BTXRD data root (images/, Annotations/, dataset.csv).", rich_help_panel=DATA),
]
SplitsDir = Annotated[
    Path,
    typer.Option("--splits-dir", help="Directory of <split>_<subset>.csv manifests.", rich_help_panel=DATA),
]
Split = Annotated[
    str | None,
    typer.Option(
        help="stratified, center or a manifest CSV.", show_default="from the checkpoint name", rich_help_panel=DATA
    ),
]
Subset = Annotated[str, typer.Option(help="train, val or test.", rich_help_panel=DATA)]
Out = Annotated[Path, typer.Option("--out", "-O", help="Output directory.")]
ForceOut = Annotated[
    bool,
    typer.Option(
        "--force-out",
        show_default="off",
        help="Write even when --out lies inside the data or is an input's folder (no input file is overwritten).",
    ),
]
NoCache = Annotated[
    bool,
    typer.Option(
        "--no-cache",
        show_default="off",
        help="Neither read nor write the explanation cache (<out>/.cache) of this folder.",
    ),
]
Images = Annotated[
    bool, typer.Option("--images/--no-images", help="Write a small overlay per scored image to <out>/images/.")
]
Region = Annotated[
    str,
    typer.Option(
        help="Which annotation shapes make a lesion's mask: outline (polygons etc.; rectangles when a file has none), "
        "box (rectangles) or all (every shape: upstream's way).",
        rich_help_panel=DATA,
    ),
]
Resolution = Annotated[
    str,
    typer.Option(
        help="Scoring size: the image's long side scaled to N px (never up), original, or model (upstream's way)."
    ),
]


def _values(params: dict) -> dict:
    """A command's parameters as settings fields (`fmt` is `format`; no --ckpt means the default checkpoint)."""
    values = dict(params)
    if "fmt" in values:
        values["format"] = values.pop("fmt")
    if "inputs" in values:
        values["inputs"] = values["inputs"] or []
    values["ckpt"] = values.get("ckpt") or default_checkpoint()
    return values


def _run(settings_type, values: dict, action: Callable) -> None:
    """Validate, run, map errors to exit codes. Nothing here prints data; actions return their exit code.

    SIGINT (Ctrl-C) exits 130 and SIGTERM 143, with one line and no traceback; reports are written atomically, so
    an interrupted run leaves no partial or temporary file and an earlier report untouched."""
    from btxrd_cam.console import route_python_warnings

    route_python_warnings(bool(values.get("quiet")))
    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        settings = build_settings(settings_type, **values)
        code = action(settings)
        raise_if_interrupted()
    except UsageError as exc:
        for line in str(exc).splitlines():
            typer.echo(f"btxrd-cam: error: {line}", err=True)
        raise typer.Exit(2) from None
    except BtxrdCamError as exc:
        typer.echo(f"btxrd-cam: error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("btxrd-cam: interrupted", err=True)
        raise typer.Exit(130) from None
    except Terminated:
        typer.echo("btxrd-cam: terminated", err=True)
        raise typer.Exit(143) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    raise typer.Exit(code)


def _exit_code(failed: int, what: str = "image(s)") -> int:
    """1 when some inputs failed; says so on stderr whatever the terminal (the reason for the exit code)."""
    if failed:
        typer.echo(f"btxrd-cam: {failed} {what} failed; each is listed with its reason in the output", err=True)
    return int(failed > 0)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"btxrd-cam {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Explain a BTXRD bone-tumour radiograph classifier with class-activation maps."""


@app.command()
def infer(
    inputs: Annotated[
        list[str] | None, typer.Argument(help="Images, directories or globs.", show_default="the split")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, json or csv.")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write records here instead of stdout.")] = None,
    metrics: Annotated[Path | None, typer.Option(help="Write the metrics summary (JSON) here.")] = None,
    out: Annotated[
        Path, typer.Option("--out", "-O", help="Where a shard's part goes (<out>/shards/infer/; with --shard).")
    ] = Path("results/gradcam"),
    ckpt: Ckpt = None,
    arch: Arch = None,
    class_names: ClassNames = None,
    target_layer: TargetLayer = None,
    device: Device = "auto",
    batch_size: BatchSize = "16",
    workers: Workers = None,
    amp: Amp = False,
    fast_decode: FastDecode = False,
    dicom_window: DicomWindow = "file",
    data_root: DataRoot = Path("data_raw"),
    splits_dir: SplitsDir = Path("data/splits"),
    split: Split = None,
    subset: Subset = "test",
    shard: ShardOption = None,
    executor: Executor = "local",
    ray_address: RayAddress = None,
    ray_cpus: RayCpus = "1",
    quiet: Quiet = False,
) -> None:
    """Batch predictions and metrics for a split or for images (JSONL on stdout)."""
    values = _values(locals())

    def action(settings):
        from btxrd_cam.commands.infer import run_infer

        outcome = run_infer(settings)
        sys.stdout.write(getattr(outcome, "text", ""))  # a shard says which part it wrote (records come at merge)
        return _exit_code(outcome.failed)

    _run(InferSettings, values, action)


@app.command("explain-image")
def explain_image(
    inputs: Annotated[list[str], typer.Argument(help="Images, directories or globs.")],
    out: Annotated[Path, typer.Option("--out", "-O", help="Output directory.")] = Path("."),
    force_out: ForceOut = False,
    alpha: Annotated[str, typer.Option(metavar="FLOAT", help="Heatmap opacity in (0, 1).")] = "0.4",
    save_heatmap: Annotated[
        bool, typer.Option("--save-heatmap", show_default="off", help="Also write <stem>_cam.npy (model resolution).")
    ] = False,
    annotation: Annotated[Path | None, typer.Option(help="LabelMe JSON to outline and score against.")] = None,
    threshold: Annotated[str, typer.Option(metavar="FLOAT", help="CAM threshold for IoU in (0, 1).")] = "0.5",
    resolution: Resolution = str(SCORING_RESOLUTION),
    region: Region = "outline",
    ckpt: Ckpt = None,
    arch: Arch = None,
    class_names: ClassNames = None,
    target_layer: TargetLayer = None,
    device: Device = "auto",
    batch_size: BatchSize = "16",
    workers: Workers = None,
    amp: Amp = False,
    method: Method = "gradcam",
    target: Target = "pred",
    aug_smooth: AugSmooth = False,
    eigen_smooth: EigenSmooth = False,
    fast_decode: FastDecode = False,
    dicom_window: DicomWindow = "file",
    ig_steps: IgSteps = "32",
    sg_samples: SgSamples = "16",
    occlusion_window: OcclusionWindow = None,
    quiet: Quiet = False,
) -> None:
    """A heatmap overlay and prediction for any radiograph (JSONL on stdout)."""
    values = _values(locals())

    def action(settings):
        from btxrd_cam.commands.explain import run_explain

        return _exit_code(run_explain(settings).failed)

    _run(ExplainSettings, values, action)


@app.command()
def gallery(
    k: Annotated[str, typer.Option("--k", metavar="INT", help="Examples per category.")] = "3",
    fmt: Annotated[str, typer.Option("--format", help="png or jpg.")] = "png",
    region: Region = "outline",
    no_cache: NoCache = False,
    out: Out = Path("results/gradcam"),
    force_out: ForceOut = False,
    ckpt: Ckpt = None,
    arch: Arch = None,
    class_names: ClassNames = None,
    target_layer: TargetLayer = None,
    device: Device = "auto",
    batch_size: BatchSize = "16",
    workers: Workers = None,
    amp: Amp = False,
    method: Method = "gradcam",
    target: Target = "pred",
    aug_smooth: AugSmooth = False,
    eigen_smooth: EigenSmooth = False,
    fast_decode: FastDecode = False,
    dicom_window: DicomWindow = "file",
    ig_steps: IgSteps = "32",
    sg_samples: SgSamples = "16",
    occlusion_window: OcclusionWindow = None,
    data_root: DataRoot = Path("data_raw"),
    splits_dir: SplitsDir = Path("data/splits"),
    split: Split = None,
    subset: Subset = "test",
    shard: ShardOption = None,
    executor: Executor = "local",
    ray_address: RayAddress = None,
    ray_cpus: RayCpus = "1",
    quiet: Quiet = False,
) -> None:
    """Per-class grids of true-positive / false-positive / false-negative Grad-CAM examples."""
    values = _values(locals())

    def action(settings):
        from btxrd_cam.commands.gallery import run_gallery

        outcome = run_gallery(settings)
        sys.stdout.write(outcome.text)
        return _exit_code(outcome.failed)

    _run(GallerySettings, values, action)


@app.command("annotate-iou")
def annotate_iou(
    threshold: Annotated[
        str, typer.Option(help="A number in (0, 1), otsu, or tune (picked on the val subset).")
    ] = "0.5",
    select: Annotated[str, typer.Option(help="all, or correct (correctly classified only).")] = "all",
    top: Annotated[str, typer.Option(metavar="INT", help="Rows of the comparison figure.")] = "5",
    resolution: Resolution = str(SCORING_RESOLUTION),
    region: Region = "outline",
    images: Images = True,
    no_cache: NoCache = False,
    out: Out = Path("results/gradcam"),
    force_out: ForceOut = False,
    ckpt: Ckpt = None,
    arch: Arch = None,
    class_names: ClassNames = None,
    target_layer: TargetLayer = None,
    device: Device = "auto",
    batch_size: BatchSize = "16",
    workers: Workers = None,
    amp: Amp = False,
    method: Method = "gradcam",
    target: Target = "pred",
    aug_smooth: AugSmooth = False,
    eigen_smooth: EigenSmooth = False,
    fast_decode: FastDecode = False,
    dicom_window: DicomWindow = "file",
    ig_steps: IgSteps = "32",
    sg_samples: SgSamples = "16",
    occlusion_window: OcclusionWindow = None,
    data_root: DataRoot = Path("data_raw"),
    splits_dir: SplitsDir = Path("data/splits"),
    split: Split = None,
    subset: Subset = "test",
    shard: ShardOption = None,
    executor: Executor = "local",
    ray_address: RayAddress = None,
    ray_cpus: RayCpus = "1",
    quiet: Quiet = False,
) -> None:
    """How well the heatmaps agree with the LabelMe tumour outlines (JSON report on stdout)."""
    values = _values(locals())

    def action(settings):
        from btxrd_cam.commands.annotate import run_annotate

        outcome = run_annotate(settings)
        sys.stdout.write(outcome.text)
        if outcome.empty:
            typer.echo("btxrd-cam: no annotated image in this split: nothing to score (empty report written)", err=True)
            return 1
        return _exit_code(outcome.failed, "image(s) or annotation(s)")

    _run(AnnotateSettings, values, action)


@app.command()
def compare(
    methods: Annotated[
        str,
        typer.Option(help="Comma-separated CAM methods, or all.", show_default="the 7 single-pass gradient methods"),
    ] = ",".join(SINGLE_PASS_METHODS),
    layers: Annotated[
        str, typer.Option(help="Comma-separated layers, or auto (the target layer and the 3 stages before it).")
    ] = "auto",
    baselines: Annotated[str, typer.Option(help="uniform, centre, edges (comma-separated), all or none.")] = "all",
    reference: Annotated[
        str | None,
        typer.Option(help="Configuration the others are compared with.", show_default="gradcam at the target layer"),
    ] = None,
    threshold: Annotated[
        str, typer.Option(help="A number in (0, 1), otsu, or tune (each configuration's own, picked on val).")
    ] = "0.5",
    select: Annotated[str, typer.Option(help="all, or correct (correctly classified only).")] = "all",
    resolution: Resolution = str(SCORING_RESOLUTION),
    region: Region = "outline",
    rank_by: Annotated[
        str, typer.Option("--rank-by", help="pxap, iou, dice, pointing_game or energy_pointing_game.")
    ] = "pxap",
    top: Annotated[str, typer.Option(metavar="INT", help="Images in the example grid.")] = "4",
    images: Images = True,
    no_cache: NoCache = False,
    out: Out = Path("results/gradcam"),
    force_out: ForceOut = False,
    ckpt: Ckpt = None,
    arch: Arch = None,
    class_names: ClassNames = None,
    target_layer: TargetLayer = None,
    device: Device = "auto",
    batch_size: BatchSize = "16",
    workers: Workers = None,
    amp: Amp = False,
    target: Target = "pred",
    aug_smooth: AugSmooth = False,
    fast_decode: FastDecode = False,
    dicom_window: DicomWindow = "file",
    ig_steps: IgSteps = "32",
    sg_samples: SgSamples = "16",
    occlusion_window: OcclusionWindow = None,
    data_root: DataRoot = Path("data_raw"),
    splits_dir: SplitsDir = Path("data/splits"),
    split: Split = None,
    subset: Subset = "test",
    shard: ShardOption = None,
    executor: Executor = "local",
    ray_address: RayAddress = None,
    ray_cpus: RayCpus = "1",
    quiet: Quiet = False,
) -> None:
    """Every CAM method x layer, and chance baselines, against the annotations in one pass (JSON on stdout)."""
    values = _values(locals())

    def action(settings):
        from btxrd_cam.commands.compare import run_compare

        outcome = run_compare(settings)
        sys.stdout.write(outcome.text)
        if outcome.empty:
            typer.echo(
                "btxrd-cam: no annotated image in this split: nothing to compare (empty report written)", err=True
            )
            return 1
        return _exit_code(outcome.failed, "image(s) or annotation(s)")

    _run(CompareSettings, values, action)


@app.command()
def evidence(
    methods: Annotated[
        str | None,
        typer.Option(help="Comma-separated CAM methods, or all.", show_default="--method, gradcam"),
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option(help="Comma-separated layers, or auto (as compare).", show_default="the target layer"),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="Configuration the verdict names.", show_default="gradcam at the target layer"),
    ] = None,
    fill: Annotated[
        str, typer.Option(help="How removed pixels are filled: impute (ROAD's imputation), blur or mean.")
    ] = "impute",
    margin: Annotated[str, typer.Option(metavar="PX", help="Pixels the lesion is dilated by before removal.")] = "2",
    controls: Annotated[
        str, typer.Option(metavar="INT", help="Places (1–32) the lesion's shape is moved to as the control.")
    ] = "4",
    delta: Annotated[
        str,
        typer.Option(
            metavar="FLOAT",
            help="An image relies on the lesion when drop(lesion) − drop(control) exceeds this, in [0, 1).",
        ),
    ] = "0.10",
    select: Annotated[str, typer.Option(help="all, or correct (correctly classified only).")] = "all",
    seed: Annotated[str, typer.Option(metavar="INT", help="Seed of the control places and imputation noise.")] = "0",
    top: Annotated[str, typer.Option(metavar="INT", help="Rows of the examples figure.")] = "4",
    resolution: Resolution = str(SCORING_RESOLUTION),
    region: Region = "outline",
    no_cache: NoCache = False,
    out: Out = Path("results/gradcam"),
    force_out: ForceOut = False,
    ckpt: Ckpt = None,
    arch: Arch = None,
    class_names: ClassNames = None,
    target_layer: TargetLayer = None,
    device: Device = "auto",
    batch_size: BatchSize = "16",
    workers: Workers = None,
    amp: Amp = False,
    method: Method = "gradcam",
    target: Target = "pred",
    fast_decode: FastDecode = False,
    dicom_window: DicomWindow = "file",
    ig_steps: IgSteps = "32",
    sg_samples: SgSamples = "16",
    occlusion_window: OcclusionWindow = None,
    data_root: DataRoot = Path("data_raw"),
    splits_dir: SplitsDir = Path("data/splits"),
    split: Split = None,
    subset: Subset = "test",
    shard: ShardOption = None,
    executor: Executor = "local",
    ray_address: RayAddress = None,
    ray_cpus: RayCpus = "1",
    quiet: Quiet = False,
) -> None:
    """Does the prediction rest on the annotated lesion? Lesion removed vs an equal area elsewhere (JSON on stdout)."""
    values = _values(locals())

    def action(settings):
        from btxrd_cam.commands.evidence import run_evidence

        outcome = run_evidence(settings)
        sys.stdout.write(outcome.text)
        if outcome.empty:
            typer.echo(
                "btxrd-cam: no annotated image in this split: nothing to examine (empty report written)", err=True
            )
            return 1
        return _exit_code(outcome.failed, "image(s) or annotation(s)")

    _run(EvidenceSettings, values, action)


@app.command()
def sanity(
    methods: Annotated[str, typer.Option(help="Comma-separated CAM methods, or all.")] = ",".join(SANITY_METHODS),
    images: Annotated[str, typer.Option(metavar="INT", help="Images from the split, balanced by class.")] = "48",
    order: Annotated[str, typer.Option(help="cascading (steps 1..k at step k) or independent (step k alone).")] = (
        "cascading"
    ),
    road: Annotated[bool, typer.Option("--road/--no-road", help="ROAD faithfulness (the slow part).")] = True,
    road_images: Annotated[
        str, typer.Option("--road-images", metavar="INT", help="Images ROAD scores (the first chosen).")
    ] = "16",
    against: Annotated[
        Path | None, typer.Option(help="A second checkpoint: do two trainings look at the same place?")
    ] = None,
    seed: Annotated[str, typer.Option(metavar="INT", help="Seed of the images, the weights and the pairs.")] = "0",
    out: Out = Path("results/gradcam"),
    force_out: ForceOut = False,
    ckpt: Ckpt = None,
    arch: Arch = None,
    class_names: ClassNames = None,
    target_layer: TargetLayer = None,
    device: Device = "auto",
    batch_size: BatchSize = "16",
    workers: Workers = None,
    amp: Amp = False,
    fast_decode: FastDecode = False,
    dicom_window: DicomWindow = "file",
    ig_steps: IgSteps = "32",
    sg_samples: SgSamples = "16",
    occlusion_window: OcclusionWindow = None,
    data_root: DataRoot = Path("data_raw"),
    splits_dir: SplitsDir = Path("data/splits"),
    split: Split = None,
    subset: Subset = "test",
    shard: ShardOption = None,
    executor: Executor = "local",
    ray_address: RayAddress = None,
    ray_cpus: RayCpus = "1",
    quiet: Quiet = False,
) -> None:
    """Do the maps depend on the model? Weight randomisation, ROAD faithfulness, reproducibility (JSON on stdout)."""
    values = _values(locals())

    def action(settings):
        from btxrd_cam.commands.sanity import run_sanity

        outcome = run_sanity(settings)
        sys.stdout.write(outcome.text)
        return _exit_code(outcome.failed)

    _run(SanitySettings, values, action)


@app.command()
def audit(
    data_root: DataRoot = Path("data_raw"),
    splits_dir: SplitsDir = Path("data/splits"),
    split: Annotated[
        str, typer.Option(help="stratified, center, dataset (every row of dataset.csv) or a manifest CSV.")
    ] = "stratified",
    subset: Annotated[str, typer.Option(help="all, train, val or test.")] = "all",
    region: Region = "outline",
    seed: Annotated[str, typer.Option(metavar="INT", help="Seed of the cross-validation folds and bootstrap.")] = "0",
    out: Out = Path("results/gradcam"),
    force_out: ForceOut = False,
    quiet: Quiet = False,
) -> None:
    """The data set itself, no model: counts, image sizes, annotation coverage and cues that are not the lesion."""
    values = dict(locals())

    def action(settings):
        from btxrd_cam.commands.audit import run_audit

        _, text, failed = run_audit(settings)
        sys.stdout.write(text)
        return _exit_code(failed, "image(s) or annotation(s)")

    _run(AuditSettings, values, action)


@app.command()
def merge(
    out: Annotated[Path, typer.Argument(help="The --out of the sharded runs.")] = Path("results/gradcam"),
    quiet: Quiet = False,
) -> None:
    """Put the shards under OUT/shards/ back together: the very files one unsharded run writes."""
    values = {"out": out, "quiet": quiet}

    def action(settings):
        from btxrd_cam.commands.merge import run_merge

        failed = 0
        for merged in run_merge(settings):
            text = getattr(merged.outcome, "text", None)
            if text:
                sys.stdout.write(text)
            failed += merged.outcome.failed
        return _exit_code(failed, "image(s) or annotation(s)")

    _run(MergeSettings, values, action)


@app.command()
def report(
    results_dir: Annotated[
        Path, typer.Argument(help="A results folder of gallery / annotate-iou / compare / sanity.")
    ] = Path("results/gradcam"),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the page here.", show_default="RESULTS_DIR/report.html")
    ] = None,
    self_contained: Annotated[
        bool, typer.Option("--self-contained", show_default="off", help="Embed every image (base64): one file to send.")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """One offline HTML page of a results folder: every image, every number (prints its path)."""
    values = {"results_dir": results_dir, "output": output, "self_contained": self_contained, "quiet": quiet}

    def action(settings):
        from btxrd_cam.commands.report import run_report

        outcome = run_report(settings)
        for note in outcome.notes:
            typer.echo(f"btxrd-cam: note: {note}", err=True)
        typer.echo(str(outcome.path))
        return 0

    _run(ReportSettings, values, action)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the demo project into.")],
    seed: Annotated[str, typer.Option(metavar="INT", help="Random seed.")] = "0",
    images: Annotated[str, typer.Option(metavar="INT", help="Number of radiographs (≥ 30).")] = "400",
    arch: Annotated[str, typer.Option(help="timm architecture to train.")] = "efficientnet_b0",
    image_size: Annotated[str, typer.Option("--image-size", metavar="INT", help="Model input size.")] = "160",
    epochs: Annotated[str, typer.Option(metavar="INT", help="Training epochs.")] = "18",
    quiet: Quiet = False,
) -> None:
    """Write a synthetic BTXRD-layout project with a trained checkpoint (then `cd OUT_DIR && btxrd-cam gallery`)."""

    def action(settings):
        from btxrd_cam.commands.demo import make_demo

        summary = make_demo(
            settings.out_dir,
            settings.seed,
            settings.images,
            settings.arch,
            settings.image_size,
            settings.epochs,
            settings.quiet,
        )
        sys.stdout.write(json.dumps(summary) + "\n")
        return 0

    values = {
        "out_dir": out_dir,
        "seed": seed,
        "images": images,
        "arch": arch,
        "image_size": image_size,
        "epochs": epochs,
        "quiet": quiet,
    }
    _run(DemoSettings, values, action)


def main() -> None:
    signal.signal(signal.SIGTERM, on_signal)  # from the start: a TERM during start-up exits 143 too
    signal.signal(signal.SIGINT, on_signal)
    try:
        app()
    except Terminated:
        typer.echo("btxrd-cam: terminated", err=True)
        sys.exit(143)


if __name__ == "__main__":
    main()
