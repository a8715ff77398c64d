"""Faithfulness: ROAD (Rong et al. 2022, "A consistent and efficient evaluation strategy for attribution
methods"), as pytorch-grad-cam implements it (`ROADCombined`).

For each percentile p the image's most relevant pixels (all but the p % least relevant) are removed and
imputed from their neighbours (MoRF), and separately the least relevant ones (LeRF); the score is the mean over
the percentiles of (confidence change after LeRF − confidence change after MoRF) / 2. Higher is more faithful: removing
what the map calls relevant hurts the model's confidence more than removing what it calls irrelevant.

The imputer solves the library's very equation system; only its assembly is vectorised (the library fills a
`lil_matrix` cell by cell, half of the time at 224 px), so the scores equal `ROADCombined`'s (tested).
Not for: producing maps (engine.py).
"""

from __future__ import annotations

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
from scipy.sparse.linalg import spsolve

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
        res = torch.tensor(spsolve(matrix, b), dtype=torch.float).t()
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
