"""Figures: CAM overlays, annotation outlines, gallery grids and annotation comparisons.

Takes arrays and records — never a model or a path to decode. Images keep their own aspect ratio everywhere.
Files are encoded in memory and written atomically; matplotlib figures are closed after saving.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from btxrd_cam.data import fit_long_side  # noqa: E402
from btxrd_cam.maps import upsample_cam  # noqa: E402
from btxrd_cam.outputs import (
    overlay_name,  # noqa: E402
    write_atomic,  # noqa: E402
)

OUTLINE_RGB = (0, 255, 0)


def overlay(pixels: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Jet heatmap blended on the radiograph. pixels: uint8 [H, W, 3] RGB or [H, W]; cam: float [H, W] in [0, 1]."""
    pixels = as_rgb(pixels)
    heat = cv2.applyColorMap(np.clip(cam * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(heat, alpha, pixels, 1.0 - alpha, 0.0)


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB) if pixels.ndim == 2 else pixels


def draw_outline(pixels: np.ndarray, mask: np.ndarray, thickness: int | None = None) -> np.ndarray:
    """Copy of pixels with the outline of a bool mask (resized to fit by nearest neighbour) drawn on it."""
    height, width = pixels.shape[:2]
    if mask.shape != (height, width):
        mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = as_rgb(pixels).copy()
    cv2.drawContours(out, contours, -1, OUTLINE_RGB, thickness or max(2, max(height, width) // 300))
    return out


def save_overlay(folder: Path, image_id: str, thumbnail: np.ndarray, cam: np.ndarray, mask: np.ndarray | None) -> Path:
    """`<folder>/<image_id>.jpg`: the raw CAM (float [h, w]) upsampled onto the thumbnail (uint8, long side 384),
    with the annotation's outline (bool mask of any size, resized by nearest neighbour) in green."""
    shown = overlay(thumbnail, upsample_cam(cam, thumbnail.shape[:2]))
    if mask is not None:
        shown = draw_outline(shown, mask, thickness=2)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(shown, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise OSError(f"could not encode the overlay of {image_id}")
    return write_atomic(Path(folder) / overlay_name(image_id), encoded.tobytes())


def save_png(path: Path, rgb: np.ndarray) -> Path:
    ok, encoded = cv2.imencode(Path(path).suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path}")
    return write_atomic(path, encoded.tobytes())


def captioned(rgb: np.ndarray, caption: str) -> np.ndarray:
    """The image with a black caption band below it (white text scaled to the image width)."""
    height, width = rgb.shape[:2]
    scale = max(0.4, width / 1400)
    band_h = int(36 * scale) + 8
    band = np.zeros((band_h, width, 3), np.uint8)
    cv2.putText(
        band,
        caption,
        (6, band_h - int(10 * scale) - 2),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        max(1, int(2 * scale)),
        cv2.LINE_AA,
    )
    return np.vstack([rgb, band])


def save_figure(fig, path: Path, dpi: int = 150) -> Path:
    buffer = io.BytesIO()
    fmt = Path(path).suffix.lstrip(".").replace("jpg", "jpeg") or "png"
    try:
        fig.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return write_atomic(path, buffer.getvalue())


@dataclass
class Cell:
    """One gallery cell: an overlay thumbnail and its title."""

    rgb: np.ndarray
    title: str


def thumbnail_overlay(pixels: np.ndarray, cam: np.ndarray, mask: np.ndarray | None, alpha: float, long_side: int):
    """Overlay at a reduced size for figures: the raw CAM is upsampled straight to the thumbnail size."""
    small = fit_long_side(pixels, long_side)
    shown = overlay(small, upsample_cam(cam, small.shape[:2]), alpha)
    return draw_outline(shown, mask) if mask is not None else shown


def gallery_figure(rows: dict[str, list[Cell]], k: int, title: str, path: Path, dpi: int = 150) -> Path:
    """A len(rows) × k grid: row labels on the left, 'none in this split' for an empty row."""
    fig, axes = plt.subplots(len(rows), k, figsize=(3.2 * k, 3.4 * len(rows)), squeeze=False)
    for r, (row_name, cells) in enumerate(rows.items()):
        for c in range(k):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(cells):
                ax.imshow(cells[c].rgb, aspect="equal")
                ax.set_title(cells[c].title, fontsize=8)
            else:
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if c == 0 and not cells:
                    ax.text(0.5, 0.5, "none in this split", ha="center", va="center", fontsize=10, color="0.4")
            if c == 0:
                ax.set_ylabel(row_name, fontsize=11, fontweight="bold")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def comparison_figure(rows: list[dict], path: Path, dpi: int = 120) -> Path:
    """One row per image: original + outline, annotation mask, heatmap, overlay titled with IoU."""
    n = max(1, len(rows))
    fig, axes = plt.subplots(n, 4, figsize=(13, 3.4 * n), squeeze=False)
    headers = ("radiograph + annotation", "annotation mask", "heatmap", "overlay")
    for r in range(n):
        for c in range(4):
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        if not rows:
            axes[0][0].text(0.5, 0.5, "no correctly classified annotated image", ha="center", va="center")
            continue
        row = rows[r]
        small = fit_long_side(row["pixels"], 480)
        size = small.shape[:2]
        mask = cv2.resize(row["mask"].astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        cam = upsample_cam(row["cam"], size)
        panels = (draw_outline(small, mask), mask, cam, draw_outline(overlay(small, cam), mask))
        for c, panel in enumerate(panels):
            kwargs = {"cmap": "gray"} if c == 1 else {"cmap": "jet", "vmin": 0, "vmax": 1} if c == 2 else {}
            axes[r][c].imshow(panel, aspect="equal", **kwargs)
            axes[r][c].set_title(headers[c] if c < 3 else f"IoU {row['iou']:.3f}", fontsize=9)
        axes[r][0].set_ylabel(row["title"], fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


METRIC_LABELS = {
    "iou": "IoU",
    "dice": "Dice",
    "pointing_game": "pointing game (hit rate)",
    "energy_pointing_game": "energy pointing game",
    "pxap": "PxAP",
}


def forest_plot(report: dict, metrics: tuple[str, ...], path: Path, dpi: int = 120) -> Path:
    """A row per configuration in rank order (baselines grey), mean ± 95% CI per metric panel, and a dashed
    vertical line at the reference configuration's mean."""
    names = report["ranking"]
    baselines = {c["name"] for c in report["configurations"] if c["method"] is None}
    reference = report["reference"]
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(4.2 * len(metrics) + 1.5, 0.3 * len(names) + 1.6), sharey=True, squeeze=False
    )
    ys = np.arange(len(names))[::-1]
    for ax, metric in zip(axes[0], metrics, strict=True):
        for y, name in zip(ys, names, strict=True):
            cell = report["summary"][name][metric]
            if cell["mean"] is None:
                continue
            colour = "0.55" if name in baselines else "tab:red" if name == reference else "tab:blue"
            low, high = cell["ci95"] or (cell["mean"], cell["mean"])
            ax.errorbar(cell["mean"], y, xerr=[[cell["mean"] - low], [high - cell["mean"]]], fmt="o", ms=4,
                        color=colour, ecolor=colour, capsize=2, lw=1.2)  # fmt: skip
        ref = report["summary"].get(reference, {}).get(metric, {}).get("mean")
        if ref is not None:
            ax.axvline(ref, color="tab:red", ls="--", lw=0.9)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=10)
        ax.grid(axis="x", color="0.9")
        ax.set_xlabel("mean, 95% bootstrap CI", fontsize=8)
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels(names, fontsize=8)
    for label in axes[0][0].get_yticklabels():
        if label.get_text() == reference:
            label.set_fontweight("bold")
        if label.get_text() in baselines:
            label.set_color("0.45")
    n = report["evaluated"]
    fig.suptitle(f"CAM configurations vs annotations ({n} images; reference {reference}, dashed; baselines grey)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def comparison_grid(rows: list[dict], columns: list[str], path: Path, dpi: int = 110) -> Path:
    """One row per image: the radiograph with its outline, then one overlay per configuration (titled with its
    PxAP on that image). rows: {pixels uint8 [h, w(, 3)], mask bool [h, w], panels: [{name, map, pxap}], title}."""
    n = max(1, len(rows))
    fig, axes = plt.subplots(n, 1 + len(columns), figsize=(2.9 * (1 + len(columns)), 3.1 * n), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if not rows:
        axes[0][0].text(0.5, 0.5, "no correctly classified annotated image", ha="center", va="center")
    for r, row in enumerate(rows):
        axes[r][0].imshow(draw_outline(row["pixels"], row["mask"]), aspect="equal")
        axes[r][0].set_title("radiograph + annotation", fontsize=8)
        axes[r][0].set_ylabel(row["title"], fontsize=8)
        for c, panel in enumerate(row["panels"], start=1):
            axes[r][c].imshow(draw_outline(overlay(row["pixels"], panel["map"]), row["mask"]), aspect="equal")
            pxap = "—" if panel["pxap"] is None else f"{panel['pxap']:.3f}"
            axes[r][c].set_title(f"{panel['name']}\nPxAP {pxap}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def sanity_curves(report: dict, path: Path, dpi: int = 120) -> Path:
    """Similarity to the trained map against the randomisation step (named on the x axis): a line per method with
    its CI band, the reference level (unrelated images' maps, the range over methods) as a grey band, the control
    dashed; one panel per measure."""
    steps = report["steps"]
    measures = ("spearman", "ssim")
    labels = {"spearman": "Spearman rank correlation", "ssim": "SSIM"}
    fig, axes = plt.subplots(1, 2, figsize=(max(9.0, 0.75 * len(steps) + 5), 4.4), squeeze=False)
    xs = np.arange(len(steps))
    for ax, measure in zip(axes[0], measures, strict=True):
        cis = [r[measure]["ci95"] for r in report["reference"].values() if r[measure]["ci95"]]
        if cis:
            low, high = min(c[0] for c in cis), max(c[1] for c in cis)
            ax.axhspan(low, high, color="0.85", label="reference: unrelated images (95% CI)")
        for method, body in report["methods"].items():
            means = [row[measure]["mean"] for row in body["per_step"]]
            lows = [(row[measure]["ci95"] or [m, m])[0] for row, m in zip(body["per_step"], means, strict=True)]
            highs = [(row[measure]["ci95"] or [m, m])[1] for row, m in zip(body["per_step"], means, strict=True)]
            (line,) = ax.plot(xs, means, marker="o", ms=3, lw=1.4, label=method)
            ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15)
        control = report.get("control") or {}
        if control.get("per_step"):
            ax.plot(xs, [row[measure]["mean"] for row in control["per_step"]], ls="--", color="k", lw=1.2,
                    label=f"control: {control['name']} (model-independent)")  # fmt: skip
        ax.set_xticks(xs)
        ax.set_xticklabels(steps, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"{labels[measure]} to the trained map", fontsize=9)
        ax.set_xlabel(f"randomised ({report['settings']['order']}), top down", fontsize=9)
        ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.05)
        ax.grid(color="0.92")
    axes[0][1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Model parameter randomisation — {len(report['images'])} images, layer {report['settings']['layer']}",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def sanity_maps(maps: dict[str, list[np.ndarray]], columns: list[str], titles: list[str], path: Path, dpi=90) -> Path:
    """For each example image, each method's map (a row) at every step (a column): maps[method][column] is
    float32 [images, S, S]."""
    methods = list(maps)
    images = len(titles)
    fig, axes = plt.subplots(
        max(1, images * len(methods)), len(columns), figsize=(1.25 * len(columns), 1.3 * images * len(methods)),
        squeeze=False,
    )  # fmt: skip
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for i, title in enumerate(titles):
        for m, method in enumerate(methods):
            row = i * len(methods) + m
            for c, column in enumerate(columns):
                axes[row][c].imshow(maps[method][c][i], cmap="jet", vmin=0, vmax=1)
                if row == 0:
                    axes[row][c].set_title(column, fontsize=7, rotation=30)
            axes[row][0].set_ylabel(f"{title}\n{method}" if m == 0 else method, fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def annotation_metrics_figure(report: dict, path: Path, dpi: int = 110) -> Path:
    """annotate-iou's numbers at a glance: IoU, pointing game and PxAP (mean and 95% CI) by class, subtype and
    lesion size, and the threshold sweep with the threshold used marked."""
    columns = (
        ("IoU", lambda s: (s["iou"]["mean"], s["iou_mean_ci95"])),
        ("pointing game (hit rate)", lambda s: (s["pointing_game_hit_rate"], s["pointing_game_ci95"])),
        ("PxAP", lambda s: (s["pxap"]["mean"], s.get("pxap_mean_ci95"))),
    )
    groupings = (("by_class", "class"), ("by_subtype", "subtype"), ("by_lesion_size", "lesion size"))
    fig = plt.figure(figsize=(13, 11))
    grid = fig.add_gridspec(4, 3, height_ratios=[1, 1.6, 1, 1.1])
    for r, (key, label) in enumerate(groupings):
        groups = {name: body for name, body in report["breakdowns"][key].items() if isinstance(body, dict)}
        if key == "by_lesion_size":
            groups = {name: groups[name] for name in ("small", "medium", "large") if name in groups}
        names = list(groups)
        for c, (title, read) in enumerate(columns):
            ax = fig.add_subplot(grid[r, c])
            for y, name in enumerate(names):
                mean, ci = read(groups[name])
                if mean is None:
                    continue
                low, high = ci or (mean, mean)
                ax.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", ms=4, capsize=2, color="tab:blue")
                ax.annotate(f"n={groups[name]['count']}", (1.0, y), xycoords=("axes fraction", "data"),
                            fontsize=6, color="0.5", ha="right", va="bottom")  # fmt: skip
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(names if c == 0 else [], fontsize=8)
            ax.set_ylim(-0.6, len(names) - 0.4)
            ax.set_xlim(-0.02, 1.02)
            ax.invert_yaxis()
            ax.grid(axis="x", color="0.92")
            if r == 0:
                ax.set_title(title, fontsize=10)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    ax = fig.add_subplot(grid[3, :])
    sweep = report["sweep"]
    values = [(t, v) for t, v in zip(sweep["thresholds"], sweep["mean_iou"], strict=True) if v is not None]
    if values:
        ax.plot([t for t, _ in values], [v for _, v in values], marker="o", ms=3, color="tab:blue")
    used = report["threshold"]["value"]
    if used is not None:
        ax.axvline(
            used, color="tab:red", ls="--", lw=1, label=f"threshold used: {used:g} ({report['threshold']['mode']})"
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("CAM threshold", fontsize=9)
    ax.set_ylabel("mean IoU", fontsize=9)
    ax.set_title("threshold sweep (exploratory: not a tuned result)", fontsize=10)
    ax.grid(color="0.92")
    n = report["evaluated"]
    fig.suptitle(f"CAM vs annotation by group — {n} images, {report['settings']['method']}, mean and 95% CI",
                 fontsize=11)  # fmt: skip
    fig.tight_layout()
    return save_figure(fig, path, dpi)


CLASS_COLOURS = ("tab:green", "tab:orange", "tab:red", "tab:blue", "tab:purple", "tab:brown")


def evidence_figure(report: dict, names: list[str], path: Path, dpi: int = 120) -> Path:
    """Left: per image, the drop of the explained class's probability with the lesion removed against the drop with
    an equal area removed elsewhere (the diagonal: no difference; above it, the lesion matters more), coloured by
    true class. Right: mean drop and 95 % CI per copy kind and per configuration's map region removed."""
    records = report["records"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 5.2), gridspec_kw={"width_ratios": [1, 1.15]})
    classes = report["checkpoint"]["class_names"]
    points = [(r["drop"]["control_removed"], r["drop"]["lesion_removed"], r["label"]) for r in records]
    points = [(x, y, label) for x, y, label in points if x is not None and y is not None]
    values = [v for x, y, _ in points for v in (x, y)] or [0.0, 1.0]
    low, high = min(-0.05, min(values) - 0.05), max(0.05, max(values) + 0.05)
    left.plot([low, high], [low, high], color="0.5", lw=1, ls="--", label="no difference")
    delta = report["delta"]
    left.plot([low, high], [low + delta, high + delta], color="0.75", lw=1, ls=":", label=f"relies: above +{delta:g}")
    for c, name in enumerate(classes):
        xs = [x for x, _, label in points if label == name]
        ys = [y for _, y, label in points if label == name]
        if xs:
            left.scatter(xs, ys, s=18, color=CLASS_COLOURS[c % len(CLASS_COLOURS)], label=f"{name} ({len(xs)})")
    left.set_xlim(low, high)
    left.set_ylim(low, high)
    left.set_xlabel("drop in p, equal area removed elsewhere (control)", fontsize=9)
    left.set_ylabel("drop in p, lesion removed", fontsize=9)
    left.grid(color="0.92")
    left.legend(fontsize=7, loc="upper left")
    left.set_title(f"Is the lesion the evidence? ({len(points)} images)", fontsize=10)
    rows = [(kind.replace("_", " "), report["summary"][kind]["drop"]) for kind in
            ("lesion_removed", "control_removed", "lesion_only")]  # fmt: skip
    rows += [(f"{name} region removed", report["configurations"][name]["cam_removed"]["drop"]) for name in names]
    ys = np.arange(len(rows))[::-1]
    for y, (label, cell) in zip(ys, rows, strict=True):
        if cell["mean"] is None:
            continue
        lo, hi = cell["ci95"] or (cell["mean"], cell["mean"])
        colour = "tab:red" if label.startswith("lesion removed") else "0.5" if "control" in label else "tab:blue"
        right.barh(y, cell["mean"], color=colour, alpha=0.6)
        right.errorbar(cell["mean"], y, xerr=[[cell["mean"] - lo], [hi - cell["mean"]]], fmt="none", ecolor="k",
                       capsize=3, lw=1)  # fmt: skip
    right.axvline(0, color="k", lw=0.8)
    right.set_yticks(ys)
    right.set_yticklabels([label for label, _ in rows], fontsize=8)
    right.set_xlabel("mean drop in p of the explained class (95 % bootstrap CI)", fontsize=9)
    right.grid(axis="x", color="0.92")
    fill = report["fill"]["name"]
    right.set_title(f"what each removal costs the model (fill: {fill})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def evidence_examples(rows: list[dict], path: Path, dpi: int = 110) -> Path:
    """One row per image, at the model's input resolution: the original with the lesion outline, then each copy
    (lesion removed, control removed, lesion only, the reference map's region removed), each titled with the
    explained class's probability; removed regions outlined (lesion green, control yellow, map region cyan).
    rows: {title, panels: [(name, uint8 [S, S], p)], lesion, control, cam_region: bool [S, S]}."""
    n = max(1, len(rows))
    columns = max((len(row["panels"]) for row in rows), default=5)
    fig, axes = plt.subplots(n, columns, figsize=(2.4 * columns, 2.6 * n), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if not rows:
        axes[0][0].text(0.5, 0.5, "no correctly classified annotated image", ha="center", va="center")
    outlines = {"original": ("lesion", OUTLINE_RGB), "lesion removed": ("lesion", OUTLINE_RGB),
                "control removed": ("control", (255, 220, 0)), "lesion only": ("lesion", OUTLINE_RGB)}  # fmt: skip
    for r, row in enumerate(rows):
        for c, (name, pixels, p) in enumerate(row["panels"]):
            key, colour = outlines.get(name, ("cam_region", (0, 220, 255)))
            shown = as_rgb(pixels)
            if row.get(key) is not None:
                contours, _ = cv2.findContours(row[key].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                shown = shown.copy()
                cv2.drawContours(shown, contours, -1, colour, 1)
            axes[r][c].imshow(shown, aspect="equal")
            axes[r][c].set_title(f"{name}\np = {p:.2f}" if p is not None else name, fontsize=8)
        axes[r][0].set_ylabel(row["title"], fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def audit_figure(report: dict, images: list, path: Path, dpi: int = 110) -> Path:
    """Image size (megapixels, log scale) per class and per centre — one dot per image over a box — and how well
    each cue that is not the lesion predicts the class (AUC with its 95 % CI; 0.5 chance, 0.70 the warning)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    for ax, (key, title) in zip(axes[:2], (("label", "class"), ("center", "centre")), strict=True):
        groups: dict[str, list[float]] = {}
        for image in images:
            if image.megapixels is not None:
                groups.setdefault(str(getattr(image.item, key) or "unknown"), []).append(image.megapixels)
        names = sorted(groups)
        if names:
            ax.boxplot([groups[n] for n in names], showfliers=False)
            rng = np.random.default_rng(0)
            for k, name in enumerate(names, start=1):
                ax.scatter(k + rng.uniform(-0.15, 0.15, len(groups[name])), groups[name], s=4, alpha=0.4)
            ax.set_xticks(range(1, len(names) + 1))
            ax.set_xticklabels([f"{n}\n(n={len(groups[n])})" for n in names], fontsize=8)
            ax.set_yscale("log")
        ax.set_title(f"image size by {title}", fontsize=10)
        ax.set_ylabel("megapixels (log)", fontsize=9)
        ax.grid(axis="y", color="0.92")
    ax = axes[2]
    cues = [(name, body) for name, body in report["cues"].items() if body.get("auc") is not None]
    ys = np.arange(len(cues))[::-1]
    for y, (_, body) in zip(ys, cues, strict=True):
        low, high = body["ci95"] or (body["auc"], body["auc"])
        colour = "tab:red" if body["auc"] > 0.70 else "tab:blue"
        ax.errorbar(body["auc"], y, xerr=[[body["auc"] - low], [high - body["auc"]]], fmt="o", color=colour, capsize=3)
    ax.axvline(0.5, color="0.5", ls="--", lw=1, label="chance")
    ax.axvline(0.70, color="tab:red", ls=":", lw=1, label="warning (0.70)")
    ax.set_yticks(ys)
    ax.set_yticklabels([name for name, _ in cues], fontsize=9)
    ax.set_xlim(0.3, 1.0)
    ax.set_xlabel("macro one-vs-rest AUC, cross-validated (95 % CI)", fontsize=9)
    ax.set_title("does something other than the lesion predict the class?", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", color="0.92")
    fig.suptitle(f"Data audit — {report['settings']['split']} split, {report['images']} images", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, dpi)
