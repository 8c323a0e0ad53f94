"""The input files of a batch (images and videos): files, directories, glob patterns and list files, sorted, sharded."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

from detection.core.images import IMAGE_EXTENSIONS
from detection.runs.batch.errors import BatchError
from detection.runs.batch.video import VIDEO_EXTENSIONS


def find_images(inputs: Sequence[str], list_file: str | os.PathLike | None = None) -> list[str]:
    """Files, directories, glob patterns and the lines of ``list_file`` -> sorted unique absolute paths.

    Directories are searched recursively and glob matches filtered, both for the image extensions
    (JPEG, PNG, BMP, TIFF, WebP, any case) and the video ones (MP4, AVI, MOV, MKV, ...). A file named directly (or in ``list_file``) is taken
    whatever its name, and so is a path that does not exist: it then fails with its reason like
    any unreadable image, instead of stopping the batch.
    """
    items = list(inputs) + (read_list_file(list_file) if list_file is not None else [])
    found: set[str] = set()
    for item in items:
        found.update(_expand(item))
    return sorted(found)


def read_list_file(path: str | os.PathLike) -> list[str]:
    """The paths in a ``--list`` file: one per line, blank lines and ``#`` comments skipped.

    Relative paths are taken relative to the current directory, as on the command line.
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise BatchError(f"{path}: cannot read the list of images ({err})") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _is_input_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS


def _expand(item: str) -> list[str]:
    path = Path(item)
    if path.is_dir():
        return [os.path.abspath(p) for p in path.rglob("*") if _is_input_name(p) and p.is_file()]
    if not path.exists() and glob.has_magic(item):
        matches = [Path(m) for m in glob.glob(item, recursive=True)]
        if matches:
            return [p for m in matches for p in (_expand(str(m)) if m.is_dir() else
                                                  [os.path.abspath(m)] if _is_input_name(m) else [])]
    return [os.path.abspath(path)]


def shard(paths: Sequence[str], index: int, count: int) -> list[str]:
    """Shard ``index`` of ``count`` of a sorted list: every count-th path from the index-th (balanced to ±1)."""
    if not 0 <= index < count:
        raise BatchError(f"shard {index}/{count}: need 0 <= index < count")
    return list(paths[index::count])


def common_root(paths: Sequence[str]) -> Path:
    """The deepest directory holding every path: visualisations keep the layout below it."""
    return Path(os.path.commonpath([os.path.dirname(p) for p in paths])) if paths else Path("/")
