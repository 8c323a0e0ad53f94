"""A small on-disk store for intermediate results, keyed by (stage, inputs' fingerprint, item key).

Each stage asks :meth:`Cache.get` before computing and calls :meth:`Cache.put` after; stage code
never builds paths by hand. Writes are atomic (temporary file + rename in the same directory), so
a process killed mid-write leaves either the old entry or none, never a torn file. Next to the
entries, ``meta.json`` records what the fingerprint was computed from, for people reading a cache.

Per-image entries carry the content hash of the image file they were computed from (their
*source*, :meth:`Cache.source`): an entry is only served to a caller whose file has the same hash,
so a directory reused for other images with the same ids, or an image replaced in place, can
never hand back stale results; such an entry counts as stale (:attr:`Cache.stale`) and is
recomputed and overwritten by its stage. File hashes are remembered per (path, size, mtime, inode,
ctime) in ``sources.jsonl``, so a rerun reads no image twice.

An entry is one file: a 16-byte preamble (magic, header length), a JSON header (source, and each
array's name, dtype, shape and offset), then the raw arrays, each at a 64-byte aligned offset.
:meth:`Cache.get` with ``mmap=True`` maps it instead of reading it (copy-on-write), so a conv map
costs no memory until its pages are touched, and only the scales a window is pooled from are read.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from detection.core.errors import SppnetError
from detection.core.hashing import file_sha1

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")

ENTRY_SUFFIX = ".entry"
_MAGIC = b"SPPCACH1"  # 8 bytes, then the header's length as a little-endian uint64
_PREAMBLE = struct.Struct("<8sQ")
_ALIGN = 64
SOURCES_FILE = "sources.jsonl"
# A file changed within this many seconds of being hashed may change again without its size or
# times changing (timestamps are as coarse as a clock tick): its hash is not remembered.
RACY_SECONDS = 2.0


class CacheSpaceError(SppnetError, RuntimeError):
    """The disk under the cache will not hold what a stage is about to write; the message says how much."""


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
    """Arrays by (stage, fingerprint, key) under ``root/stage/fingerprint/key.entry``.

    ``stale`` holds the (stage, fingerprint, key) of every entry found computed from another file
    than the caller's (:meth:`get`, :meth:`has`); their stages recompute and overwrite them.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.stale: set[tuple[str, str, str]] = set()
        self._sources: dict[tuple, str] | None = None  # (path, size, mtime_ns, ino, ctime_ns) -> sha1

    def directory(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / fingerprint

    def path(self, stage: str, fingerprint: str, key: str) -> Path:
        return self.directory(stage, fingerprint) / f"{safe_key(key)}{ENTRY_SUFFIX}"

    # -- what an entry was computed from ----------------------------------------------------------
    def source(self, path: str | os.PathLike) -> str | None:
        """The SHA-1 of the file's bytes: the ``source`` of the entries computed from it.

        Remembered per (absolute path, size, mtime_ns, inode, ctime_ns), in memory and in
        ``root/sources.jsonl``, so a file is hashed again only when it changed. None when the file
        cannot be read (the stage reading it reports why, and caches nothing for it).
        """
        try:
            stat = os.stat(path)
            identity = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)
            known = self._known_sources().get(identity)
            if known is not None:
                return known
            digest = file_sha1(path)
        except OSError:
            return None
        if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > RACY_SECONDS * 1e9:
            self._sources[identity] = digest
            line = json.dumps({"path": identity[0], "size": identity[1], "mtime_ns": identity[2],
                               "ino": identity[3], "ctime_ns": identity[4], "sha1": digest})
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                with open(self.root / SOURCES_FILE, "a") as f:  # one short appended line: no torn records
                    f.write(line + "\n")
            except OSError:
                pass  # a read-only cache still works: the file is hashed again next time
        return digest

    def _known_sources(self) -> dict[tuple, str]:
        if self._sources is None:
            self._sources = {}
            try:
                lines = (self.root / SOURCES_FILE).read_text().splitlines()
            except OSError:
                lines = []
            for line in lines:
                try:
                    r = json.loads(line)
                    self._sources[(r["path"], r["size"], r["mtime_ns"], r["ino"], r["ctime_ns"])] = r["sha1"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a kill mid-append
        return self._sources

    # -- entries ----------------------------------------------------------------------------------
    def has(self, stage: str, fingerprint: str, key: str, source: str | None = None) -> bool:
        """Whether a valid entry computed from ``source`` exists (reads its header only)."""
        return self._header(stage, fingerprint, key, source) is not None

    def get(self, stage: str, fingerprint: str, key: str, source: str | None = None,
            mmap: bool = False) -> dict[str, np.ndarray] | None:
        """The entry's arrays, or None when it is missing, corrupt or computed from another source.

        ``source``: :meth:`source` of the file the entry must have been computed from (None for
        entries not computed from one file, e.g. a whole stage's output). ``mmap``: map the file
        copy-on-write instead of reading it (the arrays can be written to; the file never is).
        """
        found = self._header(stage, fingerprint, key, source)
        if found is None:
            return None
        path, header, start = found
        try:
            if mmap:
                data = np.memmap(path, dtype=np.uint8, mode="c")
            else:
                data = np.fromfile(path, dtype=np.uint8)
            arrays = {}
            for name, dtype, shape, offset in header["arrays"]:
                dtype = np.dtype(dtype)
                size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
                chunk = data[start + offset:start + offset + size]
                if len(chunk) != size:
                    raise ValueError("truncated")
                arrays[name] = chunk.view(dtype).reshape(tuple(shape))
            return arrays
        except (OSError, ValueError, TypeError, KeyError):
            path.unlink(missing_ok=True)  # a corrupt entry (disk trouble) is recomputed rather than trusted
            return None

    def put(self, stage: str, fingerprint: str, key: str, arrays: dict[str, np.ndarray],
            source: str | None = None) -> None:
        """Store ``arrays`` (numeric, bool or fixed-width string arrays; no objects) as computed from ``source``."""
        layout, offset = [], 0
        contiguous = []
        for name, array in arrays.items():
            array = np.asarray(array, order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
            if array.dtype.hasobject:
                raise TypeError(f"cache entry {key}: array {name} holds Python objects")
            offset = -(-offset // _ALIGN) * _ALIGN
            layout.append([name, array.dtype.str, list(array.shape), offset])
            contiguous.append((offset, array))
            offset += array.nbytes
        header = json.dumps({"source": source, "arrays": layout}).encode()
        start = -(-(_PREAMBLE.size + len(header)) // _ALIGN) * _ALIGN
        buffer = bytearray(start + offset)
        buffer[:_PREAMBLE.size + len(header)] = _PREAMBLE.pack(_MAGIC, len(header)) + header
        for at, array in contiguous:
            buffer[start + at:start + at + array.nbytes] = array.reshape(-1).view(np.uint8).tobytes()
        atomic_write_bytes(self.path(stage, fingerprint, key), bytes(buffer))

    def _header(self, stage: str, fingerprint: str, key: str, source: str | None) -> tuple[Path, dict, int] | None:
        """(path, header, offset of the data) of a valid entry from ``source``; None (stale noted) otherwise."""
        path = self.path(stage, fingerprint, key)
        try:
            with open(path, "rb") as f:
                magic, length = _PREAMBLE.unpack(f.read(_PREAMBLE.size))
                if magic != _MAGIC:
                    raise ValueError("not a cache entry")
                header = json.loads(f.read(length))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, struct.error):
            path.unlink(missing_ok=True)
            return None
        if header.get("source") != source:
            self.stale.add((stage, fingerprint, key))
            return None
        return path, header, -(-(_PREAMBLE.size + length) // _ALIGN) * _ALIGN

    def describe(self, stage: str, fingerprint: str, meta: dict[str, Any]) -> None:
        """Record what made this fingerprint (written once per stage directory)."""
        path = self.directory(stage, fingerprint) / "meta.json"
        if not path.is_file():
            atomic_write_bytes(path, json.dumps(meta, indent=2, sort_keys=True, default=str).encode())

    def check_space(self, needed_bytes: int, what: str) -> None:
        """Raise :class:`CacheSpaceError` before ``what`` starts when the cache's disk has less free space
        than the ``needed_bytes`` it is estimated to write."""
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if needed_bytes > free:
            raise CacheSpaceError(f"{what} needs about {_gigabytes(needed_bytes)} of cache under {self.root}, "
                                  f"but only {_gigabytes(free)} is free there; free some space or put the cache "
                                  "on another disk")


def _gigabytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB"
