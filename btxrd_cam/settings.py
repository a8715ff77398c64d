"""Pydantic settings: every command's options, validated before any model or image is loaded.

Each field is named after its CLI option (`batch_size` ↔ `--batch-size`), so a validation error can name the
option, the value given and what is allowed. Not for: parsing argv (cli.py) or doing work.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, field_validator, model_validator

from btxrd_cam.data import SUBSETS, default_workers
from btxrd_cam.errors import UsageError
from btxrd_cam.labelme import DEFAULT_REGION, REGIONS

DEFAULT_CKPT = Path("checkpoints/best_stratified.pt")
CKPT_ENV = "BTXRD_CAM_CKPT"
METHOD_NAMES = (
    "gradcam",
    "hirescam",
    "gradcam++",
    "xgradcam",
    "layercam",
    "eigencam",
    "eigengradcam",
    "scorecam",
    "ablationcam",
    "integrated-gradients",
    "smoothgrad",
    "occlusion",
)
SINGLE_PASS_METHODS = METHOD_NAMES[:7]  # compare's default: the methods one pass serves
ATTRIBUTION_METHODS = METHOD_NAMES[9:]  # Captum's, at the input
BASELINE_NAMES = ("uniform", "centre", "edges")
FILLS = ("impute", "blur", "mean")  # evidence's fills (faithfulness.fill_region)
RANK_METRICS = ("pxap", "iou", "dice", "pointing_game", "energy_pointing_game")


def _int_at_least(minimum: int):
    def check(value):
        if value is None:  # an optional field left unset (the type says whether None is allowed)
            return value
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ValueError(f"must be a whole number ≥ {minimum}") from None
        if number < minimum:
            raise ValueError(f"must be a whole number ≥ {minimum}")
        return number

    return BeforeValidator(check)


def _open_unit(value) -> float:
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError("must be a number strictly between 0 and 1") from None
    if not (0.0 < number < 1.0) or math.isnan(number):
        raise ValueError("must be a number strictly between 0 and 1")
    return number


def _threshold(value) -> float | str:
    text = str(value).strip().lower()
    if text in ("otsu", "tune"):
        return text
    try:
        return _open_unit(text)
    except ValueError:
        raise ValueError("must be a number strictly between 0 and 1, 'otsu' or 'tune'") from None


MIN_RESOLUTION = 64
# The scoring resolution (long side, px) of annotate-iou, explain-image and compare, chosen by
# benchmarks/bench_resolution.py: on BTXRD-sized images the default configuration's means move by <= 0.0009 from
# the original size (the pointing game not at all), compare's 31 configurations by <= 0.006 (IoU, PxAP) with the
# ranking unchanged, 15x faster; one value for all, so that compare's reference row is what annotate-iou reports.
SCORING_RESOLUTION = 512


def _resolution(value) -> str | int:
    text = str(value).strip().lower()
    if text in ("original", "model"):
        return text
    allowed = f"must be original, model or a long side in pixels (a whole number ≥ {MIN_RESOLUTION})"
    try:
        number = int(text)
    except ValueError:
        raise ValueError(allowed) from None
    if number < MIN_RESOLUTION:
        raise ValueError(allowed)
    return number


def _choice(*allowed: str):
    def check(value):
        text = str(value).strip().lower()
        if text not in allowed:
            raise ValueError("must be one of " + ", ".join(allowed))
        return text

    return BeforeValidator(check)


def _bounded_int(low: int, high: int):
    def check(value):
        allowed = f"must be a whole number from {low} to {high}"
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ValueError(allowed) from None
        if not low <= number <= high:
            raise ValueError(allowed)
        return number

    return BeforeValidator(check)


Count = Annotated[int, _int_at_least(1)]
Workers = Annotated[int, _int_at_least(0)]
UnitFloat = Annotated[float, BeforeValidator(_open_unit)]
ScoringResolution = Annotated[str | int, BeforeValidator(_resolution)]


def default_checkpoint() -> Path:
    return Path(os.environ.get(CKPT_ENV) or DEFAULT_CKPT)


def infer_split(ckpt: Path) -> str:
    """`best_center.pt` → center; anything else → stratified (the upstream default)."""
    match = re.fullmatch(r"best_(\w+)\.pt", Path(ckpt).name)
    return match.group(1) if match and match.group(1) in ("stratified", "center") else "stratified"


def check_device(value: str) -> str:
    text = str(value).strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise ValueError("must be auto, cpu, cuda or cuda:N")
    if text.startswith("cuda"):
        import torch  # imported late: `btxrd-cam --help` should not wait for torch

        if not torch.cuda.is_available():
            raise ValueError("CUDA is not available on this machine; use --device cpu (or auto)")
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"there are {torch.cuda.device_count()} CUDA device(s); use cuda:0 … cuda:N-1")
    return text


def resolve_device(device: str):
    """The torch.device for a validated --device value (auto: CUDA when available, else CPU)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ModelSettings(BaseModel):
    """What every command needs to load and run the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ckpt: Path = DEFAULT_CKPT
    arch: str | None = None
    class_names: list[str] | None = None
    target_layer: str | None = None
    device: Annotated[str, BeforeValidator(check_device)] = "auto"
    batch_size: Count = 16
    workers: Workers = default_workers()
    amp: bool = False
    method: Annotated[str, _choice(*METHOD_NAMES)] = "gradcam"
    target: str = "pred"
    aug_smooth: bool = False
    eigen_smooth: bool = False
    fast_decode: bool = False
    dicom_window: Annotated[str, _choice("file", "minmax", "percentile")] = "file"
    ig_steps: Annotated[int, _bounded_int(2, 1024)] = 32
    sg_samples: Annotated[int, _bounded_int(1, 1024)] = 16
    occlusion_window: Annotated[int | None, _int_at_least(1)] = None  # None: 1/8 of the input's side
    quiet: bool = False

    @field_validator("ckpt")
    @classmethod
    def _ckpt_is_file(cls, value: Path) -> Path:
        if not value.exists():
            hint = (
                f" (the default; set --ckpt or {CKPT_ENV}, or make one with `btxrd-cam demo DIR`)"
                if value == default_checkpoint()
                else ""
            )
            raise ValueError(f"no such checkpoint file{hint}")
        if not value.is_file():
            raise ValueError("must be a checkpoint file, not a directory")
        return value

    @field_validator("class_names", mode="before")
    @classmethod
    def _split_names(cls, value):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if value is not None and len(value) < 2:
            raise ValueError("must list at least two comma-separated class names")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must be pred, true or a class name")
        return value.lower() if value.lower() in ("pred", "true") else value

    @model_validator(mode="after")
    def _amp_needs_cuda(self):
        if self.amp and resolve_device(self.device).type != "cuda":
            raise ValueError("--amp: autocast is for CUDA; drop --amp or use --device cuda")
        return self

    @property
    def torch_device(self):
        return resolve_device(self.device)


class SplitSettings(BaseModel):
    """Where a split's images, labels and annotations are (the upstream project layout by default)."""

    data_root: Path = Path("data_raw")
    splits_dir: Path = Path("data/splits")
    split: str | None = None
    subset: Annotated[str, _choice(*SUBSETS)] = "test"

    @field_validator("split")
    @classmethod
    def _split(cls, value: str | None) -> str | None:
        if value is None or value in ("stratified", "center"):
            return value
        path = Path(value)
        if path.suffix.lower() == ".csv" and path.is_file():
            return value
        if path.suffix.lower() == ".csv":
            raise ValueError("manifest file does not exist")
        raise ValueError("must be stratified, center or a path to a manifest CSV")

    @model_validator(mode="after")
    def _default_split(self):
        if self.split is None:
            object.__setattr__(self, "split", infer_split(getattr(self, "ckpt", DEFAULT_CKPT)))
        return self


