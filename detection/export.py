"""A trained detector's scoring as one graph, for ONNX Runtime or TorchScript (``sppnet export``).

The graph is SPP-net's part that needs a network: conv layers → window projection (recipe §2) →
spatial pyramid pooling (§3) → fc head (when the SVMs read fc6, fc7 or ftfc7+pool5) → SVM margins
(§7) and, for a calibrated model, per-class probabilities. Proposals stay outside (selective search
is not a tensor program), and so do NMS and box regression, which are cheap and need no network.

Inputs:

* ``image``: (1, 3, H, W) float32 RGB pixels in 0..255, already resized so that its shorter side
  is the model's scale (``features.extractor.resize_to_scale``: bilinear, aspect kept); any H, W;
* ``boxes``: (N, 4) float32 windows (x1, y1, x2, y2), 0-based inclusive pixels *of that image*;
  any N >= 1.

Outputs: ``margins`` (N, K) SVM margins and, for a calibrated model, ``probabilities`` (N, K).

One graph covers one scale: a multi-scale model is exported at a scale chosen among its scales
(the §4 rule picks a scale per window, which belongs with the resizing outside). Pooling runs
through ``torchvision.ops.roi_pool`` (ONNX ``MaxRoiPool``); :func:`~features.spp.roi_pool_bins_exact`
is checked first, so the exported bins are the exact §3 bins for every window an image up to
``MAX_SIDE`` pixels can hold.
"""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from detection.core.cache import atomic_write_bytes
from detection.core.errors import SppnetError
from detection.detector import Detector, head_activations, svm_margins
from features.projection import project_boxes
from features.spp import roi_pool_bins_exact, roi_pyramid_pool

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
MAX_SIDE = 10_000  # pixels: the bin check covers every window of an image up to this long side


class ExportError(SppnetError, ValueError):
    """A model that cannot be exported as asked; the message says why."""


class ScoringGraph(nn.Module):
    """``Detector`` scoring at one scale as a module: (image, boxes) -> margins[, probabilities] (module docstring)."""

    def __init__(self, detector: Detector, scale: int | None = None):
        super().__init__()
        cfg = detector.config.features
        if cfg.mode != "spp":
            raise ExportError(f"export covers SPP-net models; this one uses feature mode {cfg.mode!r}")
        scales = tuple(cfg.scales)
        if scale is None and len(scales) > 1:
            raise ExportError(f"the model has {len(scales)} scales ({','.join(map(str, scales))}): "
                              "choose the one to export with --scale")
        self.scale = scales[0] if scale is None else scale
        if self.scale not in scales:
            raise ExportError(f"--scale {self.scale} is not one of the model's scales ({','.join(map(str, scales))})")
        backbone = detector.backbone
        self.levels = tuple(cfg.pyramid_levels)
        if not roi_pool_bins_exact(self.levels, MAX_SIDE // backbone.stride + 1):
            raise ExportError(f"pyramid levels {self.levels}: roi_pool's float bin edges differ from the exact ones "
                              "for some window sizes, so the exported model would pool other cells")
        self.body = backbone.body
        self.bgr = backbone.bgr
        self.register_buffer("pixel_mean", torch.tensor(backbone.pixel_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(backbone.pixel_std, dtype=torch.float32).view(1, 3, 1, 1))
        self.stride, self.first_center = backbone.stride, backbone.first_center
        self.projection, self.offset = cfg.projection, cfg.official_offset
        self.feature_layer = detector.config.svm.feature_layer
        self.head = detector.detection_head
        self.register_buffer("svm_weights", detector.svm_weights * detector.feature_scale)
        self.register_buffer("svm_bias", detector.svm_bias.clone())
        calibration = detector.calibration
        self.calibrated = calibration is not None
        if self.calibrated:
            self.register_buffer("platt_coef", torch.tensor(calibration.coef_, dtype=torch.float32))
            self.register_buffer("platt_intercept", torch.tensor(calibration.intercept_, dtype=torch.float32))
        self.output_names = ["margins", "probabilities"] if self.calibrated else ["margins"]

    def forward(self, image: torch.Tensor, boxes: torch.Tensor):
        """(1, 3, H, W) float RGB 0..255 and (N, 4) boxes -> (N, K) margins[, (N, K) probabilities]."""
        x = image.flip(1) if self.bgr else image
        fmap = self.body((x - self.pixel_mean) / self.pixel_std)
        cells = project_boxes(boxes, self.stride, self.first_center, (fmap.shape[2], fmap.shape[3]),
                              rule=self.projection, offset=self.offset)
        pool5 = roi_pyramid_pool(fmap, cells, self.levels)
        margins = svm_margins(pool5, head_activations(pool5, self.head, self.feature_layer), self.feature_layer,
                              self.svm_weights, self.svm_bias)
        if not self.calibrated:
            return margins
        return margins, torch.sigmoid(-(margins * self.platt_coef + self.platt_intercept))


def example_inputs(graph: ScoringGraph, height: int | None = None, width: int | None = None,
                   windows: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, 3, H, W) image at the graph's scale (default: scale × 4/3 scale) and (windows, 4) boxes in it, seeded."""
    generator = torch.Generator().manual_seed(0)
    height = height or graph.scale
    width = width or graph.scale * 4 // 3
    image = torch.rand((1, 3, height, width), generator=generator) * 255
    corners = torch.rand((windows, 2, 2), generator=generator) * torch.tensor([width - 1.0, height - 1.0])
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    return image, boxes


def export_model(detector: Detector, path: str | Path, fmt: str, scale: int | None = None) -> Path:
    """Write ``detector``'s scoring graph (module docstring) to ``path`` as ``fmt`` ("onnx" or "torchscript")."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    # a copy on the CPU: the detector's own modules stay where they are
    graph = copy.deepcopy(ScoringGraph(detector, scale)).cpu().eval()
    inputs = example_inputs(graph)
    path = Path(path)
    with torch.no_grad():
        if fmt == "torchscript":
            data = _torchscript_bytes(graph, inputs)
        else:
            data = _onnx_bytes(graph, inputs)
    atomic_write_bytes(path, data)
    return path


def _torchscript_bytes(graph: ScoringGraph, inputs) -> bytes:
    # torch.jit is deprecated in recent torch (a FutureWarning on every call) but still what
    # `torch.jit.load` users need; asked for by name here, so the warning says nothing new
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(graph, inputs, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _onnx_bytes(graph: ScoringGraph, inputs) -> bytes:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'sppnet[export]'") from None
    buffer = io.BytesIO()
    dynamic = {"image": {2: "height", 3: "width"}, "boxes": {0: "windows"},
               **{name: {0: "windows"} for name in graph.output_names}}
    # the TorchScript-based exporter: it maps torchvision's roi_pool to ONNX MaxRoiPool, which the
    # dynamo-based one (torch >= 2.5's default) cannot translate
    torch.onnx.export(graph, inputs, buffer, input_names=["image", "boxes"], output_names=graph.output_names,
                      dynamic_axes=dynamic, opset_version=ONNX_OPSET, dynamo=False)
    return buffer.getvalue()
