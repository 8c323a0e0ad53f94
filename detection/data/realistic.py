"""The realistic generated data set: real objects cut from real photographs, pasted onto other photographs.

The demo set's drawn shapes are too easy to steer accuracy with. This set is made, offline, from
the photographs that ship with scikit-image (``skimage.data``) and scikit-learn
(``load_sample_images``): each class is one real object of one photograph (the cat's face of
*chelsea*, the coffee cup, the rocket, a coin of *coins*, the motorcycle, ...) cut out with a
mask, and every instance is that object again with random scale, aspect, flip, small rotation,
brightness and colour jitter, pasted onto a crop of a *different* photograph (brick, grass,
gravel, the moon, cells, the Hubble deep field, ...), over unlabelled distractor objects.

Like VOC: images of about 500×375; 1-5 objects from about 15 px to half the image (or to
``max_extent``: :data:`SMALL_OBJECTS_MAX_EXTENT` gives a set of small objects only); some cut by
the border (``truncated``) and some partly hidden by objects pasted later; ``difficult`` for
objects less than half visible or whose visible box is under 20 px (or thinner than 6 px); boxes are the tight
box of the visible pixels. Deterministic from the seed, like the demo set
(:mod:`detection.data.generated`). Needs scikit-image (``pip install 'sppnet[realistic]'``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from detection.core.boxes import box_iou
from detection.data.generated import GeneratedObject, blend, mask_box, visible_coverage, write_generated_dataset
from detection.data.records import DatasetError

# Bump when the generation changes, so that a data set made by an older generator is not reused.
GENERATOR_VERSION = 2
PARAMS_FILE = "realistic_dataset.json"
DEFAULT_SIZE = (500, 375)  # (width, height), as most VOC 2007 images

MIN_EXTENT = 15  # longer side of an object's box, in pixels, before truncation and occlusion
MAX_EXTENT_FRACTION = 0.5  # of the image's longer side
# The set of issue 8's report had "small real objects": COCO's small and medium objects (area under
# 96²) are those up to about 96 px a side.
SMALL_OBJECTS_MAX_EXTENT = 96
FIRST_MIN_EXTENT = 40  # the first object of an image (its class cycles over the images) is never tiny
OBJECT_COUNT_WEIGHTS = (0.25, 0.25, 0.2, 0.15, 0.15)  # of 1, 2, 3, 4, 5 objects per image
TRUNCATE_PROBABILITY = 0.2
MAX_OUTSIDE = 0.5  # at most this fraction of a truncated object's box lies outside the image
OCCLUDE_PROBABILITY = 0.35  # a later object is put over a point of an earlier one's box
PLACEMENT_TRIES = 30
MAX_BOX_IOU = 0.5  # boxes overlap at most this much: occlusion, but no near-duplicates for NMS
MIN_VISIBLE = 0.25  # a placement hiding more than this of an earlier object is rejected
DIFFICULT_VISIBLE = 0.5  # objects less visible than this (occluded or truncated) are difficult
DIFFICULT_SIDE = 20  # and so are objects whose visible box's longer side is below this
DIFFICULT_THIN = 6  # or its shorter side (a side under 20 px would make every small rocket difficult)
MAX_ROTATION = 10.0  # degrees
SOURCE_MAX_SIDE = 320  # cut-outs are stored at most this large (objects are at most ~250 px)


class MissingDependencyError(DatasetError):
    """An optional package needed for the requested data set is not installed."""


@dataclass(frozen=True)
class Sprite:
    """A cut-out object: ``rgb`` (h, w, 3) float32, ``alpha`` (h, w) float32 in [0, 1], ``hull`` (N, 2) x, y."""

    rgb: np.ndarray
    alpha: np.ndarray
    hull: np.ndarray


@dataclass(frozen=True)
class ObjectClass:
    """A class: the photograph its object comes from, and whether a mirrored instance still looks right."""

    photo: str
    cut: Callable[[], list[Sprite]]
    flips: bool = True


def _skimage_data():
    try:
        from skimage import data
    except ImportError:
        raise MissingDependencyError("the realistic data set needs scikit-image: pip install 'sppnet[realistic]'") from None
    return data


@lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    """One of the photographs shipped offline, as (H, W, 3) uint8 RGB (grey ones repeated)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image
        image = load_sample_image(f"{name}.jpg")
    elif name == "motorcycle":
        image = _skimage_data().stereo_motorcycle()[0]
    elif name == "hubble":
        image = _skimage_data().hubble_deep_field()
    else:
        image = getattr(_skimage_data(), name)()
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


