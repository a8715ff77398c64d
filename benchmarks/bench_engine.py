"""Engine cost on tensors in memory: prediction + Grad-CAM vs plain inference, upstream's two-step,
pytorch-grad-cam as documented and torchcam (EfficientNet-B0, 224 px, batch 16; medians of 7 after warm-up).

    python benchmarks/bench_engine.py [--device cpu|cuda] [--repeats 7]
"""

from __future__ import annotations

import argparse

import numpy as np
import timm
import torch
from common import interleaved_medians, save_results, table
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from btxrd_cam.checkpoint import Checkpoint
from btxrd_cam.engine import Engine
from btxrd_cam.maps import upsample_cam


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=3).eval().to(device)
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    engine_model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=3).eval()
    engine_model.load_state_dict(model.state_dict())  # the engine converts its model to channels_last
    ckpt = Checkpoint(engine_model, "efficientnet_b0", ["Normal", "Benign", "Malignant"], 224, (0.5,) * 3, (0.5,) * 3,
                      "bn2", None, "")  # fmt: skip
    sync = device.type == "cuda"
    rows = []

    def inference():
        with torch.inference_mode():
            model(x)

    def engine_explain(engine):
        return lambda: engine.explain_tensors(x, [None] * len(x))

    def upstream_two_step():
        with torch.inference_mode():
            preds = model(x).argmax(1).tolist()
        with GradCAM(model, target_layers=[model.bn2]) as cam:
            cam(x, [ClassifierOutputTarget(p) for p in preds])

    def grad_cam_alone():
        with GradCAM(model, target_layers=[model.bn2]) as cam:
            cam(x, None)

    model_cl = timm.create_model("efficientnet_b0", pretrained=False, num_classes=3).eval().to(device)
    model_cl.load_state_dict(model.state_dict())
    model_cl = model_cl.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def inference_channels_last():
        with torch.inference_mode():
            model_cl(x_cl)

    candidates = {"inference (torch.inference_mode)": inference,
                  "inference, channels_last (the engine's layout)": inference_channels_last,
                  "btxrd-cam engine: prediction + Grad-CAM": engine_explain(Engine(ckpt, device=device)),
                  "upstream two-step (inference, then GradCAM)": upstream_two_step,
                  "pytorch-grad-cam GradCAM alone": grad_cam_alone}  # fmt: skip
    try:
        from torchcam.methods import GradCAM as TorchcamGradCAM

        def torchcam_gradcam():
            extractor = TorchcamGradCAM(model, target_layer="bn2")
            scores = model(x)
            extractor(scores.argmax(1).tolist(), scores)
            extractor.remove_hooks()
            model.zero_grad(set_to_none=True)

        candidates["torchcam GradCAM"] = torchcam_gradcam
    except ImportError:
        pass
    if device.type == "cuda":
        candidates["btxrd-cam engine --amp"] = engine_explain(Engine(ckpt, device=device, amp=True))

        def inference_amp():
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                model(x)

        candidates["inference --amp (bf16 autocast)"] = inference_amp
    results = interleaved_medians(candidates, args.repeats, warmup=3, sync=sync)
    base = results["inference (torch.inference_mode)"]
    engine = results["btxrd-cam engine: prediction + Grad-CAM"]
    for name, seconds in results.items():
        rows.append([name, f"{len(x) / seconds:.1f}", f"{seconds / base:.2f}", f"{seconds / engine:.2f}"])
    print(table(f"Engine, efficientnet_b0 224 px, batch {len(x)}, {device.type} (medians of {args.repeats})",
                ["method", "images/s", "x inference", "x engine"], rows))  # fmt: skip
    # the maps are the library's
    engine_obj = Engine(ckpt, device=device)
    _, cams = engine_obj.explain_tensors(x[:4], [0, 1, 2, 0])
    with GradCAM(model, target_layers=[model.bn2]) as cam:  # the library on the untouched contiguous model
        expected = cam(x[:4], [ClassifierOutputTarget(t) for t in (0, 1, 2, 0)])
    diff = float(np.abs(np.stack([upsample_cam(c, (224, 224)) for c in cams]) - expected).max())
    print(f"max |engine - pytorch-grad-cam| on [0,1] maps: {diff:.2e}")
    save_results(f"engine_{device.type}", {
        "batch": len(x), "image_size": 224, "repeats": args.repeats,
        "images_per_s": {k: len(x) / v for k, v in results.items()},
        "ratio_to_inference": {k: v / base for k, v in results.items()},
        "max_abs_diff_vs_pytorch_grad_cam": diff,
    })  # fmt: skip


if __name__ == "__main__":
    main()
