"""Video files as detection input: every k-th frame of a file OpenCV can decode, one record per frame.

A frame is named ``<video path>#frame=<index>`` (six digits, 0-based): that is its key in the
resume set, its ``file_name`` in ``detections.json`` and its name in failures. Frames are decoded
in order in the main process (seeking would decode from the last keyframe for each one) and sent
to the proposal workers as arrays.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from detection.core.images import DEFAULT_MAX_PIXELS, ImageError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


class VideoError(ImageError):
    """A video that cannot be used; ``str(err)`` is ``"<path>: <reason>"``."""


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


FRAME_MARK = "#frame="


def frame_key(video: str, index: int) -> str:
    """The name of frame ``index`` of ``video``: ``video.mp4#frame=000120``."""
    return f"{video}{FRAME_MARK}{index:06d}"


def is_frame_key(key: str) -> bool:
    return FRAME_MARK in key


@dataclass
class Frame:
    """Frame ``index`` of ``video``, ``time`` seconds from its start, as (H, W, 3) uint8 RGB ``image``."""

    video: str
    index: int
    time: float
    image: np.ndarray

    @property
    def key(self) -> str:
        return frame_key(self.video, self.index)


def frames_to_read(path: str | os.PathLike, stride: int) -> int:
    """How many frames :func:`read_frames` will give, from the container's frame count (0 if unknown)."""
    capture = cv2.VideoCapture(str(path))
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()
    return math.ceil(max(count, 0) / stride)


def read_frames(path: str, stride: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS,
                min_side: int = 1) -> Iterator[Frame]:
    """Frames 0, stride, 2·stride, ... of a video file, decoded in order.

    The frames between are grabbed but not converted. Raises :class:`VideoError` for a missing
    file, one OpenCV cannot open or decode, or frames of more than ``max_pixels`` pixels or a
    shorter side below ``min_side``.
    """
    if stride < 1:
        raise ValueError(f"video stride must be at least 1, got {stride}")
    if not Path(path).is_file():
        raise VideoError(path, "no such file")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoError(path, "cannot open as a video (no decoder in OpenCV for it?)")
        fps = capture.get(cv2.CAP_PROP_FPS)
        index = 0
        while capture.grab():
            if index % stride == 0:
                ok, bgr = capture.retrieve()
                if not ok:
                    raise VideoError(path, f"cannot decode frame {index}")
                if index == 0:
                    _check_size(path, bgr.shape[1], bgr.shape[0], max_pixels, min_side)
                time = index / fps if fps > 0 else capture.get(cv2.CAP_PROP_POS_MSEC) / 1000
                yield Frame(path, index, round(time, 3), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
        if index == 0:
            raise VideoError(path, "no frame could be decoded")
    finally:
        capture.release()


def _check_size(path: str, width: int, height: int, max_pixels: int, min_side: int) -> None:
    if width * height > max_pixels:
        raise VideoError(path, f"frames of {width}x{height} are more than --max-pixels {max_pixels}")
    if min(width, height) < min_side:
        raise VideoError(path, f"frames of {width}x{height} are smaller than {min_side} px on a side")
