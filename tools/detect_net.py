"""`sppnet detect`: detections for image files and folders.

Writes OUT/predictions.jsonl, one line per image as it finishes:
{"file": ..., "width": W, "height": H, "detections": [{"box": [x1, y1, x2, y2], "score": s, "label": name}]}
with 0-based inclusive pixel boxes. Images that cannot be read are reported and skipped.
Exit status: 0 when every image succeeded, 1 when any failed, 2 on a usage or model error.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from detection.detector import Detector
from detection.images import IMAGE_EXTENSIONS, ImageError, load_image
from tools.common import add_runtime_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or directories")
    parser.add_argument("--model", required=True, help="model.pt written by `sppnet train`")
    parser.add_argument("--out", required=True, help="output directory")
    add_runtime_arguments(parser)


def image_paths(inputs: list[str]) -> list[Path]:
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            paths.append(item)
    return paths


def run(args: argparse.Namespace) -> int:
    detector = Detector.load(args.model, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = []
    with open(out / "predictions.jsonl", "w") as stream:
        for path in tqdm(image_paths(args.inputs), desc="detect", disable=args.quiet):
            try:
                image = load_image(path)
            except ImageError as err:
                failures.append(err)
                continue
            dets = detector.detect(image)
            record = {"file": str(path), "width": image.shape[1], "height": image.shape[0], "detections": [
                {"box": [round(float(v), 2) for v in box], "score": float(score), "label": detector.classes[label]}
                for box, score, label in zip(dets.boxes, dets.scores, dets.labels)]}
            stream.write(json.dumps(record) + "\n")
            stream.flush()
    for err in failures:
        print(f"skipped: {err}")
    return 1 if failures else 0
