"""The built-in demo dataset: small VOC-format images of coloured shapes, generated offline.

``sppnet demo`` has to train and test a detector with no download, so it draws its own data: each
image is a cluttered, textured background (smooth noise, gradients, lines and irregular blobs, so
that selective search returns many windows that are not objects) with 1-4 filled shapes on it.
The class is the shape, never the colour: colours are drawn independently of the class, so a
detector has to look at form, which frozen ImageNet features + linear SVMs can learn from ~40
images, yet low-contrast, occluded, truncated and rotated shapes keep the task from being trivial.

Generation is deterministic: every image has its own ``Generator(PCG64([seed, split, index]))``,
so the same parameters give byte-identical files on every run (for a given OpenCV build, which
does the drawing and the JPEG encoding).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detection.core.boxes import box_iou
from detection.data.generated import (
    GeneratedObject,
    blend,
    mask_box,
    visible_coverage,
    write_generated_dataset,
)

DEMO_CLASSES = ("circle", "cross", "square", "star", "triangle")

# Bump when the drawing changes, so that a dataset made by an older generator is not reused.
GENERATOR_VERSION = 1
PARAMS_FILE = "demo_dataset.json"

MIN_SIZE, MAX_SIZE = 30, 150  # longer side of an ordinary object's box, in pixels
TINY_SIZES = (12, 19)  # the occasional object below the 20 px that makes it difficult
TINY_PROBABILITY = 0.07
TRUNCATE_PROBABILITY = 0.15
MAX_OUTSIDE = 0.3  # at most this fraction of a truncated object's size lies outside the image
OBJECT_COUNT_WEIGHTS = (0.3, 0.3, 0.25, 0.15)  # of 1, 2, 3, 4 objects per image
PLACEMENT_TRIES = 30
MAX_BOX_IOU = 0.4  # two boxes overlapping more would make one a near-duplicate for NMS
MIN_VISIBLE = 0.35  # a placement hiding more of an earlier object is rejected
DIFFICULT_VISIBLE = 0.55  # objects less visible than this (occluded or truncated) are difficult
DIFFICULT_SIDE = 20  # and so are objects whose visible box has a side below this
MIN_COLOUR_DISTANCE = 60.0  # object vs. the background beneath it, RGB; lower is invisible, not hard


def make_demo_dataset(root: str | Path, num_trainval: int = 40, num_test: int = 40, seed: int = 0,
                      image_size: tuple[int, int] = (320, 240)) -> Path:
    """Write (or reuse) the demo dataset under ``root/VOC2007`` and return that path.

    ``image_size`` is (width, height). Splits: ``trainval`` (``train`` and ``val`` its two
    halves) and ``test``. The parameters are recorded in ``root/demo_dataset.json``; when they
    match, the existing files are reused untouched.
    """
    width, height = image_size
    if num_trainval < 1 or num_test < 1 or seed < 0:
        raise ValueError("make_demo_dataset: need num_trainval >= 1, num_test >= 1 and seed >= 0")
    if min(width, height) < 2 * MIN_SIZE:
        raise ValueError(f"make_demo_dataset: image_size {image_size} is too small for {MIN_SIZE} px objects")
    params = {"generator_version": GENERATOR_VERSION, "num_trainval": num_trainval, "num_test": num_test,
              "seed": seed, "image_size": [width, height]}

    def draw(rng: np.random.Generator, index: int) -> tuple[np.ndarray, list[GeneratedObject]]:
        return draw_image(rng, (width, height), first_class=DEMO_CLASSES[index % len(DEMO_CLASSES)])

    return write_generated_dataset(root, params, PARAMS_FILE, "sppnet demo", draw)


@dataclass
class _Placed:
    """A shape on the canvas: its polygon (N, 2) in pixels and its antialiased coverage (H, W) in [0, 1]."""

    name: str
    polygon: np.ndarray
    alpha: np.ndarray

    @property
    def area(self) -> float:
        return cv2.contourArea(self.polygon.astype(np.float32))


def draw_image(rng: np.random.Generator, size: tuple[int, int],
               first_class: str) -> tuple[np.ndarray, list[GeneratedObject]]:
    """One (H, W, 3) uint8 RGB image and its objects, in drawing order (later ones on top).

    The first object is of ``first_class`` so that cycling it over the images puts every class
    in every split of at least ``len(DEMO_CLASSES)`` images; it is never tiny nor truncated.
    """
    image = draw_background(rng, size)
    count = 1 + rng.choice(len(OBJECT_COUNT_WEIGHTS), p=OBJECT_COUNT_WEIGHTS)
    placed: list[_Placed] = []
    for k in range(count):
        name = first_class if k == 0 else DEMO_CLASSES[rng.integers(len(DEMO_CLASSES))]
        shape = _place_object(rng, name, size, placed, allow_hard=k > 0)
        if shape is None:
            continue  # no room left that keeps the earlier objects visible enough
        colour = _contrasting_colour(rng, image, shape.alpha)
        blend(image, _shaded_layer(rng, colour, shape.polygon, size), shape.alpha)
        placed.append(shape)
    _draw_clutter_lines(rng, image, int(rng.integers(0, 3)), max_thickness=1)  # a few across the objects
    noisy = image + rng.normal(0, 3, image.shape)  # sensor noise, so flat regions are not flat
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), _describe_objects(placed, size)


def _place_object(rng, name: str, size: tuple[int, int], placed: list[_Placed], allow_hard: bool) -> _Placed | None:
    """A new shape on top of ``placed``, or None after too many rejected tries.

    A placement is rejected when its box overlaps an earlier one's too much or it would hide too
    much of an earlier object. ``allow_hard`` lets it be tiny or cut by the image border.
    """
    max_extent = min(MAX_SIZE, int(0.7 * min(size)))
    visible_before = visible_coverage([p.alpha for p in placed])
    old_boxes = np.array([mask_box(v >= 0.5) for v in visible_before]).reshape(-1, 4)
    for _ in range(PLACEMENT_TRIES):
        if allow_hard and rng.random() < TINY_PROBABILITY:
            extent = rng.uniform(*TINY_SIZES)
        else:  # log-uniform: as many small objects as large ones, as in photos
            extent = float(np.exp(rng.uniform(np.log(MIN_SIZE), np.log(max_extent))))
        polygon = SHAPES[name](rng)
        polygon = polygon * (extent / np.ptp(polygon, axis=0).max())
        truncate = allow_hard and rng.random() < TRUNCATE_PROBABILITY
        polygon = polygon + _position(rng, polygon, size, truncate)
        alpha = _coverage(polygon, size)
        if not (alpha >= 0.5).any():
            continue
        if len(old_boxes) and box_iou(np.array([mask_box(alpha >= 0.5)]), old_boxes).max() > MAX_BOX_IOU:
            continue
        visible_after = visible_coverage([p.alpha for p in placed] + [alpha])[:-1]
        if all((v >= 0.5).sum() >= MIN_VISIBLE * p.area for v, p in zip(visible_after, placed)):
            return _Placed(name, polygon, alpha)
    return None


def _position(rng, polygon: np.ndarray, size: tuple[int, int], truncate: bool) -> np.ndarray:
    """An (x, y) offset putting the polygon inside the image, or partly outside when ``truncate``."""
    low, high = polygon.min(axis=0), polygon.max(axis=0)
    slack = MAX_OUTSIDE * (high - low) if truncate else np.zeros(2)
    start = -low - slack
    stop = np.array(size) - 1 - high + slack
    return rng.uniform(start, np.maximum(start, stop))


def _coverage(polygon: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float coverage of the filled polygon, antialiased, at 1/16 px vertex precision."""
    width, height = size
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(mask, [np.rint(polygon * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    return mask.astype(np.float64) / 255.0


def _describe_objects(placed: list[_Placed], size: tuple[int, int]) -> list[GeneratedObject]:
    """The annotation of each drawn object: tight box of its visible pixels, truncation, difficulty.

    As in VOC, the box covers what can be seen; objects mostly hidden (by others or the border)
    or too small to recognise are difficult, which the evaluator neither rewards nor penalises.
    """
    objects = []
    for shape, visible in zip(placed, visible_coverage([p.alpha for p in placed])):
        seen = visible >= 0.5
        box = mask_box(seen)
        small = min(box[2] - box[0] + 1, box[3] - box[1] + 1) < DIFFICULT_SIDE
        hidden = seen.sum() < DIFFICULT_VISIBLE * shape.area
        # pixel i spans [i - 0.5, i + 0.5], so a vertex beyond -0.5 or size - 0.5 lies outside
        truncated = bool((shape.polygon < -0.5).any() or (shape.polygon > np.array(size) - 0.5).any())
        objects.append(GeneratedObject(shape.name, box, truncated, bool(small or hidden)))
    return objects


# ---- shapes: unit-scale (N, 2) polygons around the origin, randomly rotated and proportioned ----

def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    theta = np.deg2rad(degrees)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return points @ rotation.T


def _circle(rng) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    # slightly elliptical, as a round object seen at an angle
    points = np.stack([np.cos(t), rng.uniform(0.8, 1.0) * np.sin(t)], axis=1)
    return _rotate(points, rng.uniform(0, 180))


def _square(rng) -> np.ndarray:
    aspect = rng.uniform(0.85, 1.0)
    points = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]], dtype=np.float64)
    return _rotate(points, rng.uniform(-25, 25))  # more would turn it into a diamond


