"""The error of bad batch input or a bad output directory."""
from __future__ import annotations

from detection.core.errors import SppnetError


class BatchError(SppnetError, ValueError):
    """Bad batch input or output directory; the message names it."""
