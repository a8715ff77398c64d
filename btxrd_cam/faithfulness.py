"""Faithfulness and interventions on the model's input: ROAD (Rong et al. 2022, "A consistent and efficient
evaluation strategy for attribution methods"), as pytorch-grad-cam implements it (`ROADCombined`), and the fills
and control placement of `evidence` — pure functions on arrays, shared by sanity and evidence.

For each percentile p the image's most relevant pixels (all but the p % least relevant) are removed and
imputed from their neighbours (MoRF), and separately the least relevant ones (LeRF); the score is the mean over
the percentiles of (confidence change after LeRF − confidence change after MoRF) / 2. Higher is more faithful: removing
what the map calls relevant hurts the model's confidence more than removing what it calls irrelevant.

The imputer solves the library's very equation system; only its assembly is vectorised (the library fills a
`lil_matrix` cell by cell, half of the time at 224 px) and its solve is ordered for the system's symmetry (a
minimum-degree ordering of A + Aᵀ and SuperLU's symmetric mode: 1.5–3x faster than the library's default COLAMD
on these grid systems, the same solution to ~1e-14), so the scores equal `ROADCombined`'s (tested).

Fills (`evidence`): `impute` (ROAD's noisy linear imputation: the removed region's shape leaks as little as
possible), `blur` (a Gaussian blur of the image, σ = 10 % of the side) and `mean` (the image's mean). The control
placement moves the removed lesion's shape elsewhere on the body (`place_controls`, a pure function of the mask,
the body and a seed). Not for: producing maps (engine.py) or running the model on copies (commands/evidence.py).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from pytorch_grad_cam.metrics.perturbation_confidence import (
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer, neighbors_weights
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from scipy.sparse import coo_matrix, csc_matrix
from scipy.sparse.linalg import splu

ROAD_PERCENTILES = (20, 40, 60, 80)


def linear_system(mask: np.ndarray, img: np.ndarray, weights=neighbors_weights) -> tuple[csc_matrix, np.ndarray]:
    """pytorch-grad-cam's `NoisyLinearImputer.setup_sparse_system`, assembled as COO triplets: the same matrix
    (every cell is written once) and the same right-hand side, computed in the same order."""
    maskflt = mask.flatten()
    imgflat = img.reshape((img.shape[0], -1))
    indices = np.argwhere(maskflt == 0).flatten()
    coords_to_vidx = np.zeros(len(maskflt), dtype=int)
    coords_to_vidx[indices] = np.arange(len(indices))
    n = len(indices)
    b = np.zeros((n, img.shape[0]))
    sum_neighbors = np.ones(n)
    rows, cols, values = [], [], []
    for offset, weight in weights:
        valid, new_coords = NoisyLinearImputer.add_offset_to_indices(indices, offset, mask.shape)
        valid_coords = new_coords[valid]
        valid_ids = np.argwhere(valid == 1).flatten()
        known = maskflt[valid_coords] > 0.5
        b[valid_ids[known], :] -= weight * imgflat[:, valid_coords[known]].T
        unknown = maskflt[valid_coords] < 0.5
        rows.append(valid_ids[unknown])
        cols.append(coords_to_vidx[valid_coords[unknown]])
        values.append(np.full(int(unknown.sum()), weight))
        invalid = np.argwhere(valid == 0).flatten()
        sum_neighbors[invalid] = sum_neighbors[invalid] - weight
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    values.append(-sum_neighbors)
    matrix = coo_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsc()
    matrix.eliminate_zeros()  # lil_matrix stores no explicit zeros
    return matrix, b


def solve_symmetric(matrix: csc_matrix, b: np.ndarray) -> np.ndarray:
    """x of matrix @ x = b for ROAD's (symmetric, diagonally dominant) imputation systems: SuperLU with a
    minimum-degree ordering on A + Aᵀ in symmetric mode (the factorisation releases the GIL: images may be imputed
    in threads). float64 [n] or [n, k]."""
    if matrix.shape[0] == 0:
        return np.zeros_like(b)
    factors = splu(matrix.tocsc(), permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True})
    return factors.solve(np.asarray(b, dtype=np.float64))


class FastNoisyLinearImputer(NoisyLinearImputer):
    """The library's noisy linear imputation with the system assembled by `linear_system`, its noise drawn from
    `generator` (the global generator, as the library does, when None)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = generator

    def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        imgflt = img.reshape(img.shape[0], -1)
        maskflt = mask.reshape(-1)
        indices_linear = np.argwhere(maskflt == 0).flatten()
        matrix, b = linear_system(mask.numpy(), img.numpy(), self.weighting)
        res = torch.tensor(solve_symmetric(matrix, b), dtype=torch.float).t()
        noise = torch.randn(res.shape, generator=self.generator, dtype=res.dtype)
        img_infill = imgflt.clone()
        img_infill[:, indices_linear] = res + self.noise * noise
        return img_infill.reshape_as(img)