def _triangle(rng) -> np.ndarray:
    angles = np.deg2rad(np.array([90.0, 210.0, 330.0]) + rng.uniform(-12, 12, 3))
    return _rotate(np.stack([np.cos(angles), np.sin(angles)], axis=1), rng.uniform(0, 360))


def _star(rng) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    radius = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
    return _rotate(np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1), rng.uniform(0, 72))


def _cross(rng) -> np.ndarray:
    w = rng.uniform(0.3, 0.42)  # half-width of an arm, relative to the half-length
    points = np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w],
                       [w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]])
    return _rotate(points, rng.uniform(-25, 25))  # more would turn it into an "x"


SHAPES = {"circle": _circle, "cross": _cross, "square": _square, "star": _star, "triangle": _triangle}


# ---- pixels ----

def draw_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 255]: gradient + smooth noise + grain + clutter lines and blobs."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (xs * np.cos(theta) + ys * np.sin(theta)) / np.hypot(width, height) + 0.5
    start, stop = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    image = start + ramp[..., None] * (stop - start)
    cells = rng.integers(3, 10)  # coarse random field, smoothly upsampled: cloudy blotches
    coarse = rng.normal(0, 35, (cells, cells + 2, 3)).astype(np.float32)
    image += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 10, (height, width, 3)).astype(np.float32)
    image += cv2.GaussianBlur(grain, (0, 0), 1.0)  # a fine texture for the edges to compete with
    image = np.clip(image, 0, 255)
    _draw_clutter_lines(rng, image, int(rng.integers(4, 12)), max_thickness=3)
    for _ in range(int(rng.integers(1, 5))):
        _draw_blob(rng, image, size)
    return image