class OutputSettings(BaseModel):
    out: Path = Path("results/gradcam")
    force_out: bool = False  # write even where --out is inside the data (never over an input file)

    @field_validator("out")
    @classmethod
    def _writable(cls, value: Path) -> Path:
        existing = next((p for p in [value, *value.parents] if p.exists()), Path("."))
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise ValueError(f"cannot write here ({existing} is not a writable directory)")
        return value


def _shard(value):
    from btxrd_cam.shards import parse_shard

    if value is None or not isinstance(value, str):
        return value
    return parse_shard(value)


class RunSettings(BaseModel):
    """How a run is split and where it runs: `--shard K/N` (this process computes one shard, written under
    <out>/shards/ for `merge`), or `--executor ray` (the shards run on a Ray cluster, then merge)."""

    shard: Annotated[object | None, BeforeValidator(_shard)] = None
    executor: Annotated[str, _choice("local", "ray")] = "local"
    ray_address: str | None = None
    ray_cpus: Annotated[int, _int_at_least(1)] = 1

    @model_validator(mode="after")
    def _one_way_to_split(self):
        if self.shard is not None and self.executor == "ray":
            raise ValueError("--shard: a shard runs by itself; --executor ray splits the run into its own shards")
        return self

    def part_settings(self) -> dict:
        """The settings that determine the results, as JSON: what every shard of one run must share (how it runs —
        shard, executor, device, threads, batch size, quiet, the cache — is left out)."""
        excluded = {"shard", "executor", "ray_address", "ray_cpus", "quiet", "workers", "device", "no_cache",
                    "force_out", "out"}  # fmt: skip
        return self.model_dump(mode="json", exclude=excluded)


