"""Reading images into one form: an (H, W, 3) uint8 RGB array, upright.

Every stage reads images through :func:`load_image`, so EXIF orientation, grayscale, palette,
alpha, 16-bit and CMYK inputs are handled once, and every failure is an :class:`ImageError`
whose message names the file and the problem in one line.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from detection.core.config import DEFAULT_MAX_PIXELS
from detection.core.errors import SppnetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(SppnetError, ValueError):
    """An image that cannot be used; ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = array.max() if array.size else 0
        scale = 255.0 / high if high > 255 else 1.0
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1) -> np.ndarray:
    """Read an image file -> (H, W, 3) uint8 RGB, EXIF orientation applied.

    Raises :class:`ImageError` for a missing, empty, undecodable or truncated file, an image of
    more than ``max_pixels`` pixels, or one whose shorter side is below ``min_side``.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "no such file")
    if path.stat().st_size == 0:
        raise ImageError(path, "empty file")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(path, f"{width}x{height} is more than --max-pixels {max_pixels}")
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(path, f"too large: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(path, f"cannot decode image ({err})") from None
    array = np.asarray(rgb, dtype=np.uint8)
    if min(array.shape[:2]) < min_side:
        raise ImageError(path, f"{array.shape[1]}x{array.shape[0]} is smaller than {min_side} px on a side")
    return array


_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90°


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) of the array :func:`load_image` decodes, read from the file's header alone.

    None when the file is missing or its header cannot be read (:func:`load_image` then says why).
    A PNG whose EXIF chunk comes after its pixels counts as unrotated: finding that chunk would
    mean decoding the whole image.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            late_png_exif = image.format == "PNG" and "exif" not in image.info
            orientation = None if late_png_exif else image.getexif().get(0x0112)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def as_rgb_array(image, name: str = "<array>") -> np.ndarray:
    """A path, PIL image or (H, W[, C]) array -> (H, W, 3) uint8 RGB."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(_to_rgb(ImageOps.exif_transpose(image)), dtype=np.uint8)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageError(name, f"expected an (H, W, 3) RGB array, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ImageError(name, f"expected uint8 pixels, got {array.dtype}")
    return np.ascontiguousarray(array[:, :, :3])