# ---- cutting objects out of the photographs ----

def _sprite(rgb: np.ndarray, mask: np.ndarray) -> Sprite:
    """The cut-out of ``mask`` (H, W) bool from ``rgb``: cropped to the mask, at most SOURCE_MAX_SIDE, soft edge."""
    x1, y1, x2, y2 = mask_box(mask)
    pad = 3
    x1, y1 = max(x1 - pad, 0), max(y1 - pad, 0)
    x2, y2 = min(x2 + pad, mask.shape[1] - 1), min(y2 + pad, mask.shape[0] - 1)
    rgb = rgb[y1:y2 + 1, x1:x2 + 1].astype(np.float32)
    alpha = mask[y1:y2 + 1, x1:x2 + 1].astype(np.float32)
    scale = SOURCE_MAX_SIDE / max(rgb.shape[:2])
    if scale < 1:
        size = (max(round(rgb.shape[1] * scale), 1), max(round(rgb.shape[0] * scale), 1))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.8)  # a cut-out edge is not a razor
    contours, _ = cv2.findContours((alpha >= 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours)).reshape(-1, 2).astype(np.float64)
    return Sprite(rgb, alpha, hull)


def _ellipses(shape: tuple[int, ...], *ellipses: tuple[float, float, float, float]) -> np.ndarray:
    """(H, W) bool union of axis-aligned ellipses (cx, cy, rx, ry)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    return np.any([((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1 for cx, cy, rx, ry in ellipses], axis=0)


def _polygon(shape: tuple[int, ...], points: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(shape[:2], dtype=np.uint8)
    cv2.fillPoly(mask, [np.array(points, dtype=np.int32)], 1)
    return mask.astype(bool)


def _largest_component(mask: np.ndarray, close: int = 0) -> np.ndarray:
    """The largest 8-connected region of ``mask``, closed by a ``close`` px disc, its holes filled."""
    mask = mask.astype(np.uint8)
    if close:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * close + 1, 2 * close + 1))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return _fill_holes(labels == largest)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros(mask.shape, dtype=np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def _within(shape: tuple[int, ...], x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros(shape[:2], dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def _cat_face() -> list[Sprite]:
    image = photo("chelsea")  # the cat's face
    return [_sprite(image, _ellipses(image.shape, (225, 150, 190, 148)))]


def _cup() -> list[Sprite]:
    image = photo("coffee")  # cup on its saucer
    return [_sprite(image, _ellipses(image.shape, (277, 228, 200, 160), (292, 100, 118, 88)))]


def _rocket() -> list[Sprite]:
    image = photo("rocket")
    outline = [(322, 126), (312, 138), (307, 165), (305, 405), (339, 405), (337, 165), (333, 138)]
    return [_sprite(image, _polygon(image.shape, outline))]


def _coins() -> list[Sprite]:
    """Each of the 24 coins of *coins*: bright discs on a dark ground."""
    image = photo("coins")
    bright = (image[..., 0] > 100).astype(np.uint8)
    bright = cv2.morphologyEx(bright, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    return [_sprite(image, _fill_holes(labels == i)) for i in range(1, count)
            if 300 <= stats[i, cv2.CC_STAT_AREA] <= 6000]


def _horse() -> list[Sprite]:
    """The silhouette of *horse*, filled with the fur of *chelsea*'s cheek."""
    silhouette = ~_skimage_data().horse()
    fur = cv2.resize(photo("chelsea")[160:300, 0:140], silhouette.shape[::-1], interpolation=cv2.INTER_CUBIC)
    return [_sprite(fur, silhouette)]


