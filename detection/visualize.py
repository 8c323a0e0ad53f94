"""Pictures for people: detections drawn on images (OpenCV), and charts (matplotlib, optional).

Images here are (H, W, 3) uint8 RGB like everywhere else in the code; files are encoded with
OpenCV (BGR) and written atomically. Text on images uses OpenCV's Hershey font, which draws ASCII
only. Charts (precision-recall curves, fine-tuning loss and accuracy) need matplotlib, the
``plots`` extra (``pip install 'sppnet[plots]'``); their numbers are also written as CSV.
"""
from __future__ import annotations

import colorsys
import csv
import io
import re
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from detection.core.cache import atomic_write_bytes
from detection.core.detections import Detections
from detection.core.errors import SppnetError

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


def write_image(path: Path, image: np.ndarray) -> Path:
    """Encode (H, W, 3) uint8 RGB by the path's extension (PNG when OpenCV has no encoder for it, with a
    .png suffix then) and write atomically; returns the path written."""
    extension = path.suffix.lower() or ".png"
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    try:
        ok, data = cv2.imencode(extension, bgr)
    except cv2.error:
        ok = False
    if not ok:
        path, (ok, data) = path.with_suffix(".png"), cv2.imencode(".png", bgr)
    atomic_write_bytes(path, data.tobytes())
    return path


# -- charts (matplotlib, an optional extra) ----------------------------------------------------------

FIGURE_SIZE = (7.2, 5.4)  # inches at 100 dpi: 720 × 540 pixels


class PlotError(SppnetError, RuntimeError):
    """A chart that cannot be drawn (matplotlib missing); the message says what to install."""


def check_charts() -> None:
    """Raise :class:`PlotError` (one line: what to install) unless matplotlib can be imported."""
    _figure()


def _figure(size: tuple[float, float] = FIGURE_SIZE):
    """A matplotlib Figure drawn by the Agg canvas: no pyplot, no global backend, no display needed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("charts need matplotlib, which is not installed: pip install 'sppnet[plots]'") from None
    return Figure(figsize=size, dpi=100, layout="constrained")


def _save_figure(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """Rows of plain values as CSV, written atomically: the charts' numbers, for any other tool."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())
    return path


