"""The one engine: streams images in batches through the model and yields predictions and CAMs per image.

One forward pass gives the prediction and every CAM asked for. The engine explains a list of configurations
(`METHOD@LAYER`; one by default: the checkpoint's target layer). For the single-pass gradient methods it hooks
every chosen layer, turns the output of the earliest one into a leaf that requires grad (nothing before it is
recorded, no parameter gradient is computed), takes one `autograd.grad` of the target scores with respect to all
captured activations, and hands each method's weighting — pytorch-grad-cam's own `get_cam_image` — the
activations and gradients of each layer, so the maps equal the library's. Score-CAM, Ablation-CAM and
`--aug-smooth` run through pytorch-grad-cam as it is, once per layer. Nobody else registers hooks.

Not for: choosing images (data.py), scoring (metrics.py), baselines and map operations (maps.py) or drawing
(render.py).
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from btxrd_cam.cache import CachedImage, ExplanationCache
from btxrd_cam.checkpoint import Checkpoint
from btxrd_cam.data import ImageItem, decode_image, fit_long_side, normalize_pixels, resize_for_model
from btxrd_cam.errors import InputError, UsageError, per_image, raise_if_interrupted
from btxrd_cam.layers import get_layer, layer_layouts

# pytorch-grad-cam's class of each method, by name. The library (with torchvision and scikit-learn behind it: ~3 s)
# is imported when a map is first computed, so that a re-run the cache answers never pays for it.
CAM_CLASS_NAMES = {
    "gradcam": "GradCAM",
    "hirescam": "HiResCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
}


def cam_class(method: str):
    """pytorch-grad-cam's class for `method` (e.g. GradCAM for "gradcam")."""
    import pytorch_grad_cam

    return getattr(pytorch_grad_cam, CAM_CLASS_NAMES[method])


def __getattr__(name: str):
    if name == "METHODS":  # {method: pytorch-grad-cam class}, imported on first use
        return {method: cam_class(method) for method in CAM_CLASS_NAMES}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Methods whose map is a function of (activations, gradients) of one pass: served by the single-pass path.
SINGLE_PASS = ("gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "eigencam", "eigengradcam")
GRADIENT_FREE = {"eigencam"}
EIGEN = {"eigencam", "eigengradcam"}
LIBRARY_PATH = ("scorecam", "ablationcam")
# Attributions of the input's pixels, through Captum: their layer is the input ("input"), their map the absolute
# attribution summed over the channels, normalised like a CAM.
ATTRIBUTION = ("integrated-gradients", "smoothgrad", "occlusion")
INPUT_LAYER = "input"
SMOOTHGRAD_SIGMA = 0.15  # of the input's range (Smilkov et al. 2017: 10–20 %)
NON_FINITE = (
    "the model returned NaN or infinite values for this image (check the checkpoint: a zero std in its "
    "normalisation, or weights that are not finite)"
)


@dataclass(frozen=True)
class CamConfig:
    """One explanation configuration: a CAM method at a layer, named `METHOD@LAYER` (e.g. `gradcam@bn2`)."""

    method: str
    layer: str

    @property
    def name(self) -> str:
        return f"{self.method}@{self.layer}"


@dataclass
class Explanation:
    """What the engine knows about one image after its pass.

    logits, probs: float32 [C]; pred, target: class indices; maps: {configuration name: float32 [h, w] in [0, 1]}
    — the raw map on the layer's feature grid (model resolution for the library-path methods); cam: the first
    configuration's map; model_pixels: uint8 [S, S] or [S, S, 3], the image as resized for the model (before
    normalisation); tensor: float32 [3, S, S], the model's input, only when the caller asked to keep it (to run
    other models on it without decoding again); thumbnail: uint8 [h, w(, 3)], the image downscaled for drawing,
    only when asked; source: what the file says about itself (DICOM: modality, window used, …; None otherwise);
    warnings: about the input, for the record; orig_size: (H, W) of the decoded original; pixels: uint8 [H, W] or
    [H, W, 3], only when the caller asked to keep them. A failed image has `error` and nothing else.
    """

    index: int
    item: ImageItem
    orig_size: tuple[int, int] | None = None
    logits: np.ndarray | None = None
    probs: np.ndarray | None = None
    pred: int | None = None
    target: int | None = None
    cam: np.ndarray | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    model_pixels: np.ndarray | None = None
    tensor: np.ndarray | None = None
    thumbnail: np.ndarray | None = None
    pixels: np.ndarray | None = None
    source: dict | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def eigen_projection(activations: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's `get_2d_projection` (projection on the first principal component per image), with a
    thin SVD: the first right singular vector is the same (LAPACK gesdd either way), 5-10x faster at bn2, where
    the library's full SVD builds a 1280x1280 matrix it never uses. float [B, C, h, w] → float32 [B, h, w]."""
    activations = np.where(np.isnan(activations), 0, activations)  # as the library does
    projections = []
    for one in activations:
        flat = one.reshape(one.shape[0], -1).transpose()
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        projections.append((flat @ vt[0, :]).reshape(one.shape[1:]))
    return np.float32(projections)


def pixel_seed(tensor: torch.Tensor) -> int:
    """A seed from an image's own pixels (SmoothGrad's noise): the same image draws the same noise in any batch."""
    import hashlib

    data = tensor.detach().float().cpu().numpy().tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:4], "little")


