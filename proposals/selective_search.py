"""Selective search windows (recipe §5) and R-CNN's precomputed proposal files.

Boxes follow :mod:`detection.core.boxes`: (N, 4) float64, 0-based inclusive (x1, y1, x2, y2) in the
coordinates of the image as given.
"""
from __future__ import annotations

import ctypes
import os

import cv2
import numpy as np
import scipy.io

from detection.core.boxes import clip_boxes, remove_small_boxes, unique_boxes
from detection.core.config import ProposalConfig

# OpenCV ranks selective search's regions with C's rand(), whose state is per process: without a
# reseed the boxes kept (and their order) depend on how many images the process did before, so
# results would differ between runs with different worker counts. Seed 1 is C's initial state.
# The state is the process's, not the thread's: another thread calling rand() during a search
# (ONNX Runtime's spinning pool threads do) reorders its windows, so a process that runs such a
# library beside selective search should give it one thread (tests/test_export.py does).
_RAND_SEED = 1


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)  # the process's own symbols, where OpenCV's rand() comes from
    except (OSError, TypeError):  # Windows has no such handle; results there are run-dependent
        return None


_LIBC = _load_libc()

_SEGMENTATION = cv2.ximgproc.segmentation

# R-CNN's selective_search_boxes.m in fast mode (IJCV code's demo): Felzenszwalb-Huttenlocher
# segmentations with k in {50, 100}, min size = k and sigma 0.8, of the image in HSV and in Lab,
# each grouped with two similarity strategies: colour + texture + size + fill, texture + size + fill.
RCNN_FAST_KS = (50, 100)
RCNN_SIGMA = 0.8


def _rcnn_fast(ss, bgr: np.ndarray) -> None:
    ss.addImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV))
    ss.addImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab))
    for k in RCNN_FAST_KS:
        ss.addGraphSegmentation(_SEGMENTATION.createGraphSegmentation(sigma=RCNN_SIGMA, k=float(k), min_size=k))
    ss.addStrategy(_SEGMENTATION.createSelectiveSearchSegmentationStrategyMultiple(
        _SEGMENTATION.createSelectiveSearchSegmentationStrategyColor(),
        _SEGMENTATION.createSelectiveSearchSegmentationStrategyTexture(),
        _SEGMENTATION.createSelectiveSearchSegmentationStrategySize(),
        _SEGMENTATION.createSelectiveSearchSegmentationStrategyFill()))
    ss.addStrategy(_SEGMENTATION.createSelectiveSearchSegmentationStrategyMultiple(
        _SEGMENTATION.createSelectiveSearchSegmentationStrategyTexture(),
        _SEGMENTATION.createSelectiveSearchSegmentationStrategySize(),
        _SEGMENTATION.createSelectiveSearchSegmentationStrategyFill()))


def _base_image(switch):
    def setup(ss, bgr: np.ndarray) -> None:
        ss.setBaseImage(bgr)
        switch(ss)
    return setup


# ProposalConfig.mode -> how to set up OpenCV's SelectiveSearchSegmentation for one BGR image
_MODES = {
    "rcnn_fast": _rcnn_fast,
    # OpenCV's own fast mode: HSV and Lab, k in {150, 300, 450}, min size 0, the same two strategies
    "opencv_fast": _base_image(lambda ss: ss.switchToSelectiveSearchFast()),
    "quality": _base_image(lambda ss: ss.switchToSelectiveSearchQuality()),
}
PROPOSAL_MODES = tuple(_MODES)


def _proposal_scale(height: int, width: int, resize_width: int, max_side: int) -> float:
    """W' / W of the proposal image: width ``resize_width`` (1 if <= 0), longer side at most ``max_side``."""
    scale = resize_width / width if resize_width > 0 else 1.0
    if max_side > 0 and max(height, width) * scale > max_side:
        scale = max_side / max(height, width)
    return scale


def _proposal_image(image: np.ndarray, resize_width: int, max_side: int) -> tuple[np.ndarray, float]:
    """(H, W, 3) uint8 RGB -> the (H', W', 3) uint8 BGR image selective search runs on, and W' / W."""
    height, width = image.shape[:2]
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    scale = _proposal_scale(height, width, resize_width, max_side)
    if scale == 1.0:
        return bgr, 1.0
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    # INTER_AREA averages when shrinking (no aliasing, like MATLAB's imresize in R-CNN's demo);
    # it degrades to nearest-neighbour when enlarging, where linear interpolation is smoother.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(bgr, (new_width, new_height), interpolation=interpolation), scale


