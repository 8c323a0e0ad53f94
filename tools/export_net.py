"""`sppnet export`: a trained model's scoring (conv layers, pyramid pooling, fc head, SVMs) as ONNX or TorchScript.

Proposals stay outside. Inputs: "image" (1, 3, H, W) float32 RGB 0..255, resized so that its
shorter side is the model's scale (--scale for a multi-scale model); "boxes" (N, 4) float32
windows, 0-based inclusive pixels of that image. Outputs: "margins" (N, K) and, for a calibrated
model, "probabilities" (N, K). NMS and box regression are left to the caller. `--set
test.fc6_svd_rank=T` exports the truncated-SVD head; the graph's head is float32 whatever
`test.head_precision`.
"""
from __future__ import annotations

import argparse

from tools.common import add_test_time_set_argument, model_overrides

FORMATS = ("onnx", "torchscript")  # detection.export.FORMATS, named here so that --help imports no torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model.pt written by `sppnet train`")
    parser.add_argument("--format", choices=FORMATS, required=True,
                        help="onnx (ONNX Runtime; needs the `export` extra) or torchscript (torch.jit.load)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    parser.add_argument("--scale", type=int, default=None,
                        help="the image scale (shorter side) the graph is for; needed when the model has several")
    add_test_time_set_argument(parser)


def run(args: argparse.Namespace) -> int:
    from detection.detector import Detector
    from detection.export import export_model

    detector = Detector.load(args.model, device="cpu", overrides=model_overrides(args))
    path = export_model(detector, args.out, args.format, scale=args.scale)
    print(f"{args.format}: {path} (inputs image (1, 3, H, W) at shorter side "
          f"{args.scale or detector.config.features.scales[0]}, boxes (N, 4); outputs "
          f"{'margins, probabilities' if detector.calibration is not None else 'margins'} (N, {len(detector.classes)}))")
    return 0