def _motorcycle() -> list[Sprite]:
    image = photo("motorcycle")
    outline = [(95, 200), (150, 160), (350, 178), (420, 130), (515, 100), (560, 120), (585, 200), (640, 270),
               (690, 380), (640, 450), (540, 440), (480, 380), (360, 390), (280, 400), (170, 390), (120, 340),
               (120, 260), (95, 230)]
    return [_sprite(image, _polygon(image.shape, outline))]


def _face() -> list[Sprite]:
    image = photo("astronaut")  # her face and hair
    return [_sprite(image, _ellipses(image.shape, (228, 92, 62, 78)))]


def _flower() -> list[Sprite]:
    image = photo("flower")  # the orange dahlia on green leaves
    r, g, b = (image[..., c].astype(np.int32) for c in range(3))
    orange = (r > 150) & (r > g + 25) & (g > b)
    return [_sprite(image, _largest_component(orange & _within(image.shape, 100, 20, 480, 340), close=5))]


def _cameraman() -> list[Sprite]:
    image = photo("camera")  # the cameraman's dark coat, head and camera
    dark = image[..., 0] < 60
    return [_sprite(image, _largest_component(dark & _within(image.shape, 0, 20, 480, 512), close=7))]


def _logo() -> list[Sprite]:
    image = photo("logo")  # the disc: the convex hull of what is not the white ground
    points = cv2.findNonZero((image.min(axis=2) < 200).astype(np.uint8))
    return [_sprite(image, _polygon(image.shape, cv2.convexHull(points).reshape(-1, 2).tolist()))]


def _pagoda() -> list[Sprite]:
    image = photo("china")  # the temple: what is not sky in its box
    sky = (image.min(axis=2) > 150) & (image[..., 2].astype(np.int32) >= image[..., 0])
    return [_sprite(image, _largest_component(~sky & _within(image.shape, 64, 15, 363, 300), close=3))]


def _retina() -> list[Sprite]:
    image = photo("retina")  # the fundus disc on black
    return [_sprite(image, _largest_component(image.max(axis=2) > 30))]


def _text() -> list[Sprite]:
    image = photo("page")  # a printed paragraph
    return [_sprite(image, _within(image.shape, 0, 32, 384, 150))]


# No name is one of VOC's 20, so that the data set is never taken for a VOC subset (data/voc.py).
CLASSES: dict[str, ObjectClass] = {
    "cameraman": ObjectClass("camera", _cameraman),
    "cat_face": ObjectClass("chelsea", _cat_face),
    "coin": ObjectClass("coins", _coins),
    "cup": ObjectClass("coffee", _cup),
    "face": ObjectClass("astronaut", _face),
    "flower": ObjectClass("flower", _flower),
    "horse_shape": ObjectClass("chelsea", _horse),
    "logo": ObjectClass("logo", _logo, flips=False),
    "motorcycle": ObjectClass("motorcycle", _motorcycle),
    "pagoda": ObjectClass("china", _pagoda),
    "retina": ObjectClass("retina", _retina),
    "rocket": ObjectClass("rocket", _rocket),
    "text": ObjectClass("page", _text, flips=False),
}
REALISTIC_CLASSES = tuple(sorted(CLASSES))


@lru_cache(maxsize=None)
def class_sprites(name: str) -> tuple[Sprite, ...]:
    """The cut-outs of one class (one, or several of the same kind, like the coins)."""
    return tuple(CLASSES[name].cut())


# Unlabelled objects under the labelled ones: things a detector must learn are none of the classes.
DISTRACTORS: dict[str, Callable[[], list[Sprite]]] = {
    "helmet": lambda: [_sprite(photo("astronaut"), _ellipses((512, 512), (420, 430, 92, 95)))],
    "flag": lambda: [_sprite(photo("astronaut"), _within((512, 512), 0, 0, 60, 290))],
    "colorwheel": lambda: [_sprite(photo("colorwheel"), photo("colorwheel").max(axis=2) > 20)],
    "clock": lambda: [_sprite(photo("clock"), _ellipses((300, 400), (215, 140, 75, 55)))],
}