def _run_selective_search(bgr: np.ndarray, mode: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> (N, 4) float64 inclusive boxes, in selective search's order."""
    ss = _SEGMENTATION.createSelectiveSearchSegmentation()
    _MODES[mode](ss, bgr)
    if _LIBC is not None:
        _LIBC.srand(_RAND_SEED)
    rects = np.asarray(ss.process(), dtype=np.float64).reshape(-1, 4)  # (x, y, w, h)
    boxes = rects.copy()
    boxes[:, 2:] += rects[:, :2] - 1
    return boxes


def _to_original(boxes: np.ndarray, scale: float) -> np.ndarray:
    """(N, 4) inclusive boxes on the proposal image -> (N, 4) integer-valued boxes on the original.

    Pixel i of the proposal image covers [i / scale, (i + 1) / scale) of the original, so a box's
    right/bottom edge maps through x2 + 1; rounding to whole pixels makes boxes that land on the
    same original pixels exact duplicates, which are then removed.
    """
    if scale == 1.0:
        return boxes
    mapped = np.empty_like(boxes)
    mapped[:, :2] = boxes[:, :2] / scale
    mapped[:, 2:] = (boxes[:, 2:] + 1) / scale - 1
    return np.round(mapped)


def selective_search(image: np.ndarray, config: ProposalConfig) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (N, 4) float64 boxes, N <= config.max_proposals (recipe §5).

    Runs on the image resized to width ``config.resize_width`` (unless <= 0) and shrunk further
    when its longer side would exceed ``config.max_side`` (unless <= 0), drops windows
    narrower or shorter than ``config.min_size`` at that size, maps the rest back to the given
    image, clips them and removes duplicates, keeping selective search's order.
    """
    return keep_windows(*search_windows(image, config), config)


def search_windows(image: np.ndarray, config: ProposalConfig) -> tuple[np.ndarray, float, tuple[int, int]]:
    """(H, W, 3) uint8 RGB -> every window selective search finds, (M, 4) on the proposal image,
    that image's scale W' / W and the given image's (H, W): what :func:`keep_windows` filters."""
    if config.mode not in _MODES:
        raise ValueError(f"unknown selective search mode {config.mode!r}; expected one of {sorted(_MODES)}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    bgr, scale = _proposal_image(np.ascontiguousarray(image), config.resize_width, config.max_side)
    return _run_selective_search(bgr, config.mode), scale, image.shape[:2]


def keep_windows(boxes: np.ndarray, scale: float, image_size: tuple[int, int], config: ProposalConfig) -> np.ndarray:
    """:func:`search_windows`' output -> the (N, 4) boxes :func:`selective_search` returns under
    ``config``'s ``min_size`` and ``max_proposals`` (one search serves several of them)."""
    height, width = image_size
    boxes = boxes[remove_small_boxes(boxes, config.min_size)]
    boxes = clip_boxes(_to_original(boxes, scale), width, height)
    boxes = boxes[unique_boxes(boxes)]
    return boxes[: config.max_proposals]


def load_rcnn_proposals(mat_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """R-CNN's selective_search_data .mat file -> image id -> (N, 4) float64 0-based (x1, y1, x2, y2).

    The file holds ``images`` (cell of image ids) and ``boxes`` (cell of (N, 4) 1-based
    [y1 x1 y2 x2] arrays), as written by R-CNN's selective_search_boxes.m.
    """
    data = scipy.io.loadmat(os.fspath(mat_path), squeeze_me=False)
    ids = np.asarray(data["images"], dtype=object).ravel()
    cells = np.asarray(data["boxes"], dtype=object).ravel()
    if len(ids) != len(cells):
        raise ValueError(f"{mat_path}: {len(ids)} image ids but {len(cells)} box arrays")
    return {_mat_string(image_id): _rcnn_to_boxes(cell) for image_id, cell in zip(ids, cells)}


def _mat_string(value) -> str:
    """A MATLAB char array as loadmat returns it (array of one str, or a str) -> str."""
    return str(np.asarray(value).ravel()[0]) if np.asarray(value).size else ""


def _rcnn_to_boxes(cell) -> np.ndarray:
    """(N, 4) 1-based [y1 x1 y2 x2] -> (N, 4) float64 0-based [x1 y1 x2 y2]."""
    yx = np.asarray(cell, dtype=np.float64).reshape(-1, 4)
    return yx[:, [1, 0, 3, 2]] - 1
