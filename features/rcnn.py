"""R-CNN's window features: each window cropped with context, warped, and run through the conv layers.

This is the baseline SPP-net is measured against (recipe §11): where SPP-net runs the conv layers
once per image, R-CNN (Girshick et al. 2014) runs them once per window. The crop follows R-CNN's
``rcnn_im_crop.m`` in its "warp" mode with ``padding = 16``:

1. The window is enlarged about its centre so that, once warped to ``crop_size`` × ``crop_size``,
   16 px of the crop (in the *warped* frame) surround the window on each side: scale =
   crop_size / (crop_size - 2·16), i.e. 227/195 for alexnet/zf5 and 224/192 for vgg16/efficientnet.
2. The enlarged box is clipped to the image. Its clipped part is warped to the size it would have
   had unclipped and placed where it belongs in the crop; the rest of the crop is the mean pixel,
   which is 0 after the backbone's normalisation (R-CNN subtracts the mean and fills with zeros).
3. The warp is bilinear on the clipped region alone (MATLAB's ``imresize`` without antialiasing,
   as R-CNN; OpenCV's ``cv2.resize`` INTER_LINEAR in Caffe's window data layer is the same):
   output pixel j samples source x = x0 + (j + 0.5)·w_in/w_out - 0.5, pixels replicated past the
   region's edge.

The crops then go through the backbone's conv layers in batches of ``rcnn_batch_size``, and each
crop's whole conv map is pooled with the same spatial pyramid as SPP mode (the window is the whole
map), so the feature length, and every SVM, box-regression and head layer after it, is the same.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import numpy as np
import torch
import torch.nn.functional as F

from detection.core.config import FeatureConfig
from features.backbones import Backbone, conv_precision, prepare_backbone
from features.extractor import first_of_groups
from features.spp import spp_output_dim, whole_map_pyramid_pool

# A grid_sample coordinate (normalised, align_corners=False) whose four neighbours all lie off the
# image: with padding_mode="zeros" it reads 0, the normalised mean pixel.
_OFF_IMAGE = -3.0


def _matlab_round(x: np.ndarray) -> np.ndarray:
    """MATLAB's ``round``: halves away from zero (numpy's rounds them to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def rcnn_crop_boxes(boxes: np.ndarray, image_size: tuple[int, int], crop_size: int,
                    context: int) -> tuple[np.ndarray, np.ndarray]:
    """R-CNN's warp-mode crop geometry (``rcnn_im_crop.m``) for N windows.

    Args:
        boxes: (N, 4) windows (x1, y1, x2, y2), 0-based inclusive pixels, inside the image.
        image_size: the image's (height, width).
        crop_size: side of the warped crop (227 or 224).
        context: pixels of context around the window in the warped crop (R-CNN: 16); 0 takes
            the window as it is (R-CNN's code skips the enlargement then).

    Returns:
        ``source`` (N, 4) int64: the enlarged window clipped to the image, 0-based inclusive
        (x1, y1, x2, y2); ``placement`` (N, 4) int64: where the warped source lands in the
        crop_size × crop_size frame, (x, y, width, height) with x + width <= crop_size and
        y + height <= crop_size. The rest of the frame is padding.

    Computed in R-CNN's 1-based coordinates with MATLAB's rounding, so every rounding matches:
    box = round(centre ± half-size · scale) with centre = x1 + w/2, which, like R-CNN, puts the
    enlarged box half a pixel right of the window's true centre.
    """
    height, width = image_size
    box = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + 1  # R-CNN's 1-based pixels
    if context > 0:
        scale = crop_size / (crop_size - 2 * context)
        half = (box[:, 2:] - box[:, :2] + 1) / 2  # (half width, half height)
        centre = box[:, :2] + half
        box = _matlab_round(np.concatenate([centre - half * scale, centre + half * scale], axis=1))
    unclipped = box[:, 2:] - box[:, :2] + 1
    pad = np.maximum(0, 1 - box[:, :2])  # pixels cut off at the left/top, in the image
    low = np.maximum(1, box[:, :2])
    high = np.minimum([width, height], box[:, 2:])
    factor = crop_size / unclipped  # image pixels -> crop pixels, per axis
    size = _matlab_round((high - low + 1) * factor)
    offset = _matlab_round(pad * factor)
    size = np.minimum(size, crop_size - offset)
    source = np.concatenate([low, high], axis=1) - 1
    return source.astype(np.int64), np.concatenate([offset, size], axis=1).astype(np.int64)