class RegionSettings(BaseModel):
    """Which annotation shapes make a lesion's mask (see labelme.REGIONS)."""

    region: Annotated[str, _choice(*REGIONS)] = DEFAULT_REGION


class InferSettings(ModelSettings, SplitSettings, RunSettings):
    inputs: list[str] = []
    out: Path = Path("results/gradcam")  # where a shard's part goes (infer writes nothing else there)
    force_out: bool = False
    format: Annotated[str, _choice("jsonl", "json", "csv")] = "jsonl"
    output: Path | None = None
    metrics: Path | None = None


class ExplainSettings(ModelSettings, OutputSettings, RegionSettings):
    inputs: list[str]
    out: Path = Path(".")
    alpha: UnitFloat = 0.4
    save_heatmap: bool = False
    annotation: Path | None = None
    threshold: UnitFloat = 0.5
    resolution: ScoringResolution = SCORING_RESOLUTION

    @field_validator("annotation")
    @classmethod
    def _annotation(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("no such annotation file")
        return value


class GallerySettings(ModelSettings, SplitSettings, OutputSettings, RegionSettings, RunSettings):
    k: Count = 3
    no_cache: bool = False
    format: Annotated[str, _choice("png", "jpg")] = "png"


class AnnotateSettings(ModelSettings, SplitSettings, OutputSettings, RegionSettings, RunSettings):
    threshold: Annotated[float | str, BeforeValidator(_threshold)] = 0.5
    select: Annotated[str, _choice("all", "correct")] = "all"
    top: Count = 5
    resolution: ScoringResolution = SCORING_RESOLUTION
    images: bool = True
    no_cache: bool = False


def _names(option_values: tuple[str, ...], everything: str, nothing: str | None = None):
    """A comma-separated list of names from `option_values` (order kept, repeats kept for the caller to note);
    `everything` means all of them, `nothing` (when allowed) none."""

    def check(value):
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        items = [str(v).strip().lower() for v in items if str(v).strip()]
        if items == [everything]:
            return list(option_values)
        if nothing is not None and items == [nothing]:
            return []
        unknown = [v for v in items if v not in option_values]
        if unknown or not items:
            alternatives = f"{everything}" + (f" or {nothing}" if nothing else "")
            raise ValueError(
                f"{'unknown ' + ', '.join(unknown) + '; ' if unknown else ''}must be a comma-separated list of "
                f"{', '.join(option_values)}, or {alternatives}"
            )
        return items

    return BeforeValidator(check)


def _layer_list(value):
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    items = [str(v).strip() for v in items if str(v).strip()]
    if not items:
        raise ValueError("must be auto or a comma-separated list of layer names (e.g. bn2,blocks.4)")
    return "auto" if [i.lower() for i in items] == ["auto"] else items


class CompareSettings(ModelSettings, SplitSettings, OutputSettings, RegionSettings, RunSettings):
    methods: Annotated[list[str], _names(METHOD_NAMES, "all")] = list(SINGLE_PASS_METHODS)
    layers: Annotated[str | list[str], BeforeValidator(_layer_list)] = "auto"
    baselines: Annotated[list[str], _names(BASELINE_NAMES, "all", "none")] = list(BASELINE_NAMES)
    reference: str | None = None
    threshold: Annotated[float | str, BeforeValidator(_threshold)] = 0.5
    select: Annotated[str, _choice("all", "correct")] = "all"
    resolution: ScoringResolution = SCORING_RESOLUTION
    rank_by: Annotated[str, _choice(*RANK_METRICS)] = "pxap"
    top: Count = 4
    images: bool = True
    no_cache: bool = False


def _delta(value) -> float:
    allowed = "must be a number from 0 (inclusive) to 1 (exclusive)"
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError(allowed) from None
    if math.isnan(number) or not 0.0 <= number < 1.0:
        raise ValueError(allowed)
    return number


class EvidenceSettings(ModelSettings, SplitSettings, OutputSettings, RegionSettings, RunSettings):
    methods: Annotated[list[str] | None, _names(METHOD_NAMES, "all")] = None  # None: --method only
    layers: Annotated[str | list[str] | None, BeforeValidator(_layer_list)] = None  # None: the target layer
    reference: str | None = None
    fill: Annotated[str, _choice(*FILLS)] = "impute"
    margin: Annotated[int, _int_at_least(0)] = 2
    controls: Annotated[int, _bounded_int(1, 32)] = 4
    delta: Annotated[float, BeforeValidator(_delta)] = 0.10
    select: Annotated[str, _choice("all", "correct")] = "all"
    seed: Annotated[int, _int_at_least(0)] = 0
    top: Count = 4
    resolution: ScoringResolution = SCORING_RESOLUTION
    no_cache: bool = False


SANITY_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "eigencam")


