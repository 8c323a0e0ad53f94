"""Detection: the detector that ties the stages together, evaluators, result writers, the Python API.

The foundations every stage shares live here too: :mod:`detection.config` (defaults),
:mod:`detection.boxes` (box convention and utilities), :mod:`detection.voc` (datasets),
:mod:`detection.cache` (on-disk intermediates), :mod:`detection.images` (image reading).
"""


def __getattr__(name):
    # Imported lazily so that proposals/, features/ and svm/ can use detection.boxes and
    # detection.config without importing the whole detector (and torch models) first.
    if name == "Detector":
        from detection.detector import Detector

        return Detector
    raise AttributeError(f"module 'detection' has no attribute {name!r}")