def _axis_grid(low: torch.Tensor, high: torch.Tensor, offset: torch.Tensor, size: torch.Tensor,
               crop_size: int, extent: int) -> torch.Tensor:
    """One axis of the sampling grid: (B,) source span and placement -> (B, crop_size) coordinates.

    Crop pixel j inside the placement samples source x = low + (j - offset + 0.5)·(high - low + 1)/size
    - 0.5, clamped to [low, high] (edge pixels replicated, as ``imresize`` on the cropped region);
    returned in grid_sample's normalised form for an axis of ``extent`` pixels, and off the
    image outside the placement.
    """
    j = torch.arange(crop_size, device=low.device, dtype=torch.float64)[None, :] - offset[:, None]
    step = (high - low + 1) / size
    x = low[:, None] + (j + 0.5) * step[:, None] - 0.5
    x = torch.minimum(torch.maximum(x, low[:, None]), high[:, None])
    normalised = (2 * x + 1) / extent - 1
    inside = (j >= 0) & (j < size[:, None])
    return torch.where(inside, normalised, torch.full_like(normalised, _OFF_IMAGE)).float()


def warp_crops(image: torch.Tensor, source: np.ndarray, placement: np.ndarray, crop_size: int) -> torch.Tensor:
    """Crop, warp and place B windows: (C, H, W) normalised image -> (B, C, crop_size, crop_size).

    ``source``/``placement`` as :func:`rcnn_crop_boxes` returns them. One ``grid_sample`` call for
    all B crops (laid out as one tall grid), bilinear; padding is 0.
    """
    channels, height, width = image.shape
    num = len(source)
    src = torch.as_tensor(source, dtype=torch.float64, device=image.device)
    place = torch.as_tensor(placement, dtype=torch.float64, device=image.device)
    gx = _axis_grid(src[:, 0], src[:, 2], place[:, 0], place[:, 2], crop_size, width)  # (B, S)
    gy = _axis_grid(src[:, 1], src[:, 3], place[:, 1], place[:, 3], crop_size, height)
    grid = torch.stack([gx[:, None, :].expand(num, crop_size, crop_size),
                        gy[:, :, None].expand(num, crop_size, crop_size)], dim=-1)
    warped = F.grid_sample(image[None], grid.reshape(1, num * crop_size, crop_size, 2), mode="bilinear",
                           padding_mode="zeros", align_corners=False)  # (1, C, B·S, S)
    return warped.view(channels, num, crop_size, crop_size).transpose(0, 1)


class RCNNFeatureExtractor:
    """R-CNN mode behind the same interface as SPP-net's: a :class:`features.extractor.WindowFeatureExtractor`.

    Its "maps" are the normalised image itself (one (3, H, W) tensor in a list): there is nothing
    per image worth caching, since every window needs its own conv pass. ``conv_timer`` wraps each
    batch's warp + conv (a no-op unless the benchmark swaps in a timing section).
    """

    def __init__(self, backbone: Backbone, config: FeatureConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.amp = conv_precision(config.amp, self.device)
        self.backbone = prepare_backbone(backbone, self.device, self.amp)
        self.conv_timer: Callable[[], ContextManager] = contextlib.nullcontext

    @property
    def output_dim(self) -> int:
        return spp_output_dim(self.backbone.channels, self.config.pyramid_levels)

    @torch.inference_mode()
    def compute_maps(self, image: np.ndarray) -> list[torch.Tensor]:
        """(H, W, 3) uint8 RGB -> [(3, H, W) float32 normalised image on the device]."""
        return [self.backbone.preprocess(torch.tensor(image, device=self.device))[0]]

    def maps(self, key: str, load_image: Callable[[], np.ndarray],
             source: str | None) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """The image ``key`` as "maps", and its (height, width); nothing is cached (``source`` is unused)."""
        image = load_image()
        return self.compute_maps(image), image.shape[:2]

    @torch.no_grad()
    def pool(self, maps: list[torch.Tensor], boxes: np.ndarray, image_size: tuple[int, int],
             scale_index: torch.Tensor | None = None) -> torch.Tensor:
        """Windows (N, 4) in original image coordinates -> (N, D) float32 pyramid vectors on the device.

        ``scale_index`` is accepted for the extractors' common interface and has no effect: every
        window is warped to the one crop size.
        """
        cfg = self.config
        image = maps[0]
        crop_size = self.backbone.crop_size
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        source, placement = rcnn_crop_boxes(boxes, image_size, crop_size, cfg.rcnn_context)
        out = torch.empty((len(boxes), self.output_dim), dtype=torch.float32, device=self.device)
        for start in range(0, len(boxes), cfg.rcnn_batch_size):
            stop = min(start + cfg.rcnn_batch_size, len(boxes))
            with self.conv_timer():
                crops = warp_crops(image, source[start:stop], placement[start:stop], crop_size)
                fmap = self.backbone.convolve(crops, self.amp)
            out[start:stop] = whole_map_pyramid_pool(fmap, cfg.pyramid_levels)
        return out

    def pool_distinct(self, maps: list[torch.Tensor], boxes: np.ndarray,
                      image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows (N, 4) -> the (M, D) features of the M distinct boxes among them and (N,) int64 each
        window's row, on the device: only an identical box gives an identical crop."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        first, rows = first_of_groups(boxes)
        return self.pool(maps, boxes[first], image_size), torch.as_tensor(rows, device=self.device)