@lru_cache(maxsize=None)
def distractor_sprites(name: str) -> tuple[Sprite, ...]:
    return tuple(DISTRACTORS[name]())


# Backgrounds: (photograph, x1, y1, x2, y2) regions that contain none of the classes' objects.
BACKGROUNDS = (
    ("brick", 0, 0, 512, 512), ("grass", 0, 0, 512, 512), ("gravel", 0, 0, 512, 512),
    ("moon", 0, 0, 512, 512), ("cell", 0, 0, 550, 660), ("hubble", 0, 0, 1000, 872),
    ("immunohistochemistry", 0, 0, 512, 512), ("rocket", 0, 0, 290, 427), ("rocket", 350, 0, 640, 427),
    ("china", 380, 0, 640, 427),
)


# ---- one image ----

def make_realistic_dataset(root: str | Path, num_trainval: int = 150, num_test: int = 150, seed: int = 0,
                           image_size: tuple[int, int] = DEFAULT_SIZE, max_extent: float | None = None) -> Path:
    """Write (or reuse) the realistic data set under ``root/VOC2007`` and return that path.

    ``image_size`` is (width, height). ``max_extent``: the longest an object's box may be, in pixels
    (None: half the image's longer side, also its upper bound; at least twice FIRST_MIN_EXTENT, so that
    the first object of an image, never under FIRST_MIN_EXTENT, still varies in size). Splits ``trainval`` (``train``, ``val`` its halves) and
    ``test``; the parameters are recorded in ``root/realistic_dataset.json`` and matching files reused.
    """
    width, height = image_size
    if num_trainval < 1 or num_test < 1 or seed < 0:
        raise ValueError("make_realistic_dataset: need num_trainval >= 1, num_test >= 1 and seed >= 0")
    if min(width, height) < 4 * FIRST_MIN_EXTENT:
        raise ValueError(f"make_realistic_dataset: image_size {image_size} is too small (at least "
                         f"{4 * FIRST_MIN_EXTENT} px a side)")
    max_extent = _checked_max_extent(max_extent, image_size)
    _skimage_data()  # fail before writing anything when scikit-image is missing
    params = {"generator_version": GENERATOR_VERSION, "num_trainval": num_trainval, "num_test": num_test,
              "seed": seed, "image_size": [width, height], "max_extent": max_extent}

    def draw(rng: np.random.Generator, index: int) -> tuple[np.ndarray, list[GeneratedObject]]:
        return draw_realistic_image(rng, (width, height), REALISTIC_CLASSES[index % len(REALISTIC_CLASSES)],
                                    max_extent)

    return write_generated_dataset(root, params, PARAMS_FILE, "sppnet realistic", draw)


def _checked_max_extent(max_extent: float | None, size: tuple[int, int]) -> float:
    """``max_extent`` in pixels (None: half the longer side of ``size``), or ValueError when out of range."""
    largest = MAX_EXTENT_FRACTION * max(size)
    max_extent = largest if max_extent is None else float(max_extent)
    if not 2 * FIRST_MIN_EXTENT <= max_extent <= largest:
        raise ValueError(f"make_realistic_dataset: max_extent {max_extent:g} is outside [{2 * FIRST_MIN_EXTENT}, "
                         f"{largest:g}] (half the image's longer side) px")
    return max_extent


@dataclass
class _Pasted:
    """An object on the canvas: its (H, W) coverage, its area before clipping, and whether the border cut it."""

    name: str
    alpha: np.ndarray
    area: float
    truncated: bool


