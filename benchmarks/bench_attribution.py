"""Pixel attributions and transformer CAMs against their floors (EfficientNet-B0 at 224 px for the attributions;
ViT-Tiny and Swin-Tiny at 224 px for the CAMs; batch 8, tensors in memory, medians):

- Integrated Gradients (32 steps) and SmoothGrad (16 samples) cost that many forward + backward passes of the model
  per image: the floor is that many batched forwards + backwards to the input, plainly;
- occlusion (window 1/8 of the side, stride half of it: 225 positions at 224 px) costs that many forwards: the floor
  is that many batched inference forwards;
- a transformer CAM's floor is one forward + one backward to the CAM layer.

    python benchmarks/bench_attribution.py
"""

from __future__ import annotations

import timm
import torch
from common import interleaved_medians, save_results, table

from btxrd_cam.checkpoint import Checkpoint, resolve_target_layer
from btxrd_cam.engine import CamConfig, Engine

BATCH = 8
SIZE = 224


def _checkpoint(model, layer):
    return Checkpoint(model, "x", ["a", "b", "c"], SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), layer, None, "")


def _input_gradients(model, batch: torch.Tensor, passes: int) -> None:
    """`passes` forwards + backwards to the input of a batch, in chunks of the batch size: the floor."""
    for _ in range(passes):
        x = batch.detach().requires_grad_(True)
        torch.autograd.grad(model(x)[:, 0].sum(), x)


def _forwards(model, batch: torch.Tensor, passes: int) -> None:
    """`passes` inference forwards of every image of the batch, 64 inputs at a time: the floor."""
    chunk = batch.repeat(64 // len(batch), 1, 1, 1)
    with torch.inference_mode():
        for _ in range(0, passes * len(batch), len(chunk)):
            model(chunk)


def attributions() -> tuple[list[list], dict]:
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=3).eval()
    batch = torch.randn(BATCH, 3, SIZE, SIZE)
    rows, results = [], {}
    for method, passes, floor in (("integrated-gradients", 32, _input_gradients), ("smoothgrad", 16, _input_gradients),
                                  ("occlusion", 225, _forwards)):  # fmt: skip
        engine = Engine(_checkpoint(model, "bn2"), configs=[CamConfig(method, "input")], batch_size=BATCH)
        assert engine.passes_per_image(engine.configs[0]) == passes
        times = interleaved_medians(
            {
                "engine": lambda e=engine: e.explain_all(batch, [0] * BATCH),
                "floor": lambda f=floor, p=passes: f(model, batch, p),
            },
            repeats=3,
            warmup=1,
        )
        ratio = times["engine"] / times["floor"]
        results[method] = {"passes": passes, "engine_s": times["engine"], "floor_s": times["floor"], "ratio": ratio}
        rows.append([method, passes, f"{times['floor']:.2f}", f"{times['engine']:.2f}", f"{ratio:.2f}"])
    return rows, results


def transformer_cams() -> tuple[list[list], dict]:
    rows, results = [], {}
    for arch in ("vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"):
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False, num_classes=3).eval()
        layer = resolve_target_layer(model, SIZE)
        engine = Engine(_checkpoint(model, layer), batch_size=BATCH)
        batch = torch.randn(BATCH, 3, SIZE, SIZE)
        module = model.get_submodule(layer)

        def floor(model=model, module=module, batch=batch):
            captured = {}
            handle = module.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
            try:
                with torch.enable_grad():
                    logits = model(batch)
                    torch.autograd.grad(logits[:, 0].sum(), captured["x"])
            finally:
                handle.remove()

        explain = lambda e=engine, b=batch: e.explain_all(b, [None] * BATCH)  # noqa: E731
        times = interleaved_medians({"engine": explain, "floor": floor})
        ratio = times["engine"] / times["floor"]
        results[arch] = {"layer": layer, "engine_s": times["engine"], "floor_s": times["floor"], "ratio": ratio}
        rows.append([arch, layer, f"{times['floor']:.3f}", f"{times['engine']:.3f}", f"{ratio:.2f}"])
    return rows, results


def main() -> None:
    rows, found = attributions()
    print(table(f"Pixel attributions, EfficientNet-B0, {SIZE} px, batch {BATCH} (s per batch)",
                ["method", "passes per image", "floor", "btxrd-cam", "x floor"], rows))  # fmt: skip
    cam_rows, cams = transformer_cams()
    title = (
        f"Transformer CAMs (gradcam), {SIZE} px, batch {BATCH} (s per batch); floor: forward + backward to the layer"
    )
    print(table(title, ["model", "layer", "floor", "btxrd-cam", "x floor"], cam_rows))
    save_results("attribution", {"attributions": found, "transformer_cams": cams})


if __name__ == "__main__":
    main()
