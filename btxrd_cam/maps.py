"""Maps that are not CAMs, and operations on maps: pure functions on arrays, shared by every command.

Baselines (scored exactly like CAMs, so that a CAM's numbers can be read against chance):
- `uniform`: a constant map — every metric's chance level (IoU and PxAP become the mask's area fraction, the
  energy pointing game the mask's share of the image, and the pointing game never hits: the maximum is everywhere);
- `centre`: an isotropic Gaussian (in image-relative coordinates) on the image centre, σ = ¼ of each side — "the
  tumour is near the middle";
- `edges`: the Sobel gradient magnitude of the radiograph as the model sees it, Gaussian-smoothed — "an edge
  detector", the check pytorch-grad-cam's documentation recommends; it depends on the image, never on the model.

Operations: `upsample_cam` (a raw low-resolution map → [0, 1] at any size, exactly as pytorch-grad-cam scales),
and the similarity measures of the sanity check (`spearman`, `ssim`).
Not for: producing CAMs (engine.py) or scoring maps against masks (metrics.py, scoring.py).
"""

from __future__ import annotations

import cv2
import numpy as np

BASELINES = ("uniform", "centre", "edges")
EDGE_SIGMA = 0.02  # Gaussian smoothing of the edge map, as a fraction of the image's long side


def upsample_cam(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Raw CAM float [h, w] → float32 [H, W] in [0, 1] at `size` = (H, W), exactly as pytorch-grad-cam scales its
    maps (min–max normalise, bilinear resize, clamp at 0, min–max normalise again). A constant map becomes 0.
    The first normalisation is scale_cam_image's arithmetic (normalize_map; equal to the library's, tested),
    spelled here so that scoring a cached map does not import pytorch-grad-cam and torchvision (~3 s)."""
    height, width = size
    grid = normalize_map(cam)  # the library's normalisation, on the small grid
    full = cv2.resize(grid, (width, height))  # bilinear, as scale_cam_image resizes
    # the library's second normalisation, done in place: full-size maps are megapixels
    np.maximum(full, 0, out=full)
    full -= full.min()
    full /= 1e-7 + full.max()
    return full


def normalize_map(values: np.ndarray) -> np.ndarray:
    """float32 min–max normalisation to [0, 1]; a constant map becomes 0 (as pytorch-grad-cam does)."""
    values = values.astype(np.float32, copy=True)
    if values.size:
        values -= values.min()
    return values / (1e-7 + values.max(initial=0.0))


def uniform_map(size: tuple[int, int]) -> np.ndarray:
    """float32 [H, W] of ones: the chance level of every agreement metric."""
    return np.ones(size, dtype=np.float32)


def centre_map(size: tuple[int, int]) -> np.ndarray:
    """float32 [H, W] in [0, 1]: a Gaussian centred on the image with σ = ¼ of each side (isotropic in
    image-relative coordinates), min–max normalised."""
    height, width = size
    ys = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / (height / 4)
    xs = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / (width / 4)
    gauss = np.exp(-0.5 * ys[:, None] ** 2) * np.exp(-0.5 * xs[None, :] ** 2)
    return normalize_map(gauss)


def edges_map(pixels: np.ndarray) -> np.ndarray:
    """float32 [h, w] in [0, 1]: Sobel gradient magnitude of the image, Gaussian-smoothed (σ = 2 % of the long
    side), min–max normalised. pixels: uint8 or float [h, w] (grey) or [h, w, 3] (converted to grey)."""
    gray = pixels.astype(np.float32)
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_RGB2GRAY)
    dx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    dy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = cv2.magnitude(dx, dy)
    sigma = max(0.5, EDGE_SIGMA * max(gray.shape[:2]))
    return normalize_map(cv2.GaussianBlur(magnitude, (0, 0), sigma))


def baseline_map(name: str, size: tuple[int, int], model_pixels: np.ndarray | None = None) -> np.ndarray:
    """The baseline `name` as float32 [H, W] at `size`, ready to score like an upsampled CAM. `edges` needs the
    image as the model saw it (uint8 [S, S(, 3)]) and is upsampled from there exactly like a CAM."""
    if name == "uniform":
        return uniform_map(size)
    if name == "centre":
        return centre_map(size)
    if name == "edges":
        if model_pixels is None:
            raise ValueError("the edges baseline needs the image's pixels")
        return upsample_cam(edges_map(model_pixels), size)
    raise ValueError(f"unknown baseline {name!r}; must be one of {', '.join(BASELINES)}")


def noise_map(size: tuple[int, int], seed: int) -> np.ndarray:
    """float32 [H, W] in [0, 1): uniform random values (fixed seed) — a map that carries no information."""
    return np.random.default_rng(seed).random(size, dtype=np.float32)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of the same shape (ties ranked by their average), in [-1, 1].

    Two constant maps are identical (1.0); one constant map against a varying one carries no rank (0.0).
    """
    from scipy.stats import rankdata

    if np.array_equal(a, b):
        return 1.0  # exactly: identical maps must not read 0.9999999999999999
    x, y = rankdata(a.ravel()), rankdata(b.ravel())
    x -= x.mean()
    y -= y.mean()
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    if denominator == 0:
        return 0.0
    return float(np.clip((x * y).sum() / denominator, -1.0, 1.0))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two maps in [0, 1] (scikit-image, data_range 1, as Arun et al. 2021). Maps smaller
    than scikit-image's 7-pixel window use the largest odd window that fits (at least 3 pixels)."""
    from skimage.metrics import structural_similarity

    if np.array_equal(a, b):
        return 1.0
    side = min(a.shape)
    window = min(7, side if side % 2 else side - 1)
    if window < 3:
        raise ValueError(f"SSIM needs maps of at least 3x3 pixels, got {a.shape}")
    return float(structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=1.0, win_size=window))
