"""The one engine: streams images in batches through the model and yields predictions and CAMs per image.

One forward pass gives both the prediction and the CAM. For the gradient methods the engine runs the whole
network once with every parameter frozen, turns the target layer's output into a leaf that requires grad (a
forward hook), and asks autograd for d(target score)/d(activations) only: nothing before the target layer is
recorded and no parameter gradient is computed. The channel weighting itself is pytorch-grad-cam's own
(`get_cam_image` of the method's class), so the maps equal the library's. Score-CAM, Ablation-CAM and
`--aug-smooth` run through pytorch-grad-cam as it is.

Not for: choosing images (data.py), scoring (metrics.py) or drawing (render.py).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from btxrd_cam.checkpoint import Checkpoint
from btxrd_cam.data import ImageItem, load_image, preprocess
from btxrd_cam.errors import InputError, UsageError

METHODS = {
    "gradcam": GradCAM,
    "hirescam": HiResCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
}
# Methods whose map is a function of (activations, gradients) of one pass: served by the single-pass path.
SINGLE_PASS = {"gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "eigencam", "eigengradcam"}
GRADIENT_FREE = {"eigencam"}


@dataclass
class Explanation:
    """What the engine knows about one image after its pass.

    logits, probs: float32 [C]; pred, target: class indices; cam: float32 [h, w] in [0, 1] — the raw map on the
    feature grid (model resolution for the library-path methods); orig_size: (H, W) of the decoded original;
    pixels: uint8 [H, W] or [H, W, 3], only when the caller asked to keep them.
    A failed image has `error` and nothing else.
    """

    index: int
    item: ImageItem
    orig_size: tuple[int, int] | None = None
    logits: np.ndarray | None = None
    probs: np.ndarray | None = None
    pred: int | None = None
    target: int | None = None
    cam: np.ndarray | None = None
    pixels: np.ndarray | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def upsample_cam(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Raw CAM → float32 [H, W] in [0, 1] at `size` = (H, W), exactly as pytorch-grad-cam scales its maps
    (bilinear resize of the normalised map, clamp at 0, min–max normalise again)."""
    height, width = size
    grid = scale_cam_image(cam[None].astype(np.float32))[0]  # the library's normalisation, on the small grid
    full = cv2.resize(grid, (width, height))  # bilinear, as scale_cam_image resizes
    # the library's second normalisation, done in place: full-size maps are megapixels
    np.maximum(full, 0, out=full)
    full -= full.min()
    full /= 1e-7 + full.max()
    return full


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
    orig_size: tuple[int, int]
    pixels: np.ndarray | None