def _random_colour(rng) -> np.ndarray:
    """An RGB colour from the same distribution for every class: the class is not in the colour."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(60, 255), rng.uniform(50, 255)]]], dtype=np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)


def _draw_clutter_lines(rng, image: np.ndarray, count: int, max_thickness: int) -> None:
    """Straight strokes across the image, edges that belong to no object."""
    height, width = image.shape[:2]
    for _ in range(count):
        ends = rng.uniform((-width / 4, -height / 4), (width * 5 / 4, height * 5 / 4), (2, 2))
        # drawn as a mask because OpenCV antialiases only on 8-bit images
        mask = np.zeros((height, width), dtype=np.uint8)
        p1, p2 = (tuple(int(v) for v in np.rint(end * 16)) for end in ends)
        cv2.line(mask, p1, p2, 255, int(rng.integers(1, max_thickness + 1)), lineType=cv2.LINE_AA, shift=4)
        blend(image, _random_colour(rng), mask / 255.0)


def _draw_blob(rng, image: np.ndarray, size: tuple[int, int]) -> None:
    """An irregular, smooth-edged distractor: object-like to selective search but of no class."""
    width, height = size
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    # low-frequency radial wobble gives a potato shape, never a polygon of the classes
    radius = 1 + sum(rng.uniform(0.1, 0.25) * np.cos(k * t + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    scale = rng.uniform(12, 45)
    centre = rng.uniform((0, 0), (width, height))
    polygon = centre + scale * np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
    blend(image, _random_colour(rng), _coverage(polygon, size))


def _contrasting_colour(rng, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """A random colour that differs enough from the background under ``alpha`` to be seen."""
    beneath = (image * alpha[..., None]).sum(axis=(0, 1)) / max(alpha.sum(), 1e-6)
    colour = _random_colour(rng)
    for _ in range(10):
        if np.linalg.norm(colour - beneath) >= MIN_COLOUR_DISTANCE:
            break
        colour = _random_colour(rng)
    return colour


def _shaded_layer(rng, colour: np.ndarray, polygon: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) fill for a shape: its colour lit from a random side, plus a faint surface texture."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    centre, extent = polygon.mean(axis=0), max(np.ptp(polygon, axis=0).max(), 1.0)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = ((xs - centre[0]) * np.cos(theta) + (ys - centre[1]) * np.sin(theta)) / extent
    shade = 1 + rng.uniform(0.1, 0.4) * ramp
    texture = rng.normal(0, 6, (height, width, 1))
    return colour * shade[..., None] + texture
