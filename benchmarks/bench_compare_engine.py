"""compare's engine on tensors in memory: 7 single-pass methods x 4 `auto` layers of EfficientNet-B0 (224 px,
batch 16) in one pass, against its floor — a bare forward with the earliest layer's output made a leaf plus one
`autograd.grad` to it (no parameter gradients) — the one-configuration pass, and pytorch-grad-cam run once per
configuration, as a user would do today.

    python benchmarks/bench_compare_engine.py [--device cpu|cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from common import interleaved_medians, save_results, table

from btxrd_cam.checkpoint import Checkpoint
from btxrd_cam.engine import EIGEN, METHODS, SINGLE_PASS, CamConfig, Engine, frozen_eval
from btxrd_cam.layers import auto_layers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=3).eval()
    layers = auto_layers(model, "bn2", 224)
    configs = [CamConfig(m, layer) for m in SINGLE_PASS for layer in layers]
    names = ["Normal", "Benign", "Malignant"]
    ckpt = Checkpoint(model, "efficientnet_b0", names, 224, (0.5,) * 3, (0.5,) * 3, "bn2", None, "")
    many = Engine(ckpt, device=device, configs=configs)
    one = Engine(ckpt, device=device)
    no_eigen = [c for c in configs if c.method not in EIGEN]
    without_eigen = Engine(ckpt, device=device, configs=no_eigen)
    model = many.model  # channels-last, on the device: the floor and the library use the very same model
    x = torch.randn(args.batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    earliest = model.get_submodule(layers[-1])
    sync = device.type == "cuda"

    def floor():
        captured = {}

        def leaf(module, inputs, output):
            captured["leaf"] = output.detach().requires_grad_(True)
            return captured["leaf"]

        handle = earliest.register_forward_hook(leaf)
        try:
            with frozen_eval(model), torch.enable_grad():
                logits = model(x)
                score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
                torch.autograd.grad(score, captured["leaf"])
        finally:
            handle.remove()

    def inference():
        with torch.inference_mode():
            model(x)

    candidates = {
        "plain inference (inference_mode)": inference,
        f"floor: forward + autograd.grad to {layers[-1]}": floor,
        "btxrd-cam engine, 1 configuration (gradcam@bn2)": lambda: one.explain_all(x, [None] * len(x)),
        f"btxrd-cam engine, {len(no_eigen)} configurations without the Eigen methods": lambda: (
            without_eigen.explain_all(x, [None] * len(x))
        ),
        f"btxrd-cam engine, {len(configs)} configurations, one pass": lambda: many.explain_all(x, [None] * len(x)),
    }
    results = interleaved_medians(candidates, args.repeats, warmup=2, sync=sync)

    def library_once_per_configuration():
        with torch.inference_mode():
            preds = model(x).argmax(1).tolist()
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        for config in configs:
            with METHODS[config.method](model, target_layers=[model.get_submodule(config.layer)]) as cam:
                cam(x, [ClassifierOutputTarget(p) for p in preds])
        model.zero_grad(set_to_none=True)

    start = time.perf_counter()
    library_once_per_configuration()  # one run: it is slow, and its warm-up is the engine's above
    results["pytorch-grad-cam, once per configuration"] = time.perf_counter() - start
    floor_s = results[f"floor: forward + autograd.grad to {layers[-1]}"]
    engine_s = results[f"btxrd-cam engine, {len(configs)} configurations, one pass"]
    rows = [
        [name, f"{seconds:.3f}", f"{len(x) / seconds:.1f}", f"{seconds / floor_s:.2f}", f"{seconds / engine_s:.2f}"]
        for name, seconds in results.items()
    ]
    title = (
        f"compare's engine: {len(SINGLE_PASS)} methods x {len(layers)} layers ({', '.join(layers)}), efficientnet_b0 "
        f"224 px, batch {len(x)}, {device.type} (medians of {args.repeats}; the library: one run)"
    )
    print(table(title, ["", "s / batch", "images/s", "x floor", "x engine"], rows))
    save_results(
        f"compare_engine_{device.type}",
        {
            "batch": len(x),
            "layers": layers,
            "configurations": len(configs),
            "seconds_per_batch": results,
            "ratio_to_floor": {k: v / floor_s for k, v in results.items()},
            "ratio_to_engine": {k: v / engine_s for k, v in results.items()},
        },
    )


if __name__ == "__main__":
    main()