class Engine:
    """Predictions and class-activation maps for a loaded checkpoint, on CPU or CUDA, in batches."""

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
    ) -> None:
        if method not in METHODS:
            raise UsageError(f"--method: got {method}; must be one of {', '.join(METHODS)}")
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        # channels-last convolutions are ~1.2x faster on CPU (oneDNN) and what tensor cores want on CUDA
        self.model = checkpoint.model.to(self.device, memory_format=torch.channels_last)
        self.layer = checkpoint.target_layer
        self.method = method
        self.batch_size = batch_size
        self.workers = workers
        self.amp = amp and self.device.type == "cuda"
        self.aug_smooth = aug_smooth
        self.eigen_smooth = eigen_smooth
        self.fast_decode = fast_decode
        self.single_pass = method in SINGLE_PASS and not aug_smooth
        # pytorch-grad-cam's method object, used only for its channel weighting (it hooks nothing here)
        with restored_mode(self.model):
            self._weighting = METHODS[method](self.model, target_layers=[])

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
        """Logits float32 [B, C] and CAMs float32 [B, h, w] in [0, 1] of one batch.

        targets: a class index per image, or None for "the class this very pass predicts".
        """
        batch = self._to_device(batch)
        if not self.single_pass:
            return self._explain_with_library(batch, targets)
        captured: dict[str, torch.Tensor] = {}
        gradient_free = self.method in GRADIENT_FREE

        def make_leaf(module, inputs, output):
            leaf = output.detach().requires_grad_(not gradient_free)
            captured["activations"] = leaf
            # a copy enters the graph, so layers after it may work in place
            return leaf.clone() if not gradient_free else leaf

        handle = self.layer.register_forward_hook(make_leaf)
        grad_mode = torch.no_grad() if gradient_free else torch.enable_grad()
        try:
            with frozen_eval(self.model), grad_mode, self._autocast():
                logits = self.model(batch)
                chosen = self._resolve_targets(logits, targets)
                activations = captured["activations"]
                if gradient_free:
                    grads = torch.zeros_like(activations)
                else:
                    score = logits.gather(1, chosen[:, None]).sum()
                    (grads,) = torch.autograd.grad(score, activations)
        finally:
            handle.remove()
        acts_np = activations.detach().float().cpu().numpy()
        grads_np = grads.detach().float().cpu().numpy()
        cam_targets = [ClassifierOutputTarget(int(t)) for t in chosen.tolist()]
        raw = self._weighting.get_cam_image(batch, self.layer, cam_targets, acts_np, grads_np, self.eigen_smooth)
        cams = scale_cam_image(np.maximum(raw, 0))
        return logits.detach().float(), cams.astype(np.float32)

    def _resolve_targets(self, logits: torch.Tensor, targets: list[int | None]) -> torch.Tensor:
        pred = logits.detach().argmax(1)
        fixed = torch.tensor([-1 if t is None else t for t in targets], device=pred.device)
        return torch.where(fixed < 0, pred, fixed)

    def _explain_with_library(self, batch, targets):
        logits = self.predict_tensors(batch)
        chosen = self._resolve_targets(logits, targets).tolist()
        with restored_mode(self.model), METHODS[self.method](self.model, target_layers=[self.layer]) as cam:
            maps = cam(
                batch,
                [ClassifierOutputTarget(int(t)) for t in chosen],
                aug_smooth=self.aug_smooth,
                eigen_smooth=self.eigen_smooth,
            )
        self.model.zero_grad(set_to_none=True)
        return logits, np.asarray(maps, dtype=np.float32)

    # ---- files -------------------------------------------------------------------------------------------

    def decode(self, item: ImageItem, keep_pixels: bool = False) -> _Decoded:
        """Decode and preprocess one image (the upstream test transform); InputError if it cannot be used."""
        size = self.checkpoint.image_size
        pixels, orig_size = load_image(item.path, keep_gray=True, draft_size=2 * size if self.fast_decode else None)
        if min(pixels.shape[:2]) < 2:
            raise InputError(item.path, f"image too small ({pixels.shape[1]}x{pixels.shape[0]} pixels)")
        tensor = preprocess(pixels, size, self.checkpoint.mean, self.checkpoint.std)
        return _Decoded(tensor, orig_size, pixels if keep_pixels else None)

    def _decode_or_error(self, item: ImageItem, keep_pixels: bool) -> _Decoded | str:
        try:
            return self.decode(item, keep_pixels)
        except InputError as exc:
            return exc.reason
        except Exception as exc:  # a decoder crash on one file must not stop the batch
            return f"could not decode ({type(exc).__name__}: {exc})"

    def _decoded_batches(self, items: list[ImageItem], keep_pixels: bool):
        chunks = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        if self.workers == 0:
            for chunk in chunks:
                yield chunk, [self._decode_or_error(item, keep_pixels) for item in chunk]
            return
        with ThreadPoolExecutor(self.workers) as pool:
            pending: deque = deque()
            for chunk in chunks:  # decode batch i+1 while the model runs batch i
                pending.append((chunk, [pool.submit(self._decode_or_error, it, keep_pixels) for it in chunk]))
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
    ) -> Iterator[Explanation]:
        """Explain images in order, one Explanation per item; failures become records with `error`.

        target: "pred", "true" (the item's label) or a class name. cams=False skips the CAM (plain inference).
        """
        items = list(items)
        fixed = None if target in ("pred", "true") else self.class_index(target)
        index = 0
        for chunk, decoded in self._decoded_batches(items, keep_pixels):
            results = [Explanation(index=index + i, item=item) for i, item in enumerate(chunk)]
            index += len(chunk)
            good, targets = [], []
            for result, dec in zip(results, decoded, strict=True):
                if isinstance(dec, str):
                    result.error = dec
                    continue
                result.orig_size, result.pixels = dec.orig_size, dec.pixels
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
                    logits, maps = self.explain_tensors(batch, targets)
                else:
                    logits, maps = self.predict_tensors(batch), None
                probs = torch.softmax(logits, dim=1).cpu().numpy()
                logits_np = logits.cpu().numpy()
                for j, (result, _) in enumerate(good):
                    result.logits, result.probs = logits_np[j], probs[j]
                    result.pred = int(np.argmax(logits_np[j]))
                    if cams:
                        result.target = result.pred if targets[j] is None else targets[j]
                        result.cam = maps[j]
            for result in results:
                if on_image:
                    on_image(result)
                yield result


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool [h, w] → bool [H, W] by nearest neighbour (upstream's way of comparing at model resolution)."""
    height, width = size
    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