def draw_realistic_image(rng: np.random.Generator, size: tuple[int, int], first_class: str,
                         max_extent: float | None = None) -> tuple[np.ndarray, list[GeneratedObject]]:
    """One (H, W, 3) uint8 RGB image and its objects, in pasting order (later ones on top).

    Objects' boxes are at most ``max_extent`` px long (None: half the image's longer side).

    The first object is of ``first_class`` (never tiny nor truncated), so cycling it over the
    images puts every class into every split of at least ``len(REALISTIC_CLASSES)`` images.
    """
    max_extent = _checked_max_extent(max_extent, size)
    # the background's photograph is the source of none of the image's objects
    candidates = [b for b in BACKGROUNDS if b[0] != CLASSES[first_class].photo]
    background = candidates[rng.integers(len(candidates))]
    image = _background(rng, background, size)
    for _ in range(int(rng.integers(0, 3))):
        name = sorted(DISTRACTORS)[rng.integers(len(DISTRACTORS))]
        sprites = distractor_sprites(name)
        layer, alpha, _, _ = _transform(rng, sprites[rng.integers(len(sprites))], size, True,
                                        _extent(rng, MIN_EXTENT, max_extent), truncate=rng.random() < 0.3)
        blend(image, layer, alpha)
    allowed = [c for c in REALISTIC_CLASSES if CLASSES[c].photo != background[0]]
    count = 1 + rng.choice(len(OBJECT_COUNT_WEIGHTS), p=OBJECT_COUNT_WEIGHTS)
    pasted: list[_Pasted] = []
    for k in range(count):
        name = first_class if k == 0 else allowed[rng.integers(len(allowed))]
        placed = _place(rng, name, size, pasted, first=k == 0, max_extent=max_extent)
        if placed is None:
            continue  # no room left that keeps the earlier objects visible enough
        layer, obj = placed
        blend(image, layer, obj.alpha)
        pasted.append(obj)
    noisy = image + rng.normal(0, 2.5, image.shape)  # sensor noise over the pasted edges too
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), _describe(pasted)


