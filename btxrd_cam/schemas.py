"""The shapes of the JSON reports, as pydantic models: what each command writes, and what `report` may read.

Every command validates its report with its model before writing it (a writer cannot drift from what readers
expect), and `report` validates every file it reads with the same model: a well-formed JSON of the wrong shape — a
string where a number belongs, a 400-digit integer, `records` as an object — becomes a note naming the file and the
field, never a traceback. The models hold the fields readers use; every other key is kept as it is (`extra`).
Numbers must be finite. Light on purpose (pydantic only): `report` imports no model code.

Not for: computing reports (commands/) or writing them (reports.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Number = Annotated[float, Field(allow_inf_nan=False)]
Interval = Annotated[list[Number], Field(min_length=2, max_length=2)]


class Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


class Checkpoint(Shape):
    name: str | None = None
    sha256: str | None = None
    arch: str | None = None
    image_size: int | None = None
    target_layer: str | None = None
    class_names: list[str] = []


class Failure(Shape):
    image_id: str | int | None = None
    error: str | None = None


class MeanCI(Shape):
    mean: Number | None = None
    ci95: Interval | None = None


class Described(Shape):
    count: int = 0
    mean: Number | None = None
    median: Number | None = None
    iqr: Number | None = None
    min: Number | None = None
    max: Number | None = None


class Paired(Shape):
    difference: Number | None = None
    ci95: Interval | None = None
    excludes_zero: bool | None = None


class Report(Shape):
    schema_version: int
    command: str
    settings: dict[str, Any] = {}
    checkpoint: Checkpoint | None = None
    failed: list[Failure] = []


# ---- classification (infer --metrics) ----------------------------------------------------------------------------


class PerClass(Shape):
    support: int = 0
    sensitivity: Number | None = None
    specificity: Number | None = None
    precision: Number | None = None
    f1: Number | None = None
    auc: Number | None = None


class Confusion(Shape):
    labels: list[str]
    rows_true_cols_pred: list[list[int]]


class ClassificationReport(Shape):
    schema_version: int = 1
    count: int = 0
    accuracy: Number | None = None
    balanced_accuracy: Number | None = None
    macro_auc: Number | None = None
    per_class: dict[str, PerClass] = {}
    confusion_matrix: Confusion
    failed_images: list[Failure] = []
    checkpoint: Checkpoint | None = None
    settings: dict[str, Any] = {}


# ---- gallery ------------------------------------------------------------------------------------------------------


class GalleryClass(Shape):
    file: str
    counts: dict[str, int]


class GalleryReport(Report):
    images: int = 0
    explained: int = 0
    classes: dict[str, GalleryClass] = {}


# ---- annotate-iou -------------------------------------------------------------------------------------------------


class AnnotationGroup(Shape):
    count: int = 0
    iou: Described = Described()
    pxap: Described = Described()
    iou_mean_ci95: Interval | None = None
    pointing_game_hit_rate: Number | None = None
    pointing_game_ci95: Interval | None = None
    pxap_mean_ci95: Interval | None = None


class AnnotationSummary(AnnotationGroup):
    dice: Described = Described()
    pointing_game: Described = Described()
    energy_pointing_game: Described = Described()
    cam_area: Described = Described()
    mask_area: Described = Described()


class Threshold(Shape):
    mode: str | None = None
    value: Number | None = None


class AnnotationRecord(Shape):
    image_id: str | int
    label: str | None = None
    pred: str | None = None
    confidence: Number | None = None
    subtype: str | None = None
    iou: Number | None = None
    dice: Number | None = None
    pointing_game: bool | None = None
    pxap: Number | None = None
    error: str | None = None


class AnnotationReport(Report):
    evaluated: int = 0
    annotated_images: int = 0
    threshold: Threshold = Threshold()
    summary: AnnotationSummary
    breakdowns: dict[str, dict[str, AnnotationGroup | list[Number] | None]] = {}
    records: list[AnnotationRecord] = []
    failed: list[AnnotationRecord] = []


# ---- compare ------------------------------------------------------------------------------------------------------


class Configuration(Shape):
    name: str
    method: str | None = None
    layer: str | None = None


class EnergyCI(MeanCI):
    x_chance: Number | None = None


class ConfigurationSummary(Shape):
    iou: MeanCI = MeanCI()
    pointing_game: MeanCI = MeanCI()
    energy_pointing_game: EnergyCI = EnergyCI()
    pxap: MeanCI = MeanCI()


class ComparisonRecord(Shape):
    image_id: str | int
    label: str | None = None
    pred: str | None = None
    confidence: Number | None = None
    subtype: str | None = None
    metrics: dict[str, dict[str, Number | bool | None]] | None = None
    error: str | None = None


class ComparisonReport(Report):
    evaluated: int = 0
    configurations: list[Configuration] = []
    reference: str
    threshold: Threshold = Threshold()
    summary: dict[str, ConfigurationSummary] = {}
    paired: dict[str, dict[str, Paired]] = {}
    ranking: list[str] = []
    records: list[ComparisonRecord] = []
    failed: list[ComparisonRecord] = []


# ---- sanity -------------------------------------------------------------------------------------------------------


class Step(Shape):
    step: str
    spearman: MeanCI = MeanCI()
    ssim: MeanCI = MeanCI()


class Verdicts(Shape):
    spearman: str | None = None
    ssim: str | None = None


class SanityMethod(Shape):
    per_step: list[Step] = []
    verdict: Verdicts = Verdicts()
    reaches_reference_at: Verdicts = Verdicts()


class Level(Shape):
    spearman: MeanCI = MeanCI()
    ssim: MeanCI = MeanCI()


class Control(Shape):
    name: str
    per_step: list[Step] = []


class Road(Shape):
    images: int = 0
    percentiles: list[Number] = []
    rows: dict[str, MeanCI] = {}


class Against(Shape):
    name: str | None = None


class Reproduced(Level):
    above_reference: dict[str, bool | None] = {}


class Reproducibility(Shape):
    against: Against = Against()
    prediction_agreement: Number | None = None
    methods: dict[str, Reproduced] = {}


class SanityReport(Report):
    steps: list[str] = []
    fallback: str | None = None
    methods: dict[str, SanityMethod] = {}
    reference: dict[str, Level] = {}
    control: Control | None = None
    road: Road | None = None
    reproducibility: Reproducibility | None = None
    images: list[dict[str, Any]] = []


# ---- evidence -----------------------------------------------------------------------------------------------------


class CopySummary(Shape):
    drop: MeanCI = MeanCI()
    flip_rate: Number | None = None
    to_normal_rate: Number | None = None


class Relies(Shape):
    share: Number | None = None
    ci95: Interval | None = None
    count: int = 0
    decided: int = 0


class EvidenceSummary(Shape):
    lesion_removed: CopySummary = CopySummary()
    control_removed: CopySummary = CopySummary()
    lesion_only: CopySummary = CopySummary()
    lesion_vs_control: Paired = Paired()
    relies_on_lesion: Relies = Relies()


class CamRemoved(Shape):
    drop: MeanCI = MeanCI()
    flip_rate: Number | None = None


class Table(Shape):
    shown: int = 0
    missed: int = 0
    elsewhere: int = 0
    misleading: int = 0


class EvidenceConfiguration(Shape):
    cam_removed: CamRemoved = CamRemoved()
    cam_vs_lesion: Paired = Paired()
    cam_vs_control: Paired = Paired()
    table: Table = Table()
    shows_evidence: Number | None = None


class Drops(Shape):
    lesion_removed: Number | None = None
    control_removed: Number | None = None


class EvidenceRecord(Shape):
    image_id: str | int
    label: str | None = None
    pred: str | None = None
    confidence: Number | None = None
    subtype: str | None = None
    drop: Drops | None = None
    relies_on_lesion: bool | None = None
    error: str | None = None


class Fill(Shape):
    name: str


class EvidenceReport(Report):
    evaluated: int = 0
    annotated_images: int = 0
    fill: Fill
    delta: Number
    reference: str
    verdict: str | None = None
    summary: EvidenceSummary
    configurations: dict[str, EvidenceConfiguration] = {}
    records: list[EvidenceRecord] = []
    failed: list[EvidenceRecord] = []


# ---- audit --------------------------------------------------------------------------------------------------------


class Cue(Shape):
    auc: Number | None = None
    ci95: Interval | None = None


class SubsetCounts(Shape):
    images: int = 0
    class_by_centre: dict[str, dict[str, int]] = {}
    class_by_view: dict[str, dict[str, int]] = {}
    class_by_body_region: dict[str, dict[str, int]] = {}


class ByClass(Shape):
    by_class: dict[str, Described] = {}


class Sizes(Shape):
    megapixels: ByClass = ByClass()
    aspect: ByClass = ByClass()


class Coverage(Shape):
    files: int = 0
    tumour_images: int = 0
    tumour_without_file: int = 0
    normal_with_file: int = 0
    several_lesions: int = 0
    rectangle_only: int = 0
    outline_without_rectangle: int = 0
    label_not_subtype: int = 0
    unreadable: int = 0


class AuditReport(Report):
    images: int = 0
    counts: dict[str, SubsetCounts] = Field(default_factory=dict, min_length=1)
    sizes: Sizes = Sizes()
    annotations: Coverage = Coverage()
    lesion_area: ByClass = ByClass()
    cues: dict[str, Cue] = {}
    warnings: list[str] = []


SCHEMAS: dict[str, type[BaseModel]] = {
    "gallery": GalleryReport,
    "annotate-iou": AnnotationReport,
    "compare": ComparisonReport,
    "sanity": SanityReport,
    "evidence": EvidenceReport,
    "audit": AuditReport,
    "infer": ClassificationReport,
}


def validated(data: dict, command: str) -> dict:
    """The report checked against its command's model, as plain JSON types (numbers given as text become numbers);
    ValueError naming the first field that does not fit (`records.3.confidence: …`)."""
    try:
        return SCHEMAS[command].model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(the report)"
        raise ValueError(f"field {where}: {first['msg']}") from None