def road_combined(
    model: torch.nn.Module,
    tensors: torch.Tensor,
    maps: np.ndarray,
    classes: list[int],
    seed: int,
    percentiles=ROAD_PERCENTILES,
) -> np.ndarray:
    """ROADCombined scores, float32 [B], of `maps` (float32 [B, S, S] in [0, 1]) for `tensors` (the model's inputs
    [B, 3, S, S]) and the softmax probability of `classes`, the imputation noise drawn from a generator seeded with
    `seed` — what `ROADCombined(percentiles)(tensors, maps, targets, model)` returns after `torch.manual_seed(seed)`.
    Thread-safe: nothing global is drawn from, so images may be scored in parallel."""
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    generator = torch.Generator().manual_seed(seed)

    def averager(removal):
        return AveragerAcrossThresholds(
            lambda p: PerturbationConfidenceMetric(removal(p, FastNoisyLinearImputer(generator))), list(percentiles)
        )

    scores_lerf = averager(RemoveLeastRelevantFirst)(tensors, maps, targets, model)
    scores_morf = averager(RemoveMostRelevantFirst)(tensors, maps, targets, model)
    return (scores_lerf - scores_morf) / 2


# ---- interventions on the model's input (evidence) -------------------------------------------------------------

BLUR_SIGMA = 0.10  # the blur fill's σ, as a fraction of the image side
CONTROL_BODY_SHARE = 0.8  # a control region lies at least this much inside the body


def fill_region(tensor: np.ndarray, remove: np.ndarray, fill: str, generator: torch.Generator | None = None):
    """A copy of the model input `tensor` (float32 [3, S, S], normalised) with the pixels of `remove` (bool [S, S])
    filled: `impute` — ROAD's noisy linear imputation from the remaining pixels (noise from `generator`); `blur` — a
    Gaussian blur of the whole image (σ = 10 % of the side) shown through the region; `mean` — each channel's
    mean. Pixels outside the region are unchanged, exactly. Returns float32 [3, S, S]."""
    remove = np.asarray(remove, dtype=bool)
    if not remove.any():
        return tensor.copy()
    if fill == "impute":
        keep = torch.from_numpy((~remove).astype(np.float32))
        return FastNoisyLinearImputer(generator)(torch.from_numpy(tensor), keep).numpy()
    out = tensor.copy()
    if fill == "blur":
        sigma = BLUR_SIGMA * max(tensor.shape[1:])
        for c in range(tensor.shape[0]):
            out[c][remove] = cv2.GaussianBlur(tensor[c], (0, 0), sigma)[remove]
        return out
    if fill == "mean":
        for c in range(tensor.shape[0]):
            out[c][remove] = tensor[c].mean(dtype=np.float64)
        return out
    raise ValueError(f"fill must be impute, blur or mean, not {fill!r}")


def dilate(mask: np.ndarray, margin: int) -> np.ndarray:
    """bool [h, w]: the mask grown by `margin` pixels — every pixel within that Euclidean distance of it (a disc
    kernel; OpenCV's elliptic kernel is not a disc at small radii); unchanged for margin 0."""
    if margin <= 0:
        return mask.copy()
    offsets = np.arange(-margin, margin + 1)
    disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= margin * margin).astype(np.uint8)  # Euclidean
    return cv2.dilate(mask.astype(np.uint8), disc) > 0


def body_mask(pixels: np.ndarray) -> np.ndarray:
    """bool [h, w]: the body on a radiograph (uint8 [h, w] or [h, w, 3]) — the pixels above Otsu's threshold."""
    gray = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    _, foreground = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return foreground > 0


def place_controls(
    lesion: np.ndarray, body: np.ndarray, count: int, seed: int, body_share: float = CONTROL_BODY_SHARE
) -> list[np.ndarray]:
    """Up to `count` copies of the `lesion` mask (bool [h, w], the region removed from the lesion) moved elsewhere:
    each lies wholly inside the image, neither overlaps nor touches the lesion (not even diagonally), and lies at
    least `body_share` inside `body` (bool [h, w]). The places are drawn without replacement, under `seed`, from
    every translation that qualifies; fewer are returned when fewer qualify (none for a lesion larger than half
    the image, say). Returns bool [h, w] masks, each with exactly the lesion's pixel count."""
    ys, xs = np.nonzero(lesion)
    if ys.size == 0:
        return []
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    shape = lesion[y0:y1, x0:x1].astype(np.float32)
    height, width = lesion.shape
    if shape.shape[0] > height or shape.shape[1] > width:
        return []
    forbidden = dilate(lesion, 1).astype(np.float32)
    # for every top-left corner of the shape's box inside the image: its overlap with the forbidden zone and body
    overlap = cv2.matchTemplate(forbidden, shape, cv2.TM_CCORR)
    inside = cv2.matchTemplate(body.astype(np.float32), shape, cv2.TM_CCORR)
    area = float(shape.sum())
    valid = (overlap < 0.5) & (inside >= body_share * area - 0.5)  # sums of 0/1 products: exact up to FFT noise
    candidates = np.flatnonzero(valid)
    if candidates.size == 0:
        return []
    rng = np.random.default_rng(seed)
    picks = rng.choice(candidates, size=min(count, candidates.size), replace=False)
    controls = []
    for pick in picks:
        top, left = divmod(int(pick), valid.shape[1])
        moved = np.zeros_like(lesion, dtype=bool)
        moved[top : top + shape.shape[0], left : left + shape.shape[1]] = lesion[y0:y1, x0:x1]
        controls.append(moved)
    return controls


def top_pixels(saliency: np.ndarray, count: int) -> np.ndarray:
    """bool [h, w]: exactly `count` pixels of highest `saliency` (float [h, w]); ties broken by position (the
    first in row-major order wins), so the region is deterministic even on a flat map."""
    order = np.argsort(-saliency.ravel(), kind="stable")[: max(0, int(count))]
    chosen = np.zeros(saliency.size, dtype=bool)
    chosen[order] = True
    return chosen.reshape(saliency.shape)