class SanitySettings(ModelSettings, SplitSettings, OutputSettings, RunSettings):
    methods: Annotated[list[str], _names(METHOD_NAMES, "all")] = list(SANITY_METHODS)
    images: Count = 48
    order: Annotated[str, _choice("cascading", "independent")] = "cascading"
    road: bool = True
    road_images: Count = 16
    against: Path | None = None
    seed: Annotated[int, _int_at_least(0)] = 0

    @field_validator("against")
    @classmethod
    def _against_is_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("no such checkpoint file")
        return value


class AuditSettings(OutputSettings, RegionSettings):
    """`audit` reads files only: no checkpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_root: Path = Path("data_raw")
    splits_dir: Path = Path("data/splits")
    split: str = "stratified"
    subset: Annotated[str, _choice("all", *SUBSETS)] = "all"
    seed: Annotated[int, _int_at_least(0)] = 0
    quiet: bool = False

    @field_validator("split")
    @classmethod
    def _split(cls, value: str) -> str:
        if value in ("stratified", "center", "dataset"):
            return value
        path = Path(value)
        if path.suffix.lower() == ".csv" and path.is_file():
            return value
        raise ValueError("must be stratified, center, dataset (every row of dataset.csv) or a manifest CSV")

    @field_validator("data_root")
    @classmethod
    def _data_root(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError("no such directory (the BTXRD data root: images/, Annotations/, dataset.csv)")
        return value


class MergeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    out: Path = Path("results/gradcam")
    quiet: bool = False

    @field_validator("out")
    @classmethod
    def _is_folder(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError("no such directory (the --out of the sharded runs)")
        return value


class ReportSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    results_dir: Path = Path("results/gradcam")
    output: Path | None = None
    self_contained: bool = False
    quiet: bool = False

    @field_validator("results_dir")
    @classmethod
    def _is_folder(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError("no such directory (run gallery, annotate-iou, compare or sanity first)")
        return value

    @field_validator("output")
    @classmethod
    def _writable(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        existing = next((p for p in [value.parent, *value.parent.parents] if p.exists()), Path("."))
        if value.is_dir() or not existing.is_dir() or not os.access(existing, os.W_OK):
            raise ValueError("must be a file path in a writable directory")
        return value


class DemoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    out_dir: Path
    seed: Annotated[int, _int_at_least(0)] = 0
    images: Annotated[int, _int_at_least(30)] = 400
    arch: str = "efficientnet_b0"
    image_size: Annotated[int, _int_at_least(32)] = 160
    epochs: Count = 18
    quiet: bool = False


def option_name(field: str) -> str:
    if field in ("inputs", "out_dir", "results_dir"):
        return field.upper().rstrip("S")
    return "--" + field.replace("_", "-")


def build_settings(model: type[BaseModel], **values) -> BaseModel:
    """Validate options into settings; UsageError with one line per problem (option, value, what is allowed)."""
    values = {k: v for k, v in values.items() if v is not None}
    try:
        return model(**values)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["loc"]:
                field = str(error["loc"][0])
                given = values.get(field, error.get("input"))
                lines.append(f"{option_name(field)}: got {given!s:.80}; {message}")
            else:
                lines.append(message)
        raise UsageError("\n".join(lines)) from None
