"""A small on-disk store for intermediate results, keyed by (stage, inputs' fingerprint, item key).

Each stage asks :meth:`Cache.get` before computing and calls :meth:`Cache.put` after; stage code
never builds paths by hand. Writes are atomic (temporary file + rename in the same directory), so
a process killed mid-write leaves either the old entry or none, never a torn file. Next to the
entries, ``meta.json`` records what the fingerprint was computed from, for people reading a cache.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def atomic_write_bytes(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write ``data`` (bytes, or chunks of them) to ``path`` through a temporary file and a rename.

    Readers see the old file or the new one, never a part. Chunks let a large file be written
    without holding it in memory. The file gets the permissions any new file gets (0666 less the
    umask), not the temporary file's 0600. A failure to write (a full disk, ENOSPC) raises an
    OSError that names ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.writelines([data] if isinstance(data, (bytes, bytearray, memoryview)) else data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename in (None, tmp):
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (changing it races with threads)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def safe_key(key: str) -> str:
    """An item key usable as a file name: kept when already safe, else a readable prefix + hash."""
    if _SAFE_KEY.match(key) and not key.startswith("."):
        return key
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[-60:].lstrip(".")
    return f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


class Cache:
    """Arrays by (stage, fingerprint, key) under ``root/stage/fingerprint/key.npz``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def directory(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / fingerprint

    def path(self, stage: str, fingerprint: str, key: str) -> Path:
        return self.directory(stage, fingerprint) / f"{safe_key(key)}.npz"

    def has(self, stage: str, fingerprint: str, key: str) -> bool:
        return self.path(stage, fingerprint, key).is_file()

    def get(self, stage: str, fingerprint: str, key: str) -> dict[str, np.ndarray] | None:
        path = self.path(stage, fingerprint, key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError):
            # a corrupt entry (disk trouble) is recomputed rather than trusted
            path.unlink(missing_ok=True)
            return None

    def put(self, stage: str, fingerprint: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self.path(stage, fingerprint, key), buffer.getvalue())

    def describe(self, stage: str, fingerprint: str, meta: dict[str, Any]) -> None:
        """Record what made this fingerprint (written once per stage directory)."""
        path = self.directory(stage, fingerprint) / "meta.json"
        if not path.is_file():
            atomic_write_bytes(path, json.dumps(meta, indent=2, sort_keys=True, default=str).encode())
