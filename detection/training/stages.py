"""The training stages, what each one reads, and the cached outputs of the whole-dataset stages.

Training is five stages in this order (recipe §4–§8), each reading earlier stages' cached outputs:

=========== ============================================= ==========================================
stage       output                                        cached as
=========== ============================================= ==========================================
proposals   selective-search boxes per image              one entry per image (``proposals/``)
conv        conv maps per image and scale, and of the     one entry per image (``conv/``), the flip
            horizontally flipped training images          under the key ``<image id>#flip``
finetune    the fine-tuned fc head (+ its checkpoint)     one entry (:class:`StageStore`)
svm         per-class SVMs, feature scale, mining history one entry
bbox        ridge box regressors and pool5's scale        one entry
=========== ============================================= ==========================================

Every cached output lives under a fingerprint of everything it was computed from (backbone and
its weights' hash, scales, proposal settings, the images and their annotations, the upstream
stages' fingerprints and the stage's own config section), next to a ``meta.json`` spelling those
inputs out. A stage whose fingerprint has an output is up to date; changing an input changes the
fingerprint of that stage and of everything downstream, so exactly those are recomputed. Writes
are atomic (:mod:`detection.core.cache`), so a killed run leaves complete entries or none.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from detection.core.cache import Cache
from detection.core.config import SPPConfig, fingerprint
from detection.core.errors import SppnetError
from detection.data.voc import VOCDataset
from features.extractor import conv_fingerprint

# The stages whose outputs a stage reads (when they are needed at all: see :func:`skip_reason`).
UPSTREAM = {
    "proposals": (),
    "conv": (),
    "finetune": ("proposals", "conv"),
    "svm": ("proposals", "conv", "finetune"),
    "bbox": ("proposals", "conv"),
}

FLIP_SUFFIX = "#flip"  # conv cache key of a training image's mirror image
_OUTPUT_KEY = "output"
_INFO_KEY = "__info__"  # the JSON part of a stage output, stored as a string array (no pickle)


class StageError(SppnetError, RuntimeError):
    """A stage cannot run: an output it reads is missing. The one-line message says what to run."""


def dataset_fingerprint(dataset: VOCDataset, sources: list[str | None]) -> str:
    """A hash of the class list and every image's id, annotation and file content hash (``sources``,
    one per image, :meth:`~detection.core.cache.Cache.source`): what the learned stages saw."""
    records = [(r.image_id, r.boxes.tolist(), r.labels.tolist(), r.difficult.tolist(), source)
               for r, source in zip(dataset, sources, strict=True)]
    return fingerprint(list(dataset.classes), records)


def skip_reason(stage: str, config: SPPConfig) -> str | None:
    """Why ``stage`` is not needed for ``config`` (None: it is): the plan of a training run."""
    if stage == "conv" and config.features.mode != "spp":
        return f"{config.features.mode} mode caches no conv maps"
    if stage == "finetune" and not config.svm.feature_layer.startswith("ft"):
        return f"not needed for feature layer {config.svm.feature_layer}"
    if stage == "svm" and config.test.scoring == "softmax":
        return "softmax scoring reads the fine-tuned head, no SVMs"
    if stage == "bbox" and not config.bbox.enabled:
        return "box regression is off"
    return None


def stage_fingerprints(config: SPPConfig, proposals: str, backbone_weights: str, dataset: str,
                       pretrained_head: str | None) -> dict[str, str]:
    """Each stage's fingerprint: its inputs, the upstream fingerprints and its own config section.

    ``proposals`` is the proposal settings' fingerprint, ``backbone_weights`` the backbone's weights
    hash, ``dataset`` :func:`dataset_fingerprint`, ``pretrained_head`` the hash of the backbone's
    pretrained fc layers (None when it has none).
    """
    conv = conv_fingerprint(config.features.backbone, backbone_weights, config.features)
    upstream = (proposals, conv, dataset, config.features)  # features: pooling (levels, rules) shapes every vector
    finetune_settings = config.finetune.weight_settings()  # the settings that change the weights
    finetune = fingerprint("finetune", *upstream, finetune_settings, pretrained_head)
    layer = config.svm.feature_layer
    if layer == "pool5":
        source = "pool5"
    elif layer.startswith("ft"):
        source = finetune
    else:  # the head before fine-tuning: made from the same settings, conservatively all of them
        source = fingerprint("initial head", config.features, finetune_settings, pretrained_head)
    norm = {k: getattr(config.svm, k) for k in ("feature_norm_target", "norm_images", "norm_boxes_per_image",
                                                 "norm_seed")}
    return {
        "proposals": proposals, "conv": conv, "dataset": dataset, "finetune": finetune,
        "svm": fingerprint("svm", *upstream, config.svm, source),
        "bbox": fingerprint("bbox", *upstream, config.bbox, norm),
    }


def missing_upstream_error(stage: str, upstream: str) -> StageError:
    return StageError(f"stage {stage} needs the output of stage {upstream}, which is missing or out of date for "
                      f"this configuration and data; run `sppnet train` with --stages {upstream},{stage} "
                      "(or without --stages)")


class StageStore:
    """Whole-stage outputs in a :class:`Cache`: named arrays plus a JSON-able ``info`` dict per (stage, fingerprint).

    Arrays may be numpy arrays, tensors or Python numbers; :meth:`load` gives numpy arrays back
    (0-d for numbers). ``meta`` records the inputs in readable form (``meta.json`` beside the entry).
    """

    def __init__(self, cache: Cache):
        self.cache = cache

    def has(self, stage: str, stage_fingerprint: str) -> bool:
        return self.cache.has(stage, stage_fingerprint, _OUTPUT_KEY)

    def save(self, stage: str, stage_fingerprint: str, arrays: dict[str, Any], info: dict[str, Any],
             meta: dict[str, Any]) -> None:
        self.cache.describe(stage, stage_fingerprint, meta)
        stored = {name: _as_array(value) for name, value in arrays.items()}
        stored[_INFO_KEY] = np.array(json.dumps(info, default=str))
        self.cache.put(stage, stage_fingerprint, _OUTPUT_KEY, stored)

    def load(self, stage: str, stage_fingerprint: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        stored = self.cache.get(stage, stage_fingerprint, _OUTPUT_KEY)
        if stored is None:
            raise StageError(f"stage {stage}: no cached output for this configuration and data; run it first")
        info = json.loads(str(stored.pop(_INFO_KEY)))
        return stored, info

    def directory(self, stage: str, stage_fingerprint: str):
        """The entry's directory, for a stage's own files (fine-tuning checkpoints)."""
        return self.cache.directory(stage, stage_fingerprint)


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def tensors(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Loaded arrays as a state dict: tensors, with 0-d arrays back to Python numbers."""
    return {name: torch.from_numpy(a) if a.ndim else a.item() for name, a in arrays.items()}