def _envelope(recall: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M,) recall, precision -> (M + 1,) recall from 0 and the interpolated precision there, for a
    step plot ("pre"): at each recall the best precision at that recall or beyond, the curve VOC AP integrates."""
    best = np.maximum.accumulate(precision[::-1])[::-1]
    return np.concatenate(([0.0], recall)), np.concatenate((best[:1], best))


def _on_white(colour: tuple[int, int, int]) -> tuple[float, float, float]:
    """Light palette colours (yellow, beige, mint) darkened until a line on white stands out; 0..1 floats."""
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    factor = min(1.0, 160 / luma) if luma > 0 else 1.0
    return tuple(c * factor / 255 for c in colour)


def pr_figure(series: Sequence[tuple[str, np.ndarray, np.ndarray, tuple[int, int, int]]], title: str):
    """A 720 × 540 matplotlib Figure of precision against recall, with a legend for several series.

    ``series``: (legend text, recall (M,), precision (M,), RGB colour), each in decreasing-score
    order as :func:`~detection.evaluation.voc_eval.evaluate_class` returns them. Each is drawn as its
    interpolated (monotone) precision, with the raw curve faintly behind it.
    """
    figure = _figure()
    axes = figure.add_subplot()
    for label, recall, precision, colour in series:
        recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
        colour = _on_white(colour)
        if len(recall) and np.isfinite(recall).all():
            axes.plot(recall, precision, color=colour, alpha=0.35, linewidth=1)
            axes.step(*_envelope(recall, precision), where="pre", color=colour, linewidth=2, label=label)
        else:
            note = "no ground-truth boxes" if len(recall) else "no detections"
            axes.plot([], [], color=colour, linewidth=2, label=f"{label} ({note})")
            if len(series) == 1:
                axes.text(0.05, 0.92, note, transform=axes.transAxes)
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    axes.grid(True, color="0.9")
    if len(series) > 1:
        axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small", frameon=False)
    return figure


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "class"


def save_pr_curves(curves: dict[str, tuple[float, np.ndarray, np.ndarray]], out_dir: str | Path,
                   metric: str) -> list[Path]:
    """Write ``pr_<class>.png`` per class, ``pr_all.png`` with every class and ``pr_curves.csv``
    (class, AP, recall, precision: one row per detection of each class); return the paths.

    ``curves``: class name -> (AP, recall, precision), as :func:`~detection.evaluation.voc_eval.class_curves` gives.
    Raises :class:`PlotError` without matplotlib, before writing anything.
    """
    check_charts()  # matplotlib missing: fail before any file is written
    out_dir = Path(out_dir)
    paths, everything = [], []
    for index, (name, (ap, recall, precision)) in enumerate(curves.items()):
        colour = class_colour(index)
        figure = pr_figure([(name, recall, precision, colour)], f"{name}: AP {100 * ap:.1f}% ({metric}, IoU 0.5)")
        paths.append(_save_figure(figure, out_dir / f"pr_{_file_stem(name)}.png"))
        everything.append((f"{name} {100 * ap:.1f}", recall, precision, colour))
    mean = np.mean([c[0] for c in curves.values()]) if curves else 0.0
    figure = pr_figure(everything, f"all classes: mAP {100 * mean:.1f}% ({metric}, IoU 0.5)")
    paths.append(_save_figure(figure, out_dir / "pr_all.png"))
    rows = ((name, f"{ap:.6f}", f"{r:.6f}", f"{p:.6f}")
            for name, (ap, recall, precision) in curves.items() for r, p in zip(recall, precision))
    paths.append(_write_csv(out_dir / "pr_curves.csv", ("class", "ap", "recall", "precision"), rows))
    return paths


FINETUNE_COLUMNS = ("iteration", "lr", "loss", "accuracy", "fg_accuracy")


def save_finetune_curves(history: Sequence[dict], out_dir: str | Path, plot: bool = True) -> list[Path]:
    """Fine-tuning's history (``Trainer.finetune_history()``: one dict per logged interval) ->
    ``finetune.csv`` and, with ``plot``, ``finetune.png`` (loss; accuracy over all and over
    foreground windows; against the iteration). Returns the paths; none for an empty history.

    Raises :class:`PlotError` when ``plot`` and matplotlib is missing, before writing anything.
    """
    if plot:
        check_charts()
    if not history:
        return []
    out_dir = Path(out_dir)
    paths = [_write_csv(out_dir / "finetune.csv", FINETUNE_COLUMNS,
                        ([entry[k] for k in FINETUNE_COLUMNS] for entry in history))]
    if plot:
        figure = _figure((9.6, 4.0))
        loss, accuracy = figure.subplots(1, 2)
        iterations = [entry["iteration"] for entry in history]
        loss.plot(iterations, [entry["loss"] for entry in history], color=_on_white(PALETTE[3]), marker=".")
        loss.set(xlabel="iteration", ylabel="loss (softmax, averaged per interval)", title="fine-tuning loss")
        for key, colour in (("accuracy", PALETTE[1]), ("fg_accuracy", PALETTE[0])):
            accuracy.plot(iterations, [entry[key] for entry in history], color=_on_white(colour), marker=".",
                          label={"accuracy": "all windows", "fg_accuracy": "foreground windows"}[key])
        accuracy.set(xlabel="iteration", ylabel="accuracy", ylim=(0, 1.02), title="fine-tuning accuracy")
        accuracy.legend(loc="lower right")
        for axes in (loss, accuracy):
            axes.grid(True, color="0.9")
        paths.append(_save_figure(figure, out_dir / "finetune.png"))
    return paths
