"""Pictures for people: detections drawn on images, and precision–recall curves, drawn with OpenCV.

Images here are (H, W, 3) uint8 RGB like everywhere else in the code; files are encoded with
OpenCV (BGR) and written atomically. Text uses OpenCV's Hershey font, which draws ASCII only.
"""
from __future__ import annotations

import colorsys
import re
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from detection.core.cache import atomic_write_bytes
from detection.core.detections import Detections

# Sasha Trubetskoy's 20 distinct colours, most distinct first: a class's colour is told apart
# from its neighbours' even on a busy photo. Classes beyond 20 get golden-ratio hues.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
)
GOLDEN_RATIO = 0.618033988749895
FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colour(index: int) -> tuple[int, int, int]:
    """The RGB colour of class ``index``: the same in every picture."""
    if index < len(PALETTE):
        return PALETTE[index]
    r, g, b = colorsys.hsv_to_rgb((index * GOLDEN_RATIO) % 1.0, 0.85, 0.95)
    return round(255 * r), round(255 * g), round(255 * b)


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (ITU-R BT.601 luma)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode()


def _label(canvas: np.ndarray, text: str, x: int, y_top: int, colour, scale: float, thickness: int) -> None:
    """A filled tag with ``text`` whose top-left corner is near (x, y_top), kept inside the image."""
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    pad = max(1, height // 4)
    tag_w, tag_h = width + 2 * pad, height + baseline + 2 * pad
    x = int(np.clip(x, 0, max(0, canvas.shape[1] - tag_w)))
    y_top = int(np.clip(y_top, 0, max(0, canvas.shape[0] - tag_h)))
    cv2.rectangle(canvas, (x, y_top), (x + tag_w - 1, y_top + tag_h - 1), colour, cv2.FILLED)
    cv2.putText(canvas, text, (x + pad, y_top + pad + height), FONT, scale, text_colour(colour), thickness, cv2.LINE_AA)


def draw_detections(image: np.ndarray, dets: Detections, classes: Sequence[str]) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 RGB with each box, its class name and score drawn.

    The score shown is the probability when the detections have one, else the margin
    (``Detections.confidences``). Line width and text size follow the image size; the highest
    scores are drawn last, on top.
    Each tag sits above its box, or inside it when the box touches the top of the image.
    """
    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    short_side = min(canvas.shape[:2])
    line = max(2, round(short_side / 300))
    scale = float(np.clip(short_side / 700, 0.4, 1.5))
    text_thickness = max(1, round(scale * 1.5))
    tag_height = cv2.getTextSize("Ag", FONT, scale, text_thickness)[0][1] * 1.6
    confidences = dets.confidences
    for i in np.argsort(confidences, kind="stable"):
        x1, y1, x2, y2 = (round(float(v)) for v in dets.boxes[i])
        colour = class_colour(int(dets.labels[i]))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, line, cv2.LINE_AA)
        text = _ascii(f"{classes[int(dets.labels[i])]} {float(confidences[i]):.2f}")
        top = y1 - tag_height if y1 >= tag_height else y1 + line
        _label(canvas, text, x1, int(top), colour, scale, text_thickness)
    return canvas


def write_image(path: Path, image: np.ndarray) -> None:
    """Encode (H, W, 3) uint8 RGB by the path's extension (PNG when OpenCV has no encoder for it) and write atomically."""
    extension = path.suffix.lower() or ".png"
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    try:
        ok, data = cv2.imencode(extension, bgr)
    except cv2.error:
        ok = False
    if not ok:
        path, (ok, data) = path.with_suffix(".png"), cv2.imencode(".png", bgr)
    atomic_write_bytes(path, data.tobytes())


def save_visualization(path: Path, image: np.ndarray, dets: Detections, classes: Sequence[str]) -> None:
    write_image(Path(path), draw_detections(image, dets, classes))


# -- precision-recall curves --------------------------------------------------------------------------

CHART_SIZE = (720, 540)  # width, height
GRID_COLOUR = (225, 225, 225)
AXIS_COLOUR = (60, 60, 60)


class _Axes:
    """Maps recall/precision in [0, 1] to pixels of the plot area of a chart."""

    def __init__(self, left: int, top: int, right: int, bottom: int):
        self.left, self.top, self.right, self.bottom = left, top, right, bottom

    def point(self, recall: float, precision: float) -> tuple[int, int]:
        return (round(self.left + recall * (self.right - self.left)),
                round(self.bottom - precision * (self.bottom - self.top)))


def _envelope(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(M,) recall, precision -> (2M, 2) step points of the interpolated precision.

    At each recall it is the best precision at that recall or beyond: the curve VOC AP integrates.
    """
    best = np.maximum.accumulate(precision[::-1])[::-1]
    starts = np.concatenate(([0.0], recall[:-1]))
    return np.stack([np.stack([starts, best], 1), np.stack([recall, best], 1)], 1).reshape(-1, 2)


def _on_white(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Light palette colours (yellow, beige, mint) darkened until a line on white stands out."""
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    factor = min(1.0, 160 / luma) if luma > 0 else 1.0
    return tuple(int(c * factor) for c in colour)


def _draw_axes(canvas: np.ndarray, axes: _Axes) -> None:
    for tick in np.arange(11) / 10:
        x, _ = axes.point(tick, 0)
        _, y = axes.point(0, tick)
        cv2.line(canvas, (x, axes.top), (x, axes.bottom), GRID_COLOUR, 1)
        cv2.line(canvas, (axes.left, y), (axes.right, y), GRID_COLOUR, 1)
        if round(tick * 10) % 2 == 0:
            label = f"{tick:.1f}"
            (w, h), _ = cv2.getTextSize(label, FONT, 0.45, 1)
            cv2.putText(canvas, label, (x - w // 2, axes.bottom + h + 8), FONT, 0.45, AXIS_COLOUR, 1, cv2.LINE_AA)
            cv2.putText(canvas, label, (axes.left - w - 8, y + h // 2), FONT, 0.45, AXIS_COLOUR, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (axes.left, axes.top), (axes.right, axes.bottom), AXIS_COLOUR, 1)
    (w, h), _ = cv2.getTextSize("recall", FONT, 0.6, 1)
    cv2.putText(canvas, "recall", ((axes.left + axes.right - w) // 2, axes.bottom + 48), FONT, 0.6, AXIS_COLOUR, 1,
                cv2.LINE_AA)
    # OpenCV draws horizontal text only: the vertical axis title is drawn on a strip, then turned
    (w, h), _ = cv2.getTextSize("precision", FONT, 0.6, 1)
    strip = np.full((h + 10, w + 4), 255, np.uint8)
    cv2.putText(strip, "precision", (2, h + 3), FONT, 0.6, AXIS_COLOUR[0], 1, cv2.LINE_AA)
    turned = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    y0 = (axes.top + axes.bottom - turned.shape[0]) // 2
    region = canvas[y0:y0 + turned.shape[0], 12:12 + turned.shape[1]]
    region[:] = np.minimum(region, turned[..., None])


def pr_chart(series: Sequence[tuple[str, np.ndarray, np.ndarray, tuple[int, int, int]]], title: str) -> np.ndarray:
    """A (540, 720, 3) uint8 RGB chart of precision against recall with a legend.

    ``series``: (legend text, recall (M,), precision (M,), RGB colour), each in decreasing-score
    order as :func:`~detection.evaluation.voc_eval.evaluate_class` returns them. Each is drawn as its
    interpolated (monotone) precision, with the raw curve faintly behind it.
    """
    width, height = CHART_SIZE
    canvas = np.full((height, width, 3), 255, np.uint8)
    legend_width = 200 if len(series) > 1 else 0
    axes = _Axes(left=80, top=60, right=width - 30 - legend_width, bottom=height - 70)
    _draw_axes(canvas, axes)
    cv2.putText(canvas, _ascii(title), (axes.left, 38), FONT, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    for i, (label, recall, precision, colour) in enumerate(series):
        recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
        colour = _on_white(colour)
        if len(recall) and np.isfinite(recall).all():
            faint = tuple(int(255 - 0.35 * (255 - c)) for c in colour)
            raw = np.array([axes.point(r, p) for r, p in zip(recall, precision)], np.int32)
            cv2.polylines(canvas, [raw], False, faint, 1, cv2.LINE_AA)
            steps = np.array([axes.point(r, p) for r, p in _envelope(recall, precision)], np.int32)
            cv2.polylines(canvas, [steps], False, colour, 2, cv2.LINE_AA)
        elif len(series) == 1:
            note = "no ground-truth boxes" if len(recall) else "no detections"
            cv2.putText(canvas, note, (axes.left + 20, axes.top + 40), FONT, 0.7, AXIS_COLOUR, 1, cv2.LINE_AA)
        if legend_width:
            y = axes.top + 10 + 22 * i
            cv2.line(canvas, (axes.right + 15, y), (axes.right + 40, y), colour, 3, cv2.LINE_AA)
            cv2.putText(canvas, _ascii(label), (axes.right + 48, y + 5), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "class"


def save_pr_curves(curves: dict[str, tuple[float, np.ndarray, np.ndarray]], out_dir: str | Path,
                   metric: str) -> list[Path]:
    """Write ``pr_<class>.png`` for each class and ``pr_all.png`` with every class; return the paths.

    ``curves``: class name -> (AP, recall, precision), as :func:`~detection.evaluation.voc_eval.class_curves` gives.
    """
    out_dir = Path(out_dir)
    paths, everything = [], []
    for index, (name, (ap, recall, precision)) in enumerate(curves.items()):
        colour = class_colour(index)
        chart = pr_chart([(name, recall, precision, colour)], f"{name}: AP {100 * ap:.1f}% ({metric}, IoU 0.5)")
        paths.append(out_dir / f"pr_{_file_stem(name)}.png")
        write_image(paths[-1], chart)
        everything.append((f"{name} {100 * ap:.1f}", recall, precision, colour))
    mean = np.mean([c[0] for c in curves.values()]) if curves else 0.0
    paths.append(out_dir / "pr_all.png")
    write_image(paths[-1], pr_chart(everything, f"all classes: mAP {100 * mean:.1f}% ({metric}, IoU 0.5)"))
    return paths
