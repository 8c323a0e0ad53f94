"""Content hashes that name what a cached result was computed from: files and module weights.

Config values are hashed by :func:`detection.core.config.fingerprint`; this module hashes the two
other kinds of input, the bytes of an input file and the values of a module's weights.
"""
from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 20


def file_sha1(path: str | os.PathLike) -> str:
    """The SHA-1 of a file's bytes, as 40 hex digits (read in 1 MiB chunks). Raises OSError."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def state_hash(module) -> str:
    """A short hash of a torch module's parameter and buffer values (and their names), 16 hex digits.

    Names weights in cache fingerprints: two modules hash alike exactly when their state dicts
    hold the same names and the same bytes.
    """
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