def _background(rng: np.random.Generator, region: tuple, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float: a random crop of ``region`` at the image's aspect, resized, maybe mirrored, re-lit."""
    name, x1, y1, x2, y2 = region
    width, height = size
    region_w, region_h = x2 - x1, y2 - y1
    fit = min(region_w / width, region_h / height)  # the largest crop of the image's aspect
    crop_w, crop_h = (fit * rng.uniform(0.55, 1.0) * np.array([width, height])).astype(int)
    left = x1 + int(rng.integers(0, region_w - crop_w + 1))
    top = y1 + int(rng.integers(0, region_h - crop_h + 1))
    crop = photo(name)[top:top + crop_h, left:left + crop_w]
    image = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA if crop_w > width else cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    return _relight(rng, image.astype(np.float64))


def _relight(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Brightness, contrast and a slight colour cast, as between two photographs of one thing."""
    gain = rng.uniform(0.75, 1.25) * rng.uniform(0.92, 1.08, 3)
    return np.clip((rgb - 128) * gain + 128 + rng.uniform(-20, 20), 0, 255)


def _extent(rng: np.random.Generator, low: float, high: float) -> float:
    """An object's longer side: log-uniform, as many small objects as large ones as in photos."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _transform(rng: np.random.Generator, sprite: Sprite, size: tuple[int, int], flips: bool, extent: float,
               truncate: bool, over: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """``sprite`` jittered and placed: (H, W, 3) layer, (H, W) coverage, its full area, whether truncated.

    ``extent`` is the longer side of the placed object's box (before the border cuts it); ``over``,
    an (x1, y1, x2, y2) box, puts the object's centre on a random point of it (as far as the border allows).
    """
    rgb, alpha, hull = sprite.rgb, sprite.alpha, sprite.hull
    aspect = np.exp(rng.uniform(-0.15, 0.15))
    scale = extent / max(rgb.shape[:2])
    if scale < 1:  # shrink with area averaging first; warpAffine alone would alias
        small = (max(round(rgb.shape[1] * scale), 1), max(round(rgb.shape[0] * scale), 1))
        factors = np.array([small[0] / rgb.shape[1], small[1] / rgb.shape[0]])
        rgb = cv2.resize(rgb, small, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, small, interpolation=cv2.INTER_AREA)
        hull = hull * factors
        scale = 1.0
    theta = np.deg2rad(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    mirror = -1.0 if flips and rng.random() < 0.5 else 1.0
    centre = np.array([rgb.shape[1] - 1, rgb.shape[0] - 1]) / 2
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    linear = rotation @ np.diag([mirror * scale * aspect, scale / aspect])
    corners = (hull - centre) @ linear.T
    fit = extent / np.ptp(corners, axis=0).max()  # the placed box's longer side is ``extent``
    linear, corners = linear * fit, corners * fit
    low, high = corners.min(axis=0), corners.max(axis=0)
    start, stop = -low, np.array(size) - 1 - high  # the offsets keeping the box inside
    offset = rng.uniform(start, np.maximum(start, stop))
    if over is not None:
        offset = np.clip(rng.uniform(over[:2], over[2:]) - (low + high) / 2, start, np.maximum(start, stop))
    if truncate:  # across one border, by a random part of the box
        axis, outside = int(rng.integers(2)), rng.uniform(0.1, MAX_OUTSIDE) * (high - low)
        offset[axis] = start[axis] - outside[axis] if rng.random() < 0.5 else stop[axis] + outside[axis]
    matrix = np.hstack([linear, (offset - linear @ centre)[:, None]])
    layer = cv2.warpAffine(_relight(rng, rgb).astype(np.float32), matrix, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    coverage = cv2.warpAffine(alpha, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    area = float(alpha.sum() * abs(np.linalg.det(linear)))
    placed_hull = corners + offset
    # pixel i spans [i - 0.5, i + 0.5], so a hull point beyond -0.5 or size - 0.5 lies outside
    truncated = bool((placed_hull < -0.5).any() or (placed_hull > np.array(size) - 0.5).any())
    return layer.astype(np.float64), np.clip(coverage, 0, 1).astype(np.float64), area, truncated


def _place(rng: np.random.Generator, name: str, size: tuple[int, int], pasted: list[_Pasted],
           first: bool, max_extent: float) -> tuple[np.ndarray, _Pasted] | None:
    """A new object on top of ``pasted`` and its layer, or None after too many rejected tries.

    Rejected when its box overlaps an earlier visible box by more than MAX_BOX_IOU, or it would
    leave less than MIN_VISIBLE of an earlier object in sight.
    """
    sprites = class_sprites(name)
    before = visible_coverage([p.alpha for p in pasted])
    old_boxes = np.array([mask_box(v >= 0.5) for v in before]).reshape(-1, 4)
    for _ in range(PLACEMENT_TRIES):
        extent = _extent(rng, FIRST_MIN_EXTENT if first else MIN_EXTENT, max_extent)
        truncate = not first and rng.random() < TRUNCATE_PROBABILITY
        over = old_boxes[rng.integers(len(old_boxes))] if len(old_boxes) and rng.random() < OCCLUDE_PROBABILITY else None
        layer, alpha, area, truncated = _transform(rng, sprites[rng.integers(len(sprites))], size,
                                                   CLASSES[name].flips, extent, truncate, over)
        if not (alpha >= 0.5).any():
            continue
        if len(old_boxes) and box_iou(np.array([mask_box(alpha >= 0.5)]), old_boxes).max() > MAX_BOX_IOU:
            continue
        after = visible_coverage([p.alpha for p in pasted] + [alpha])[:-1]
        if all(v.sum() >= MIN_VISIBLE * p.area and (v >= 0.5).any() for v, p in zip(after, pasted)):
            return layer, _Pasted(name, alpha, area, truncated)
    return None


def _describe(pasted: list[_Pasted]) -> list[GeneratedObject]:
    """VOC annotations: tight box of the visible pixels; difficult when mostly hidden or tiny."""
    objects = []
    for obj, visible in zip(pasted, visible_coverage([p.alpha for p in pasted])):
        box = mask_box(visible >= 0.5)
        sides = sorted((box[2] - box[0] + 1, box[3] - box[1] + 1))
        small = sides[1] < DIFFICULT_SIDE or sides[0] < DIFFICULT_THIN
        hidden = visible.sum() < DIFFICULT_VISIBLE * obj.area
        objects.append(GeneratedObject(obj.name, box, obj.truncated, bool(small or hidden)))
    return objects
