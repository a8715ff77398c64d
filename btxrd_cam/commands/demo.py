"""The embedded demo: a synthetic BTXRD-layout project whose lesions sit exactly where its annotations say.

`make_demo(out_dir)` writes `data_raw/` (images, LabelMe annotations in BTXRD's convention, the 37-column
dataset.csv), `data/splits/` manifests (synthetic.py draws them) and `checkpoints/best_stratified.pt` — an
EfficientNet-B0 trained from scratch on the demo's train split, saved in the upstream format. The only evidence
of the class is the lesion: global intensity statistics are matched between classes, every class carries
look-alike distractors, lesions move around. So a model that classifies well must look at the lesion, and the
annotations are ground truth for where the evidence is. The data and model are never tuned to make heatmaps look
good. Training is pinned (seed, 2 threads, deterministic algorithms) so that a machine gives the same checkpoint
every time; another CPU may still round differently (see the README for the range).

Not for: anything a user runs on real data.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from btxrd_cam.checkpoint import save_upstream_checkpoint
from btxrd_cam.console import progress
from btxrd_cam.data import DEFAULT_CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, load_image, preprocess
from btxrd_cam.errors import raise_if_interrupted
from btxrd_cam.synthetic import write_dataset

TRAINING_THREADS = 2  # pinned: the same machine gives the same checkpoint whatever its core count


def _tensors(data_root: Path, rows, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    names = list(DEFAULT_CLASS_NAMES)
    xs = [
        preprocess(
            load_image(data_root / "images" / image_id, keep_gray=True)[0],
            image_size,
            IMAGENET_MEAN,
            IMAGENET_STD,
        )
        for image_id, _ in rows
    ]
    return torch.from_numpy(np.stack(xs)), torch.tensor([names.index(label) for _, label in rows])


def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> None:
    """Recompute BatchNorm running statistics as exact averages over `images` (eval-mode accuracy needs them)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(images[i : i + batch_size])
    model.eval()


def macro_auc(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    model.eval()
    with torch.inference_mode():
        probs = torch.cat([model(images[i : i + 64]).softmax(1) for i in range(0, len(images), 64)]).numpy()
    return float(roc_auc_score(labels.numpy(), probs, multi_class="ovr", average="macro"))


def class_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Inverse class frequencies, mean 1."""
    counts = torch.bincount(labels, minlength=classes).clamp(min=1).float()
    weights = counts.sum() / (classes * counts)
    return weights / weights.mean()


@contextlib.contextmanager
def pinned_training():
    """What can be pinned for a reproducible training run: the intra-op threads and deterministic algorithms
    (restored after)."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(TRAINING_THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def train_model(
    x: torch.Tensor, y: torch.Tensor, arch: str, epochs: int, seed: int, quiet: bool = True, augment: bool = True
) -> nn.Module:
    """A timm model trained from scratch on (x, y), BatchNorm statistics recalibrated; `augment`: random flips and
    transposes of each batch."""
    with pinned_training():
        return _train(x, y, arch, epochs, seed, quiet, augment)


def _train(x, y, arch: str, epochs: int, seed: int, quiet: bool, augment: bool) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=len(DEFAULT_CLASS_NAMES))
    model = model.to(memory_format=torch.channels_last)  # ~1.4x faster convolutions on CPU
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    # class-balanced sampling (each class drawn equally often): BTXRD is 50 / 41 / 9 %, and a 9 % class of a few
    # dozen images is learned from balanced batches, not from a weighted loss on rare ones
    draw = class_weights(y, len(DEFAULT_CLASS_NAMES))[y]
    batch_size = 32
    steps = epochs * math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.2)
    generator = torch.Generator().manual_seed(seed)
    with progress(steps, f"demo: training {arch}", quiet) as advance:
        for _ in range(epochs):
            model.train()
            order = torch.multinomial(draw, len(x), replacement=True, generator=generator)
            for i in range(0, len(x), batch_size):
                raise_if_interrupted()
                idx = order[i : i + batch_size]
                xb = x[idx]
                flips = torch.rand(3, generator=generator) if augment else torch.ones(3)
                if flips[0] < 0.5:
                    xb = xb.flip(3)
                if flips[1] < 0.5:
                    xb = xb.flip(2)
                if flips[2] < 0.5:
                    xb = xb.transpose(2, 3)
                xb = xb.contiguous(memory_format=torch.channels_last)
                loss = nn.functional.cross_entropy(model(xb), y[idx], label_smoothing=0.05)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                advance()
    model = model.to(memory_format=torch.contiguous_format)
    recalibrate_batchnorm(model, x)
    return model


def make_demo(
    out_dir: Path,
    seed: int = 0,
    n_images: int = 400,
    arch: str = "efficientnet_b0",
    image_size: int = 160,
    epochs: int = 18,
    quiet: bool = True,
) -> dict:
    """Build the whole demo project; returns a summary with the eval-mode test macro AUC."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    membership = write_dataset(out_dir, n_images, seed, quiet)
    data_root = out_dir / "data_raw"
    split = membership["stratified"]
    x_train, y_train = _tensors(data_root, split["train"], image_size)
    model = train_model(x_train, y_train, arch, epochs, seed, quiet)
    x_test, y_test = _tensors(data_root, split["test"], image_size)
    auc = macro_auc(model, x_test, y_test)
    ckpt = out_dir / "checkpoints" / "best_stratified.pt"
    save_upstream_checkpoint(
        ckpt,
        model,
        arch,
        list(DEFAULT_CLASS_NAMES),
        image_size,
        extra={"epoch": epochs, "demo": {"seed": seed, "images": n_images, "test_macro_auc": round(auc, 4)}},
    )
    return {
        "out_dir": str(out_dir),
        "images": n_images,
        "seed": seed,
        "arch": arch,
        "image_size": image_size,
        "checkpoint": str(ckpt),
        "test_images": len(split["test"]),
        "test_macro_auc": round(auc, 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
