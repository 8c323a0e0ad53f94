"""Training stage by stage, each reading the previous stages' cached outputs (see :mod:`detection.training.stages`).

Stages (recipe §4–§8): ``proposals`` (selective search, cached per image), ``conv`` (feature maps
per image and scale in fp16, and of the flipped training images when fine-tuning), ``finetune``
(the fc head on SPP vectors of the cached maps), ``svm`` (the feature-norm scale of the chosen
layer, then per-class linear SVMs with hard-negative mining) and ``bbox`` (pool5's own norm scale,
then ridge box regressors). The result is one ``model.pt``.

A stage is only run when it is needed (fine-tuning only for the ft* feature layers, box regression
only when enabled) and its output for the current inputs is not cached yet; it can be rerun alone
(``stages=("svm",)``) from the others' cached outputs. Every computation is deterministic and every
write atomic, so a run killed at any moment and rerun writes the same ``model.pt`` as one that was
never interrupted.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from detection.core.cache import Cache, atomic_write_bytes
from detection.core.config import STAGES, SPPConfig
from detection.core.errors import SppnetError
from detection.core.hashing import state_hash
from detection.core.images import load_image
from detection.data.voc import VOCDataset
from detection.detector import (
    Detector,
    check_scoring,
    head_from_state,
    head_layer,
    layer_features,
    resolve_device,
    weights_id,
)
from detection.training.log import TrainingLog, format_svm_retrain, summarise_svm_history
from detection.training.memo import MapReader, PooledWindows
from detection.training.stages import (
    UPSTREAM,
    StageStore,
    dataset_fingerprint,
    missing_upstream_error,
    skip_reason,
    stage_fingerprints,
    tensors,
)
from detection.training.windows import TrainingWindows, finetune_targets, training_windows
from features.backbones import build_backbone
from features.extractor import build_extractor, distinct_windows
from features.finetune import FineTuner
from features.head import FCHead, build_head
from proposals.precomputed import PrecomputedProposals
from proposals.store import ProposalStore, proposal_bytes
from svm.bbox_regression import BoxRegressor, regression_training_set
from svm.calibration import PlattScaling
from svm.feature_norm import feature_norm_scale, sample_indices
from svm.hard_negatives import HardNegativeSVMs


class TrainingError(SppnetError, RuntimeError):
    """Training cannot go on (e.g. images whose proposals failed); the message says which."""


class Trainer:
    """Runs the stages on a dataset, caching under ``cache_dir`` (default ``work_dir/cache``) and
    writing ``work_dir/model.pt``, ``work_dir/train.log`` (appended: every stage's messages,
    fine-tuning progress, each SVM retrain) and ``work_dir/train_log.json`` (this run's stage
    timings and the stages' fingerprints).

    ``timings`` holds the wall time (s) of each stage the last :meth:`train` computed.
    ``proposals``: precomputed windows to train on instead of selective search's.
    """

    def __init__(self, config: SPPConfig, work_dir: str | Path, device: str | None = None,
                 workers: int = 1, progress: bool = True, log: Callable[[str], None] = print,
                 cache_dir: str | Path | None = None, proposals: PrecomputedProposals | None = None):
        self.config = config
        self.precomputed_proposals = proposals
        self.work_dir = Path(work_dir)
        self.cache = Cache(cache_dir if cache_dir is not None else self.work_dir / "cache")
        self.device = resolve_device(device)
        self.workers = workers
        self.progress = progress
        self.log = TrainingLog(self.work_dir / "train.log", log)
        self.timings: dict[str, float] = {}
        self._last_run: TrainingRun | None = None

    def train(self, dataset: VOCDataset, stages: tuple[str, ...] = STAGES) -> Detector | None:
        """Run the requested ``stages`` that are needed and not up to date, then write ``model.pt``.

        Returns the detector, or None when an output it needs is still missing (e.g. only
        ``stages=("proposals",)`` was asked for). Raises :class:`~detection.training.stages.StageError`
        when a requested stage reads an output that is missing and was not requested.
        """
        run = TrainingRun(self, dataset)
        self._last_run = run
        detector = run.execute(stages)
        self.timings = run.timings
        return detector

    def finetune_history(self) -> list[dict]:
        """The fine-tuning log (one entry per logged interval) of the last :meth:`train`'s head; [] if none."""
        return [] if self._last_run is None else self._last_run.finetune_history()


class TrainingRun:
    """One :meth:`Trainer.train` call: the dataset, backbone, extractor and every stage's
    fingerprint, all made on construction, and the stage table that :meth:`execute` walks."""

    def __init__(self, trainer: Trainer, dataset: VOCDataset):
        cfg = self.config = trainer.config
        head_layer(cfg.svm.feature_layer)  # an unknown layer fails here, before any work
        try:
            check_scoring(cfg)
        except ValueError as err:
            raise TrainingError(str(err)) from None
        if cfg.svm.feature_layer.startswith("ft") and cfg.features.mode != "spp":
            raise TrainingError("fine-tuning reads cached conv maps: use --mode spp with an ft* feature layer")
        self.work_dir = trainer.work_dir
        self.cache = trainer.cache
        self.store = StageStore(self.cache)
        self.device = trainer.device
        self.progress = trainer.progress
        self._say = trainer.log
        self.timings: dict[str, float] = {}
        self.dataset = dataset
        self.records = list(dataset)
        self.num_classes = len(dataset.classes)
        self.backbone = build_backbone(cfg.features.backbone, cfg.features.backbone_weights)
        backbone_id = weights_id(self.backbone)
        self.extractor = build_extractor(self.backbone, cfg.features, self.device, cache=self.cache,
                                         weights_id=backbone_id)
        self.proposal_store = ProposalStore(self.cache, cfg.proposals, workers=trainer.workers,
                                            precomputed=trainer.precomputed_proposals)
        # each image file's content hash: per-image cache entries are checked against it, and the
        # learned stages' fingerprints include it (an image replaced in place retrains them)
        self.sources = [self.cache.source(r.path) for r in self.records]
        self.maps = None if skip_reason("conv", cfg) else MapReader(self.extractor, self.records, self.sources)
        self._windows: list[TrainingWindows] | None = None
        pretrained_head = self.backbone.pretrained_head
        self.fingerprints = stage_fingerprints(
            cfg, self.proposal_store.fingerprint, backbone_id, dataset_fingerprint(dataset, self.sources),
            None if pretrained_head is None else state_hash(pretrained_head))
        # built now so that a head that cannot be built fails before any stage runs
        self._head0 = None if head_layer(cfg.svm.feature_layer) is None else self._build_head()
        self.meta = {
            "backbone": cfg.features.backbone, "weights": backbone_id, "scales": list(cfg.features.scales),
            "proposals": dataclasses.asdict(cfg.proposals), "dataset": f"{dataset.root} ({dataset.split})",
            "image_ids": [r.image_id for r in self.records], "classes": list(dataset.classes),
        }
        self.stage_functions: dict[str, Callable[[], None]] = {
            "proposals": self._proposals_stage, "conv": self._conv_stage, "finetune": self._finetune_stage,
            "svm": self._svm_stage, "bbox": self._bbox_stage,
        }

    def _bar(self, iterable, desc: str, total: int | None = None):
        return tqdm(iterable, desc=desc, total=total, disable=not self.progress, leave=False)

    def execute(self, stages: tuple[str, ...]) -> Detector | None:
        """Run the requested ``stages`` that are needed and not up to date, then assemble ``model.pt``."""
        self._say(f"== sppnet train {datetime.now(timezone.utc).isoformat(timespec='seconds')}: "
                  f"{len(self.dataset)} images of {self.dataset.root} ({self.dataset.split}), "
                  f"stages {','.join(stages)}", console=False)
        stale_before = set(self.cache.stale)
        self._check_space(stages)
        for stage in STAGES:
            reason = skip_reason(stage, self.config)
            if reason:
                if stage in stages:
                    self._say(f"stage {stage}: {reason}, skipped")
            elif self._up_to_date(stage):
                self._say(f"stage {stage}: up to date, skipped")
            elif stage in stages:
                for upstream in UPSTREAM[stage]:
                    if not skip_reason(upstream, self.config) and not self._up_to_date(upstream):
                        raise missing_upstream_error(stage, upstream)
                self._say(f"stage {stage}: running")
                start = time.perf_counter()
                self.stage_functions[stage]()
                self.timings[stage] = time.perf_counter() - start
                self._say(f"stage {stage}: done in {self.timings[stage]:.1f} s")
        stale = len(self.cache.stale - stale_before)
        if stale:
            self._say(f"{stale} stale cache entries recomputed (computed from other image files than these)")
        detector = self._assemble()
        atomic_write_bytes(self.work_dir / "train_log.json", json.dumps(
            {"timings_s": self.timings, "images": len(self.dataset), "classes": list(self.dataset.classes),
             "fingerprints": self.fingerprints, "model_written": detector is not None}, indent=2).encode())
        return detector

    def _check_space(self, stages: tuple[str, ...]) -> None:
        """Fail before any work when the cache's disk cannot hold the per-image entries the requested
        stages will write (proposals and conv maps; the other stages' outputs are small)."""
        needed = 0
        if "proposals" in stages:
            needed += proposal_bytes(self.config.proposals) * sum(
                not self.proposal_store.has(r.image_id, source) for r, source in zip(self.records, self.sources))
        if "conv" in stages and self.maps is not None:
            needed += sum(self.extractor.cache_bytes(self.records[i % len(self.records)].height,
                                                     self.records[i % len(self.records)].width)
                          for i in self._conv_indices() if not self.maps.cached(i))
        self.cache.check_space(needed, f"sppnet train ({len(self.records)} images)")

    def _conv_indices(self) -> range:
        """MapReader indices the conv stage must cache: every image, and its flip when fine-tuning uses flips."""
        flips = not skip_reason("finetune", self.config) and self.config.finetune.flip
        return range(len(self.records) * (2 if flips else 1))

    def _up_to_date(self, stage: str) -> bool:
        if stage == "proposals":
            return all(self.proposal_store.has(r.image_id, source) for r, source in zip(self.records, self.sources))
        if stage == "conv":
            return all(self.maps.cached(i) for i in self._conv_indices())
        return self.store.has(stage, self.fingerprints[stage])

    def _stage_meta(self, stage: str, section) -> dict:
        return {**self.meta, "stage": stage, "upstream": {s: self.fingerprints[s] for s in UPSTREAM[stage]},
                "dataset_fingerprint": self.fingerprints["dataset"],
                "features": dataclasses.asdict(self.config.features), "config": dataclasses.asdict(section)}

    # -- what stages read -----------------------------------------------------------------------
    def _proposals(self) -> dict[str, np.ndarray]:
        boxes, failures = self.proposal_store.compute_all([(r.image_id, r.path) for r in self.records],
                                                          progress=self.progress)
        if failures:
            lines = "\n".join(f"  {reason}" for reason in failures.values())
            raise TrainingError(f"{len(failures)} training image(s) could not be read:\n{lines}")
        return boxes

    def windows(self) -> list[TrainingWindows]:
        """Every training image's windows (GT boxes + cached proposals), made once per run."""
        if self._windows is None:
            proposals = self._proposals()
            self._windows = [training_windows(r, proposals[r.image_id], self.num_classes) for r in self.records]
        return self._windows

    def _maps(self, index: int) -> tuple[list[torch.Tensor], tuple[int, int]]:
        return self.maps(index) if self.maps is not None else self.extractor.maps(
            self.records[index].image_id, lambda: load_image(self.records[index].path), self.sources[index])

    def _features(self, index: int, boxes: np.ndarray, head: FCHead | None, layer: str, maps=None) -> np.ndarray:
        """(n, 4) windows of training image ``index`` -> (n, D) unscaled ``layer`` features."""
        maps, image_size = maps if maps is not None else self._maps(index)
        pool5 = self.extractor.pool(maps, boxes, image_size)
        return layer_features(pool5, head, layer).cpu().numpy()

    def _mining_windows(self, index: int) -> tuple[np.ndarray, tuple[list[torch.Tensor], tuple[int, int]]]:
        """Training image ``index``'s windows to mine: their indices (M,), maps and image size.

        §7: with ``svm.dedup_windows`` (SPP mode), only the first of the windows that land on the
        same cells at the same scale, as ``spp_train.m``; they would give identical features.
        """
        boxes = self.windows()[index].boxes
        maps = self._maps(index)
        if self.config.svm.dedup_windows and self.config.features.mode == "spp":
            return distinct_windows(*self.extractor.window_cells(maps[0], boxes, maps[1])), maps
        return np.arange(len(boxes)), maps

    def _feature_scale(self, head: FCHead | None, layer: str) -> float:
        """Recipe §7: 20 / mean L2 norm of ``layer`` features, over a fixed random sample of windows."""
        cfg = self.config.svm
        windows = self.windows()
        picks = sample_indices([len(w.boxes) for w in windows], n_images=cfg.norm_images,
                               n_boxes=cfg.norm_boxes_per_image, seed=cfg.norm_seed)
        scale = feature_norm_scale((self._features(i, windows[i].boxes[b], head, layer) for i, b in picks),
                                   target=cfg.feature_norm_target)
        self._say(f"feature scale of {layer}: {scale:.6g}", console=False)
        return scale

    def _build_head(self) -> FCHead:
        """The head before fine-tuning: the backbone's pretrained fc6 widened onto the pyramid, or fresh layers."""
        cfg = self.config
        try:
            head = build_head(self.backbone, cfg.features.pyramid_levels, cfg.finetune, self.num_classes)
        except ValueError as err:  # e.g. vgg16's 7×7 fc6 with no 7×7 pyramid level
            raise TrainingError(f"cannot build the fc head for {cfg.features.backbone}: {err}") from None
        return head.to(self.device).eval()

    def _initial_head(self) -> FCHead:
        """A fresh copy of the head before fine-tuning (fine-tuning trains its copy in place)."""
        return copy.deepcopy(self._head0)

    def _svm_head(self) -> FCHead | None:
        """The head the SVM layer is read from: none (pool5), the initial one (fc6/fc7) or the fine-tuned one."""
        layer = self.config.svm.feature_layer
        if head_layer(layer) is None:
            return None
        if not layer.startswith("ft"):
            return self._initial_head()
        state, _ = self.store.load("finetune", self.fingerprints["finetune"])
        return head_from_state(tensors(state)).to(self.device)

    # -- stages ---------------------------------------------------------------------------------
    def _proposals_stage(self) -> None:
        self._proposals()

    def _conv_stage(self) -> None:
        missing = [i for i in self._conv_indices() if not self.maps.cached(i)]
        for index in self._bar(missing, "conv"):
            self.maps.compute(index)

    def _finetune_stage(self) -> None:
        cfg = self.config
        head = self._initial_head()
        windows = self.windows()
        targets = [finetune_targets(w) for w in windows]
        copies = 2 if cfg.finetune.flip else 1  # flipped images: the same windows mirrored, same targets
        fp = self.fingerprints["finetune"]
        lowest = min(cfg.finetune.bg_low, cfg.finetune.fg_threshold)  # no window below this is ever drawn
        pool = PooledWindows(self.extractor, self.maps, windows, [overlap >= lowest for overlap, _ in targets])
        tuner = FineTuner(head, cfg.finetune, pool, checkpoint_dir=self.store.directory("finetune", fp),
                          device=self.device, log=lambda line: self._say(line, console=False),
                          progress=self.progress)
        overlaps, labels = zip(*targets)
        head = tuner.fit(list(overlaps) * copies, list(labels) * copies, num_scales=len(cfg.features.scales))
        self.store.save("finetune", fp, head.state_dict(), {"history": tuner.history_},
                        self._stage_meta("finetune", cfg.finetune))
        tuner.checkpoint_path.unlink(missing_ok=True)  # the saved head supersedes it (twice its size with momentum)

    def _svm_stage(self) -> None:
        cfg = self.config
        layer = cfg.svm.feature_layer
        head = self._svm_head()
        scale = self._feature_scale(head, layer)
        windows = self.windows()
        positives, labels, images = [], [], []
        for i, w in enumerate(self._bar(windows, "svm positives")):
            is_positive = w.positives(cfg.svm.use_difficult)
            if is_positive.any():
                positives.append(self._features(i, w.boxes[is_positive], head, layer) * scale)
                labels.append(w.positive_labels[is_positive])
                images.append(np.full(int(is_positive.sum()), i))

        def negative_images() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            for i, w in enumerate(self._bar(windows, "svm hard negatives")):
                mined, maps = self._mining_windows(i)
                yield self._features(i, w.boxes[mined], head, layer, maps) * scale, w.overlaps[mined], mined

        if not positives:
            raise TrainingError(f"no {'' if cfg.svm.use_difficult else 'non-difficult '}ground-truth box in the "
                                "training set: nothing to train SVMs on")
        svms = HardNegativeSVMs.from_config(cfg.svm).fit(np.concatenate(positives), np.concatenate(labels),
                                                         negative_images(), num_classes=self.num_classes,
                                                         pos_images=np.concatenate(images))
        for entry in svms.history_:
            self._say(format_svm_retrain(entry, self.dataset.classes), console=False)
        self._say(summarise_svm_history(svms.history_, self.dataset.classes))
        platt = self._calibration(head, layer, scale, svms)
        self.store.save("svm", self.fingerprints["svm"],
                        {"coef": svms.coef_, "intercept": svms.intercept_, "feature_scale": scale,
                         "platt_coef": platt.coef_, "platt_intercept": platt.intercept_},
                        {"history": svms.history_}, self._stage_meta("svm", cfg.svm))

    def _calibration(self, head: FCHead | None, layer: str, scale: float, svms: HardNegativeSVMs) -> PlattScaling:
        """Per-class Platt sigmoids on the SVM margins of a seeded sample of training proposals,
        each labelled by whether it would be a correct detection (config ``svm.calibration_*``);
        the margins come from the fold models that did not train on the image, unless
        ``svm.calibration_folds`` is 0."""
        cfg = self.config.svm
        windows = self.windows()
        gt_counts = [len(w.record.boxes) for w in windows]  # the GT boxes come first: proposals follow
        picks = sample_indices([len(w.boxes) - g for w, g in zip(windows, gt_counts)], n_images=cfg.calibration_images,
                               n_boxes=cfg.calibration_windows_per_image, seed=cfg.calibration_seed)
        margins, correct = [np.zeros((0, self.num_classes))], [np.zeros((0, self.num_classes), dtype=bool)]
        for i, chosen in self._bar(picks, "svm calibration"):
            rows = chosen + gt_counts[i]
            features = self._features(i, windows[i].boxes[rows], head, layer) * scale
            margins.append(svms.held_out_decision_function(features, i) if cfg.calibration_folds
                           else svms.decision_function(features))
            correct.append(windows[i].overlaps[rows] >= cfg.calibration_overlap)
        margins, correct = np.concatenate(margins), np.concatenate(correct)  # (N, K)
        classes = np.broadcast_to(np.arange(self.num_classes), margins.shape)
        scored = np.isfinite(margins)  # a class without an SVM (or fold model) scores -inf: nothing to fit
        platt = PlattScaling().fit(margins[scored], correct[scored], classes[scored], self.num_classes)
        held_out = f"held-out margins of {cfg.calibration_folds} fold models" if cfg.calibration_folds else "in-sample margins"
        self._say(f"calibration: Platt sigmoids on {len(margins)} windows of {len(picks)} images ({held_out}), "
                  f"{int(correct.sum())} correct (window, class) pairs", console=False)
        return platt

    def _bbox_stage(self) -> None:
        cfg = self.config
        scale = self._feature_scale(None, "pool5")  # §8: pool5 with its own scale, whatever the SVMs read
        features, targets, labels = [], [], []
        for i, w in enumerate(self._bar(self.windows(), "bbox regression")):
            gt_boxes, gt_labels = w.ground_truth(cfg.bbox.use_difficult)
            chosen, image_targets, image_labels = regression_training_set(
                w.boxes, gt_boxes, gt_labels, min_overlap=cfg.bbox.min_overlap)
            if len(chosen):
                features.append(self._features(i, w.boxes[chosen], None, "pool5") * scale)
                targets.append(image_targets)
                labels.append(image_labels)
        if not features:
            raise TrainingError(f"no window overlaps a ground-truth box by more than {cfg.bbox.min_overlap}; "
                                "cannot train box regression (use --no-bbox-reg)")
        X, T, L = np.concatenate(features), np.concatenate(targets), np.concatenate(labels)
        regressor = BoxRegressor(ridge_lambda=cfg.bbox.ridge_lambda).fit(X, T, L, num_classes=self.num_classes)
        self.store.save("bbox", self.fingerprints["bbox"], {**regressor.to_state(), "feature_scale": scale},
                        {"r2_train": regressor.score(X, T, L)}, self._stage_meta("bbox", cfg.bbox))

    def finetune_history(self) -> list[dict]:
        """The fine-tuning log (one entry per logged interval) of the last :meth:`train`'s head; [] if none."""
        fp = self.fingerprints["finetune"]
        return self.store.load("finetune", fp)[1]["history"] if self.store.has("finetune", fp) else []

    # -- the model ------------------------------------------------------------------------------
    def _assemble(self) -> Detector | None:
        """The detector from the stages' cached outputs, saved as ``model.pt``; None if one is missing.

        The detector shares the trainer's cache, so testing it reuses (and fills) the conv cache.
        """
        missing = [s for s in ("finetune", "svm", "bbox") if not skip_reason(s, self.config) and not self._up_to_date(s)]
        if missing:
            self._say(f"model.pt not written: no output of stage(s) {', '.join(missing)} for this configuration yet")
            return None
        svm = {"coef": None, "intercept": None, "feature_scale": None}
        if not skip_reason("svm", self.config):
            svm, _ = self.store.load("svm", self.fingerprints["svm"])
            svm["feature_scale"] = float(svm["feature_scale"])
        regressor, bbox_scale = None, None
        if self.config.bbox.enabled:
            state, _ = self.store.load("bbox", self.fingerprints["bbox"])
            state = tensors(state)
            bbox_scale = state.pop("feature_scale")
            regressor = BoxRegressor.from_state(state)
        calibration = None if svm["coef"] is None else PlattScaling.from_state(  # softmax scoring: no SVMs
            {"coef": svm["platt_coef"], "intercept": svm["platt_intercept"]})
        detector = Detector(self.config, self.dataset.classes, self.backbone, svm["coef"], svm["intercept"],
                            svm["feature_scale"], regressor, device=self.device, cache=self.cache,
                            head=self._svm_head(), bbox_feature_scale=bbox_scale, calibration=calibration)
        detector.save(self.work_dir / "model.pt")
        self._say(f"model: {self.work_dir / 'model.pt'}", console=False)
        return detector
