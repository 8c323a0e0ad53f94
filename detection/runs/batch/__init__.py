"""Detection over many image files (``sppnet detect``): inputs, pipelined proposals, streamed and resumable outputs, shards.

The modules: :mod:`.inputs` (finding, listing and sharding files), :mod:`.pipeline` (reading and
proposals in worker processes), :mod:`.records` (filters and jsonl records), :mod:`.outputs` (the
``OUT`` directory: stream, failures, resume, merge), :mod:`.run` (the loop of one process),
:mod:`.distributed` (torchrun), :mod:`.video` (frames of video files), :mod:`.refilter` (``sppnet
filter``: a finished run filtered again from its records) and :mod:`.folder` (a whole run
from Python: :func:`detection.runs.batch.folder.detect_folder`; not imported here, as it loads torch,
which the worker processes importing this package do not need).

The work flows in two stages. A pool of worker processes (:mod:`proposals.pool`) reads each image
(:func:`load_image`: EXIF orientation, grayscale, palette, alpha, 16-bit, CMYK) and runs selective
search on it; the main process runs the conv layers and scores the windows. At most two images per
worker are in flight, so workers stay busy while memory stays bounded, and the main process only
waits when the workers cannot keep up; that waiting time is measured and reported.

Outputs under ``OUT``:

- ``predictions.jsonl``: one line per image as soon as it is done (flushed, so a crash loses
  nothing finished): ``{"file", "width", "height", "detections": [{"box": [x1, y1, x2, y2],
  "score", "probability", "label"}]}``, absolute file paths, 0-based inclusive pixel boxes, scores
  as the model gives them (SVM margins: 0 is the decision boundary) and, from a calibrated model,
  probabilities in [0, 1] (svm/calibration.py); a video frame's line also has ``"frame"`` and ``"time"``;
- ``detections.json``: the same in COCO format (:mod:`detection.data.coco`), rebuilt from the jsonl
  lines at the end of every run, one image per file or frame (ids 1..N in name order), so it
  never holds an image twice; streamed, so no run holds its records in memory;
- ``failed.tsv``: ``path<TAB>reason`` of each image that failed, one line each;
- ``vis/``: with ``save_vis``, each image with its detections drawn, at its path relative to the
  deepest directory holding all inputs, written before the image's jsonl line (a kill or a full
  disk in between leaves the image undone, so a rerun redoes it);
- ``.lock`` (``parts/shard<i>-of-<n>.lock`` for a shard): held by the process writing, so a second
  run into the same ``OUT`` stops at once with an error naming the first one's pid;
- ``run.json``: the model's hash and the filters. A rerun with the same ``OUT`` skips the images
  already in the jsonl (failed ones are tried again); it refuses other settings, which would mix
  two kinds of results in one file.

Sharding: shard ``i`` of ``n`` takes every n-th file of the sorted input list from the i-th on, and
streams to ``parts/shard<i>-of-<n>.jsonl`` (failures to ``.failed.tsv``) instead of
``predictions.jsonl``. The shards are merged into ``predictions.jsonl``, ``detections.json`` and
``failed.tsv`` by rank 0 after a barrier under ``torchrun``, or, for independent ``--shard`` runs,
by whichever shard finishes last (each leaves a ``.done`` marker; merging twice is harmless).
Parts are kept after merging, as another shard may still be appending to its own.
"""
from detection.runs.batch.distributed import distributed_env, gather_counts
from detection.runs.batch.errors import BatchError
from detection.runs.batch.inputs import common_root, find_images, read_list_file, shard
from detection.runs.batch.outputs import (
    DETECTIONS, FAILED, PARTS, PREDICTIONS, SETTINGS, VIS, OutputDir, PredictionStream, read_failures,
    read_records, write_failures,
)
from detection.runs.batch.pipeline import Prepared, ProposalPipeline, ReadOptions, prepare_image
from detection.runs.batch.records import DetectionFilter, class_indices, prediction_record, record_detections
from detection.runs.batch.run import BatchSummary, detect_files, share_cores

__all__ = [
    "BatchError", "BatchSummary", "DETECTIONS", "DetectionFilter", "FAILED", "OutputDir", "PARTS", "PREDICTIONS",
    "PredictionStream", "Prepared", "ProposalPipeline", "ReadOptions", "SETTINGS", "VIS", "class_indices",
    "common_root", "detect_files", "distributed_env", "find_images", "gather_counts",
    "prediction_record", "prepare_image", "read_failures", "read_list_file", "read_records", "record_detections",
    "shard", "share_cores", "write_failures",
]