@contextlib.contextmanager
def restored_mode(model: torch.nn.Module):
    """Whatever mode the model is put in inside, it leaves in the mode it came in."""
    was_training = model.training
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def frozen_eval(model: torch.nn.Module):
    """Eval mode with every parameter frozen; the model's mode and requires_grad flags are restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@dataclass
class _Decoded:
    tensor: np.ndarray
    model_pixels: np.ndarray
    orig_size: tuple[int, int]
    pixels: np.ndarray | None
    thumbnail: np.ndarray | None
    source: dict | None
    warnings: list[str]


class Engine:
    """Predictions and class-activation maps for a loaded checkpoint, on CPU or CUDA, in batches.

    configs: the configurations to explain (default: `method` at the checkpoint's target layer). Layers are
    checked once, by a dummy forward, to output 4-D feature maps (`grids` holds each layer's (h, w)).
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        device: torch.device | str = "cpu",
        method: str = "gradcam",
        batch_size: int = 16,
        workers: int = 0,
        amp: bool = False,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        fast_decode: bool = False,
        configs: Sequence[CamConfig] | None = None,
        dicom_window: str = "file",
        layer_option: str = "--target-layer",
        ig_steps: int = 32,
        sg_samples: int = 16,
        occlusion_window: int | None = None,
    ) -> None:
        if not configs:
            layer = INPUT_LAYER if method in ATTRIBUTION else checkpoint.target_layer_name
            configs = [CamConfig(method, layer)]
        configs = list(configs)
        for config in configs:
            if config.method not in (*CAM_CLASS_NAMES, *ATTRIBUTION):
                allowed = ", ".join((*CAM_CLASS_NAMES, *ATTRIBUTION))
                raise UsageError(f"--method: got {config.method}; must be one of {allowed}")
            if (config.method in ATTRIBUTION) != (config.layer == INPUT_LAYER):
                raise UsageError(
                    f"--layers: {config.name}: the attribution methods ({', '.join(ATTRIBUTION)}) explain the input "
                    f"(layer {INPUT_LAYER}), and the CAM methods a layer of the model"
                )
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        # channels-last convolutions are ~1.2x faster on CPU (oneDNN) and what tensor cores want on CUDA
        self.model = checkpoint.model.to(self.device, memory_format=torch.channels_last)
        self.configs = configs
        self.layers = {}
        for config in configs:
            if config.layer not in self.layers and config.layer != INPUT_LAYER:
                self.layers[config.layer] = get_layer(self.model, config.layer, layer_option)[1]
        self.layouts = layer_layouts(self.model, list(self.layers), checkpoint.image_size, layer_option)
        self.grids = {name: layout.grid for name, layout in self.layouts.items()}
        size = checkpoint.image_size
        self.grids[INPUT_LAYER] = (size, size)
        for config in configs:
            if config.method == "ablationcam" and self.layouts[config.layer].kind != "nchw":
                raise UsageError(
                    f"--method: ablationcam at {config.layer} ({self.layouts[config.layer].kind} layout) needs "
                    "pytorch-grad-cam's transformer ablation layer, which btxrd-cam does not wire; use scorecam or a "
                    "gradient method there"
                )
        self._take_options(
            batch_size=batch_size, workers=workers, amp=amp, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth,
            fast_decode=fast_decode, dicom_window=dicom_window, ig_steps=ig_steps, sg_samples=sg_samples,
            occlusion_window=occlusion_window,
        )  # fmt: skip
        # pytorch-grad-cam's method objects, used only for their channel weighting (they hook nothing here)
        with restored_mode(self.model):
            self._weightings = {c.method: cam_class(c.method)(self.model, target_layers=[]) for c in self.single_pass}

    def _take_options(
        self, *, batch_size, workers, amp, aug_smooth, eigen_smooth, fast_decode, dicom_window, ig_steps, sg_samples,
        occlusion_window,
    ) -> None:  # fmt: skip
        """Check and keep the options (self.configs, self.device and self.checkpoint set), and sort the
        configurations by how they are computed: one pass, Captum's attributions, or the library's own passes."""
        size = self.checkpoint.image_size
        if not 2 <= ig_steps <= 1024:
            raise UsageError(f"--ig-steps: got {ig_steps}; must be a whole number from 2 to 1024")
        if not 1 <= sg_samples <= 1024:
            raise UsageError(f"--sg-samples: got {sg_samples}; must be a whole number from 1 to 1024")
        window = occlusion_window or max(1, size // 8)
        if not 1 <= window <= size:
            raise UsageError(f"--occlusion-window: got {window}; must be from 1 to the model's input size, {size} px")
        self.ig_steps, self.sg_samples, self.occlusion_window = ig_steps, sg_samples, window
        self.batch_size = batch_size
        self.workers = workers
        self.amp = amp and self.device.type == "cuda"
        self.aug_smooth = aug_smooth
        self.eigen_smooth = eigen_smooth
        self.fast_decode = fast_decode
        self.dicom_window = dicom_window
        configs = self.configs
        self.single_pass = [c for c in configs if c.method in SINGLE_PASS and not aug_smooth]
        self.attribution = [c for c in configs if c.method in ATTRIBUTION]
        self.library_path = [c for c in configs if c not in self.single_pass and c not in self.attribution]
        self._pool: ThreadPoolExecutor | None = None

    def map_shapes(self) -> dict[str, tuple[int, int]]:
        """{configuration name: (h, w)} of the raw maps this engine makes: the layer's grid for the single-pass
        methods, the model's input for the library's own passes."""
        size = self.checkpoint.image_size
        return {c.name: self.grids[c.layer] if c in self.single_pass else (size, size) for c in self.configs}

    def passes_per_image(self, config: CamConfig) -> int | None:
        """How many forward (+ backward) passes a configuration costs per image beyond the one pass, or None."""
        size, window = self.checkpoint.image_size, self.occlusion_window
        if config.method == "integrated-gradients":
            return self.ig_steps
        if config.method == "smoothgrad":
            return self.sg_samples
        if config.method == "occlusion":
            return ((size - window) // max(1, window // 2) + 1) ** 2  # Captum's count of window positions
        return None

    @property
    def method(self) -> str:
        return self.configs[0].method

    @property
    def layer(self) -> torch.nn.Module:
        return self.layers[self.configs[0].layer]

    @property
    def class_names(self) -> list[str]:
        return self.checkpoint.class_names

    def class_index(self, name: str) -> int:
        """Index of a class name (case-insensitive); UsageError listing the known names."""
        lowered = [c.lower() for c in self.class_names]
        if name.lower() not in lowered:
            raise UsageError(f"--target: got {name}; must be pred, true or one of {', '.join(self.class_names)}")
        return lowered.index(name.lower())

    # ---- tensors in memory -------------------------------------------------------------------------------

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def predict_tensors(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits float32 [B, C] of a plain inference-mode forward (no CAM)."""
        batch = self._to_device(batch)
        with torch.inference_mode(), self._autocast():
            was_training = self.model.training
            self.model.eval()
            try:
                return self.model(batch).float()
            finally:
                self.model.train(was_training)

    def explain_tensors(self, batch: torch.Tensor, targets: list[int | None]) -> tuple[torch.Tensor, np.ndarray]:
        """Logits float32 [B, C] and the first configuration's CAMs float32 [B, h, w] in [0, 1] of one batch.

        targets: a class index per image, or None for "the class this very pass predicts".
        """
        logits, maps = self.explain_all(batch, targets)
        return logits, maps[self.configs[0].name]

    def explain_all(self, batch: torch.Tensor, targets: list[int | None]) -> tuple[torch.Tensor, dict]:
        """Logits float32 [B, C] and {configuration name: CAMs float32 [B, h, w] in [0, 1]} of one batch, from
        one forward (plus pytorch-grad-cam's own passes for the library-path configurations)."""
        batch = self._to_device(batch)
        maps: dict[str, np.ndarray] = {}
        if self.single_pass:
            logits, chosen = self._single_pass(batch, targets, maps)
        else:
            logits = self.predict_tensors(batch)
            chosen = self._resolve_targets(logits, targets)
        for config in self.library_path:
            maps[config.name] = self._explain_with_library(batch, chosen.tolist(), config)
        for config in self.attribution:
            maps[config.name] = self._attribute(batch, chosen.tolist(), config)
        return logits, {c.name: maps[c.name] for c in self.configs}

    def _single_pass(self, batch, targets, maps):
        """One forward with hooks on every chosen layer, one autograd.grad, each method's weighting per layer."""
        from pytorch_grad_cam.utils.image import scale_cam_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        need_grad = {c.layer for c in self.single_pass if c.method not in GRADIENT_FREE}
        captured: dict[str, torch.Tensor] = {}

        def hook_for(name):
            def hook(module, inputs, output):
                if name in captured or not isinstance(output, torch.Tensor):
                    return None  # a module called twice keeps its first output
                if not captured:  # the earliest chosen layer: a leaf, so nothing before it is recorded
                    output = output.detach().requires_grad_(bool(need_grad))
                captured[name] = output
                return output.clone()  # a copy goes on, so later layers may work in place

            return hook

        layer_names = list(dict.fromkeys(c.layer for c in self.single_pass))
        handles = [self.layers[name].register_forward_hook(hook_for(name)) for name in layer_names]
        grad_mode = torch.enable_grad() if need_grad else torch.no_grad()
        try:
            with frozen_eval(self.model), grad_mode, self._autocast():
                logits = self.model(batch)
                chosen = self._resolve_targets(logits, targets)
                grads = {}
                if need_grad:
                    wanted = [name for name in layer_names if name in need_grad]
                    leaf = next(iter(captured))
                    for name in wanted:
                        if not captured[name].requires_grad:
                            raise UsageError(f"--layers: {name} does not depend on {leaf}; one pass cannot serve both")
                    score = logits.gather(1, chosen[:, None]).sum()
                    grads = dict(zip(wanted, torch.autograd.grad(score, [captured[n] for n in wanted]), strict=True))
        finally:
            for handle in handles:
                handle.remove()
        cam_targets = [ClassifierOutputTarget(int(t)) for t in chosen.tolist()]
        jobs = []
        for name in layer_names:  # each layer's output read as a feature map [B, C, h, w] (its layout)
            layout = self.layouts[name]
            acts = layout.to_nchw(captured[name].detach()).float().cpu().numpy()
            layer_grads = (
                layout.to_nchw(grads[name].detach()).float().cpu().numpy() if name in grads else np.zeros_like(acts)
            )
            jobs += [(config, acts, layer_grads) for config in self.single_pass if config.layer == name]
        jobs.sort(key=lambda job: job[0].method not in EIGEN)  # the slow SVDs first: the threads end together

        def weigh(job):
            config, acts, layer_grads = job
            raw = self._cam_image(config, batch, cam_targets, acts, layer_grads)
            return config.name, scale_cam_image(np.maximum(raw, 0)).astype(np.float32)

        # many small matrices: one BLAS thread each, and the configurations spread over the cores
        with threadpool_limits(1, user_api="blas"):
            maps.update(self._weighing_pool().map(weigh, jobs) if len(jobs) > 1 else map(weigh, jobs))
        return logits.detach().float(), chosen

    def _weighing_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="cam-weighting")
        return self._pool

    def _cam_image(self, config: CamConfig, batch, cam_targets, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """The method's raw map on the layer's grid: pytorch-grad-cam's `get_cam_image`, except that the
        principal-component projection of the Eigen methods uses a thin SVD (same result, see eigen_projection)."""
        if config.method == "eigencam":
            return eigen_projection(acts)
        if config.method == "eigengradcam":
            return eigen_projection(grads * acts)
        weighting = self._weightings[config.method]
        return weighting.get_cam_image(batch, self.layers[config.layer], cam_targets, acts, grads, self.eigen_smooth)

    def _resolve_targets(self, logits: torch.Tensor, targets: list[int | None]) -> torch.Tensor:
        pred = logits.detach().argmax(1)
        fixed = torch.tensor([-1 if t is None else t for t in targets], device=pred.device)
        return torch.where(fixed < 0, pred, fixed)

    def _explain_with_library(self, batch, chosen: list[int], config: CamConfig) -> np.ndarray:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layer, layout = self.layers[config.layer], self.layouts[config.layer]
        reshape = None if layout.kind == "nchw" else layout.to_nchw
        with (
            restored_mode(self.model),
            cam_class(config.method)(self.model, target_layers=[layer], reshape_transform=reshape) as cam,
        ):
            maps = cam(
                batch,
                [ClassifierOutputTarget(int(t)) for t in chosen],
                aug_smooth=self.aug_smooth,
                eigen_smooth=self.eigen_smooth,
            )
        self.model.zero_grad(set_to_none=True)
        return np.asarray(maps, dtype=np.float32)

    def _baseline(self) -> torch.Tensor:
        """A black image in the model's normalised input space, [1, 3, S, S] (Integrated Gradients' baseline and
        what occlusion fills with)."""
        mean = torch.tensor(self.checkpoint.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.checkpoint.std, dtype=torch.float32).view(1, 3, 1, 1)
        size = self.checkpoint.image_size
        return ((0.0 - mean) / std).expand(1, 3, size, size).to(self.device)

    def _attribute(self, batch: torch.Tensor, chosen: list[int], config: CamConfig) -> np.ndarray:
        """Captum's attribution of the input for each image's class → |attribution| summed over channels, min–max
        normalised like a CAM: float32 [B, S, S] in [0, 1]. SmoothGrad's noise is seeded per image by its pixels,
        so an image's map does not depend on the batch it is in."""
        from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency
        from pytorch_grad_cam.utils.image import scale_cam_image

        batch = batch.float().contiguous()
        baseline = self._baseline()
        with frozen_eval(self.model) as model, torch.enable_grad():
            if config.method == "integrated-gradients":
                attribution = IntegratedGradients(model).attribute(
                    batch,
                    baselines=baseline,
                    target=chosen,
                    n_steps=self.ig_steps,
                    internal_batch_size=max(1, len(batch)),  # chunks of the batch's size: larger ones are slower on CPU
                )
            elif config.method == "smoothgrad":
                sigma = self.smoothgrad_sigma()
                parts = []
                for i in range(len(batch)):
                    with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                        torch.manual_seed(pixel_seed(batch[i]))
                        parts.append(
                            NoiseTunnel(Saliency(model)).attribute(
                                batch[i : i + 1],
                                nt_type="smoothgrad",
                                nt_samples=self.sg_samples,
                                nt_samples_batch_size=min(self.sg_samples, self.batch_size),
                                stdevs=sigma,
                                target=chosen[i],
                                abs=False,
                            )
                        )
                attribution = torch.cat(parts)
            else:
                window, stride = self.occlusion_window, max(1, self.occlusion_window // 2)
                attribution = Occlusion(model).attribute(
                    batch,
                    sliding_window_shapes=(3, window, window),
                    strides=(3, stride, stride),
                    baselines=baseline,
                    target=chosen,
                    perturbations_per_eval=max(1, 64 // len(batch)),
                )
        maps = attribution.detach().abs().sum(dim=1).float().cpu().numpy()
        return scale_cam_image(maps).astype(np.float32)

    def smoothgrad_sigma(self) -> float:
        """SmoothGrad's noise σ: 15 % of the input's range, in the model's normalised space (a pixel's 0…1 spans
        1/std there; the mean over the channels)."""
        return float(SMOOTHGRAD_SIGMA * np.mean([1.0 / s for s in self.checkpoint.std]))

    # ---- files -------------------------------------------------------------------------------------------

    def decode(self, item: ImageItem, keep_pixels: bool = False, thumbnail: int | None = None) -> _Decoded:
        """Decode and preprocess one image (the upstream test transform); InputError if it cannot be used.
        thumbnail: also keep the image downscaled to this long side (for drawing, from the same decode)."""
        size = self.checkpoint.image_size
        draft = 2 * size if self.fast_decode else None
        decoded = decode_image(item.path, keep_gray=True, draft_size=draft, dicom_window=self.dicom_window)
        pixels, orig_size = decoded.pixels, decoded.size
        if min(pixels.shape[:2]) < 2:
            raise InputError(item.path, f"image too small ({pixels.shape[1]}x{pixels.shape[0]} pixels)")
        resized = resize_for_model(pixels, size)
        tensor = normalize_pixels(resized, self.checkpoint.mean, self.checkpoint.std)
        small = fit_long_side(pixels, thumbnail) if thumbnail else None
        kept = pixels if keep_pixels else None
        return _Decoded(tensor, resized, orig_size, kept, small, decoded.info, decoded.warnings)

    def _decode_or_error(self, item: ImageItem, keep_pixels: bool, thumbnail: int | None) -> _Decoded | str:
        """The decoded image, or the reason it cannot be used (the record names the file)."""
        work = lambda: self.decode(item, keep_pixels, thumbnail)  # noqa: E731
        return per_image(work, lambda reason: reason, item.path, named=False)

    def _decoded_batches(self, items: list[ImageItem], keep_pixels: bool, thumbnail: int | None):
        chunks = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        if self.workers == 0:
            for chunk in chunks:
                yield chunk, [self._decode_or_error(item, keep_pixels, thumbnail) for item in chunk]
            return
        with ThreadPoolExecutor(self.workers) as pool:
            pending: deque = deque()
            for chunk in chunks:  # decode batch i+1 while the model runs batch i
                futures = [pool.submit(self._decode_or_error, it, keep_pixels, thumbnail) for it in chunk]
                pending.append((chunk, futures))
                if len(pending) > 1:
                    done_chunk, futures = pending.popleft()
                    yield done_chunk, [f.result() for f in futures]
            while pending:
                done_chunk, futures = pending.popleft()
                yield done_chunk, [f.result() for f in futures]

    def run(
        self,
        items: Iterable[ImageItem],
        target: str = "pred",
        cams: bool = True,
        keep_pixels: bool = False,
        on_image: Callable[[Explanation], None] | None = None,
        keep_tensors: bool = False,
        thumbnail: int | None = None,
        cache: ExplanationCache | None = None,
    ) -> Iterator[Explanation]:
        """Explain images in order, one Explanation per item; failures become records with `error`.

        target: "pred", "true" (the item's label) or a class name. cams=False skips the CAMs (plain inference).
        keep_tensors: keep each image's model input in its Explanation; thumbnail: keep the image downscaled to
        this long side (drawn from the same decode: nothing is read twice). cache: consulted before anything is
        decoded or run — an image whose computation it holds is neither decoded nor run through the model — and
        given what is computed (not when the caller needs the full pixels or the model inputs, which it does not
        keep).
        """
        items = list(items)
        fixed = None if target in ("pred", "true") else self.class_index(target)
        rule = target if fixed is None else f"class {fixed}"  # the cache keys the index, not the spelling
        names = [c.name for c in self.configs] if cams else []
        usable = cache is not None and not keep_pixels and not keep_tensors
        held = [usable and cache.probe(item, rule, names, thumbnail) for item in items]
        computed = self._compute(
            [item for item, hit in zip(items, held, strict=True) if not hit],
            target, fixed, cams, keep_pixels, keep_tensors, thumbnail,
        )  # fmt: skip
        writer = ThreadPoolExecutor(1, thread_name_prefix="cache-writer") if usable else None
        try:
            for index, (item, hit) in enumerate(zip(items, held, strict=True)):
                raise_if_interrupted()
                entry = cache.load(item, rule, names, thumbnail) if hit else None
                if entry is not None:
                    result = self._from_cache(item, entry, target, fixed, names)
                elif hit:  # the entry changed since it was probed: compute this one image now
                    result = next(self._compute([item], target, fixed, cams, keep_pixels, keep_tensors, thumbnail))
                else:
                    result = next(computed)
                result.index = index
                if usable and entry is None and result.ok:
                    stored = CachedImage(
                        result.logits,
                        result.probs,
                        result.orig_size,
                        dict(result.maps),
                        result.model_pixels,
                        result.thumbnail,
                        result.source,
                        list(result.warnings),
                    )
                    writer.submit(cache.store, item, rule, stored, thumbnail)  # fmt: skip
                if on_image:
                    on_image(result)
                yield result
        finally:
            if writer is not None:
                writer.shutdown(wait=True)

    def _from_cache(self, item: ImageItem, entry, target: str, fixed: int | None, names: list[str]) -> Explanation:
        result = Explanation(index=0, item=item, orig_size=entry.orig_size, logits=entry.logits, probs=entry.probs)
        result.pred = int(np.argmax(entry.logits))
        result.model_pixels, result.thumbnail = entry.model_pixels, entry.thumbnail
        result.source, result.warnings = entry.source, list(entry.warnings)
        if names:
            result.target = self.class_index(item.label) if target == "true" else fixed
            result.target = result.pred if result.target is None else result.target
            result.maps = {name: entry.maps[name] for name in names}
            result.cam = result.maps[names[0]]
        return result

    def _compute(self, items, target, fixed, cams, keep_pixels, keep_tensors, thumbnail) -> Iterator[Explanation]:
        """Decode (batch i+1 while the model runs batch i) and explain, in order."""
        index = 0
        for chunk, decoded in self._decoded_batches(items, keep_pixels, thumbnail):
            raise_if_interrupted()  # stop at the next batch even if a library swallowed the interrupt
            results = [Explanation(index=index + i, item=item) for i, item in enumerate(chunk)]
            index += len(chunk)
            good, targets = [], []
            for result, dec in zip(results, decoded, strict=True):
                if isinstance(dec, str):
                    result.error = dec
                    continue
                result.orig_size, result.pixels, result.model_pixels = dec.orig_size, dec.pixels, dec.model_pixels
                result.tensor = dec.tensor if keep_tensors else None
                result.thumbnail = dec.thumbnail
                result.source, result.warnings = dec.source, list(dec.warnings)
                wanted = fixed
                if target == "true":
                    label = result.item.label
                    if label is None:
                        result.error = "--target true needs the image's label (run on a split)"
                        continue
                    wanted = self.class_index(label)
                good.append((result, dec))
                targets.append(wanted)
            if good:
                batch = torch.from_numpy(np.stack([dec.tensor for _, dec in good]))
                if cams:
                    logits, maps = self.explain_all(batch, targets)
                else:
                    logits, maps = self.predict_tensors(batch), {}
                probs = torch.softmax(logits, dim=1).cpu().numpy()
                logits_np = logits.cpu().numpy()
                finite = np.isfinite(logits_np).all(axis=1)
                for j, (result, _) in enumerate(good):
                    if not finite[j]:  # never a class: a NaN's argmax would read as class 0
                        result.error = NON_FINITE
                        result.model_pixels = result.thumbnail = result.tensor = result.pixels = None
                        continue
                    result.logits, result.probs = logits_np[j], probs[j]
                    result.pred = int(np.argmax(logits_np[j]))
                    if cams:
                        result.target = result.pred if targets[j] is None else targets[j]
                        result.maps = {name: stack[j] for name, stack in maps.items()}
                        result.cam = result.maps[self.configs[0].name]
                        if not all(np.isfinite(m).all() for m in result.maps.values()):
                            result.error = (
                                "the explanation came out NaN or infinite (the model's gradients are not finite)"
                            )
            yield from results
