"""`sppnet detect` over folders: inputs, bad files, outputs, resume, shards, torchrun, the Python API."""
import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detection.runs.batch import (
    BatchError, DetectionFilter, OutputDir, PredictionStream, ProposalPipeline, ReadOptions, find_images, prediction_record,
    read_records, shard,
)
from detection.runs.batch.outputs import _truncate_torn_line
from detection.runs.batch.refilter import refilter
from detection.core.config import ProposalConfig, SPPConfig
from detection.detector import Detector
from detection.core.detections import Detections
from features.backbones import build_backbone
from features.spp import spp_output_dim
from proposals.selective_search import _proposal_image, selective_search
from tools.cli import main

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("circle", "square", "star")
PROPOSALS = ProposalConfig(resize_width=80, min_size=8, max_proposals=60)
IMAGE_SIZE = (80, 60)  # width, height of the good test images
MAX_PIXELS = 20_000  # the "huge" test image is above it, the good ones far below


def scene(width: int, height: int, seed: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB: a few filled rectangles on a gradient, enough for selective search."""
    rng = np.random.default_rng(seed)
    image = np.broadcast_to(np.linspace(30, 220, width)[None, :, None], (height, width, 3)).copy()
    for _ in range(4):
        x1, y1 = rng.integers(0, width - 24), rng.integers(0, height - 24)
        image[y1:y1 + rng.integers(16, 40), x1:x1 + rng.integers(16, 40)] = rng.integers(0, 256, 3)
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A detector with random (seeded) SVM weights: no training, deterministic, small and fast."""
    config = SPPConfig().replace(proposals=PROPOSALS.__dict__,
                                 features={"scales": (96,)}, svm={"feature_layer": "pool5"},
                                 bbox={"enabled": False})
    backbone = build_backbone(config.features.backbone)
    dim = spp_output_dim(backbone.channels, config.features.pyramid_levels)
    rng = np.random.default_rng(0)
    detector = Detector(config, CLASSES, backbone, rng.normal(0, 0.02, (len(CLASSES), dim)), np.zeros(len(CLASSES)),
                        1.0, regressor=None, device="cpu")
    path = tmp_path_factory.mktemp("model") / "model.pt"
    detector.save(path)
    return path


def save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def good_images(folder: Path) -> list[Path]:
    """One usable image of each kind the reader converts, in several formats and a subfolder."""
    rgb = [Image.fromarray(scene(*IMAGE_SIZE, seed)) for seed in range(8)]
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise: 72 x 96 once upright
    deep = (np.asarray(rgb[3].convert("L"), dtype=np.uint16) * 257)
    return [
        save(folder / "a.jpg", rgb[0], quality=95),
        save(folder / "sub" / "b.png", rgb[1]),
        save(folder / "sub" / "deeper" / "CAPS.JPG", rgb[2]),
        save(folder / "gray.png", rgb[3].convert("L")),
        save(folder / "palette.png", rgb[4].convert("P")),
        save(folder / "rgba.png", rgb[5].convert("RGBA")),
        save(folder / "deep16.png", Image.fromarray(deep)),
        save(folder / "cmyk.jpg", rgb[6].convert("CMYK")),
        save(folder / "rotated.jpg", rgb[7], exif=exif),
        save(folder / "photo.webp", rgb[0]),
        save(folder / "picture.bmp", rgb[1]),
        save(folder / "scan.tif", rgb[2]),
    ]


def bad_images(folder: Path) -> dict[Path, str]:
    """Each kind of unusable file -> a word its failure reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corrupt.jpg").write_bytes(np.random.default_rng(1).integers(0, 256, 2000, np.uint8).tobytes())
    truncated = save(folder / "truncated.jpg", Image.fromarray(scene(*IMAGE_SIZE, 9)))
    truncated.write_bytes(truncated.read_bytes()[:600])
    (folder / "notes.jpg").write_text("this is a text file, not a picture\n")
    (folder / "empty.png").write_bytes(b"")
    save(folder / "tiny.png", Image.fromarray(scene(*IMAGE_SIZE, 10)[:8, :8]))
    save(folder / "huge.png", Image.fromarray(scene(200, 150, 11)))
    return {folder / "corrupt.jpg": "decode", folder / "truncated.jpg": "truncated",
            folder / "notes.jpg": "decode", folder / "empty.png": "empty",
            folder / "tiny.png": "smaller than 32", folder / "huge.png": "--max-pixels"}


def detect(model_path, out, *inputs, workers=0, extra=()) -> int:
    threads = torch.get_num_threads()  # `detect` shares the cores with its workers: restored for other tests
    try:
        return main(["detect", *map(str, inputs), "--model", str(model_path), "--out", str(out), "--quiet",
                     "--device", "cpu", "--workers", str(workers), "--max-pixels", str(MAX_PIXELS), *extra])
    finally:
        torch.set_num_threads(threads)


def jsonl_files(out: Path) -> list[str]:
    return [r["file"] for r in read_records(out / "predictions.jsonl")]


def failures(out: Path) -> dict[str, str]:
    return dict(line.split("\t") for line in (out / "failed.tsv").read_text().splitlines())


def coco(out: Path) -> dict:
    return json.loads((out / "detections.json").read_text())


def assert_same_coco(a: dict, b: dict):
    """Equal files, but scores and boxes compared to float rounding (thread counts may differ)."""
    assert a["images"] == b["images"] and a["categories"] == b["categories"]
    assert len(a["annotations"]) == len(b["annotations"])
    for x, y in zip(a["annotations"], b["annotations"]):
        assert (x["image_id"], x["category_id"]) == (y["image_id"], y["category_id"])
        np.testing.assert_allclose(x["bbox"] + [x["score"]], y["bbox"] + [y["score"]], rtol=1e-4, atol=1e-3)


# -- inputs -------------------------------------------------------------------------------------------

def test_find_images_directories_globs_lists_and_missing(tmp_path, monkeypatch):
    for name in ("a.jpg", "b.PNG", "sub/c.webp", "sub/deep/d.tiff", "notes.txt", "sub/e.bmp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    expected = sorted(os.path.abspath(n) for n in ("a.jpg", "b.PNG", "sub/c.webp", "sub/deep/d.tiff", "sub/e.bmp"))
    assert find_images(["."]) == expected
    assert find_images(["sub/**/*.*"]) == [p for p in expected if "/sub/" in p]  # glob: image names only
    # a named file is taken whatever its name, a missing one too (it fails later with its reason)
    assert find_images(["notes.txt", "missing.jpg"]) == [os.path.abspath("missing.jpg"), os.path.abspath("notes.txt")]
    (tmp_path / "list.txt").write_text("# a comment\n\nsub/e.bmp\n  a.jpg  \nsub/e.bmp\n")
    assert find_images(["a.jpg"], list_file="list.txt") == [os.path.abspath("a.jpg"), os.path.abspath("sub/e.bmp")]


def test_shards_split_the_sorted_list_completely_and_evenly():
    paths = [f"/p/{i:03d}.jpg" for i in range(10)]
    parts = [shard(paths, i, 3) for i in range(3)]
    assert sorted(p for part in parts for p in part) == paths and [len(p) for p in parts] == [4, 3, 3]
    assert parts[1] == ["/p/001.jpg", "/p/004.jpg", "/p/007.jpg"]


def test_detection_filter_threshold_classes_topk():
    dets = Detections(np.arange(20, dtype=float).reshape(5, 4), np.array([0.1, 0.9, -0.5, 0.4, 0.7]),
                      np.array([0, 1, 1, 2, 0]))
    kept = DetectionFilter(min_score=0.0, topk=2, labels=(0, 1))(dets)
    np.testing.assert_array_equal(kept.scores, [0.9, 0.7])
    np.testing.assert_array_equal(kept.labels, [1, 0])
    np.testing.assert_array_equal(kept.boxes, dets.boxes[[1, 4]])
    assert len(DetectionFilter()(dets)) == 5


@pytest.mark.parametrize("content, kept", [
    (b"", b""), (b"a\n", b"a\n"), (b"a\nbb", b"a\n"), (b"torn", b""), (b"x\n" + b"y" * 30, b"x\n"),
    (b"x" * 20 + b"\n" + b"z" * 9 + b"\n", b"x" * 20 + b"\n" + b"z" * 9 + b"\n"),
])
def test_a_line_torn_by_a_crash_is_cut_off_before_appending(tmp_path, content, kept):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    _truncate_torn_line(path, block=7)  # blocks smaller than the lines: the backwards search crosses them
    assert path.read_bytes() == kept


def test_proposal_image_of_a_sliver_is_capped():
    sliver = np.ascontiguousarray(scene(300, 40, 0)[:2].transpose(1, 0, 2))  # 2 px wide, 300 px tall
    config = ProposalConfig()
    bgr, _ = _proposal_image(sliver, config.resize_width, config.max_side)
    assert max(bgr.shape[:2]) <= config.max_side and bgr.shape[0] == 2000
    # an ordinary image is untouched by the cap: width 500, as in R-CNN
    assert _proposal_image(scene(320, 240, 0), 500, config.max_side)[0].shape[:2] == (375, 500)
    boxes = selective_search(sliver, config)
    assert boxes.shape[1] == 4 and (boxes[:, 2] <= 1).all() and (boxes[:, 3] <= 299).all()


def test_pipeline_reads_proposes_and_reports(tmp_path):
    good = good_images(tmp_path / "in")[:2]
    missing = tmp_path / "in" / "missing.jpg"
    options = ReadOptions(PROPOSALS, min_side=32)
    pipeline = ProposalPipeline(options, workers=0)
    prepared = {p.path: p for p in pipeline([str(good[0]), str(missing), str(good[1])])}
    assert prepared[str(missing)].reason == "no such file" and prepared[str(missing)].image is None
    for path in map(str, good):
        assert prepared[path].reason is None and prepared[path].image.shape == (60, 80, 3)
        np.testing.assert_array_equal(prepared[path].boxes, selective_search(prepared[path].image, PROPOSALS))
    assert pipeline.wait_seconds > 0  # inline, all of the reading and proposing is waiting


# -- the Python API ---------------------------------------------------------------------------------------

def test_python_api_path_array_and_pil_agree(model_path, tmp_path):
    path = save(tmp_path / "x.png", Image.fromarray(scene(*IMAGE_SIZE, 3)))
    det = Detector.load(model_path, device="cpu")
    from_path = det(path)
    from_array = det(np.asarray(Image.open(path)))
    from_pil = det(Image.open(path))
    assert len(from_path) > 0
    for dets in (from_array, from_pil, *det.detect_batch([str(path), Image.open(path)])):
        np.testing.assert_array_equal(dets.boxes, from_path.boxes)
        np.testing.assert_array_equal(dets.scores, from_path.scores)
        np.testing.assert_array_equal(dets.labels, from_path.labels)
    assert from_path.boxes.shape[1] == 4 and from_path.labels.max() < len(CLASSES)


# -- whole runs ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[Path], dict[Path, str]]:
    """A folder of good images of every kind, bad files of every kind, and a file that is no image."""
    folder = tmp_path_factory.mktemp("photos")
    good = good_images(folder)
    bad = bad_images(folder / "bad")
    (folder / "README.txt").write_text("not an image name: not picked up from a directory\n")
    return folder, good, bad


@pytest.fixture(scope="module")
def single(photos, model_path, tmp_path_factory) -> tuple[Path, int, str, str]:
    """One run over ``photos`` with two proposal workers: (OUT, exit status, stdout, stderr)."""
    out = tmp_path_factory.mktemp("single") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = detect(model_path, out, photos[0], workers=2, extra=["--save-vis"])
    return out, status, stdout.getvalue(), stderr.getvalue()


@pytest.mark.slow
def test_every_good_image_detected_every_bad_one_reported(photos, single):
    folder, good, bad = photos
    out, status, stdout, stderr = single
    assert status == 1
    assert sorted(jsonl_files(out)) == sorted(str(p) for p in good)
    reasons = failures(out)
    assert set(reasons) == {str(p) for p in bad}
    for path, word in bad.items():
        assert word in reasons[str(path)].lower(), (path, reasons[str(path)])
        assert f"failed: {path}: " in stderr
    assert f"{len(good)} done, 0 skipped (done by an earlier run), {len(bad)} failed" in stdout
    records = {r["file"]: r for r in read_records(out / "predictions.jsonl")}
    assert all(r["detections"] for r in records.values())
    rotated = records[str(folder / "rotated.jpg")]
    assert (rotated["width"], rotated["height"]) == (IMAGE_SIZE[1], IMAGE_SIZE[0])
    for path in good:  # the same layout under vis/ as under the input folder
        drawn = np.asarray(Image.open(out / "vis" / path.relative_to(folder)))
        assert drawn.shape[:2] == (records[str(path)]["height"], records[str(path)]["width"])


@pytest.mark.slow
def test_coco_file_loads_in_pycocotools(photos, single):
    from pycocotools.coco import COCO

    out, good = single[0], photos[1]
    data = coco(out)
    assert [image["file_name"] for image in data["images"]] == sorted(str(p) for p in good)
    assert [image["id"] for image in data["images"]] == list(range(1, len(good) + 1))
    assert [c["name"] for c in data["categories"]] == list(CLASSES)
    ann = data["annotations"][0]
    assert set(ann) >= {"id", "image_id", "category_id", "bbox", "score", "area", "iscrowd"}
    assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3], rel=1e-3)
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(out / "detections.json"))
        results = ground_truth.loadRes(coco(out)["annotations"])
    assert len(ground_truth.getImgIds()) == len(good) and len(ground_truth.getCatIds()) == len(CLASSES)
    assert len(results.getAnnIds()) == len(data["annotations"])
    # inclusive pixel boxes: w = x2 - x1 + 1
    first = next(r for r in read_records(out / "predictions.jsonl") if r["file"] == data["images"][0]["file_name"])
    x1, y1, x2, y2 = first["detections"][0]["box"]
    bbox = next(a["bbox"] for a in data["annotations"] if a["image_id"] == 1)
    assert bbox == pytest.approx([x1, y1, x2 - x1 + 1, y2 - y1 + 1])


@pytest.mark.slow
def test_rerun_skips_done_images_and_duplicates_nothing(photos, single, model_path, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(single[0], out)
    lines_before = (out / "predictions.jsonl").read_text()
    assert detect(model_path, out, photos[0]) == 1  # the bad files are tried again, and fail again
    assert (out / "predictions.jsonl").read_text() == lines_before
    assert coco(out) == coco(single[0])
    assert failures(out) == failures(single[0])
    assert f"0 done, {len(photos[1])} skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_resume_after_a_crash_adds_nothing_twice(photos, single, model_path, tmp_path):
    folder = photos[0] / "sub"
    out = tmp_path / "out"
    (tmp_path / "first.txt").write_text(f"{folder / 'b.png'}\n")
    assert detect(model_path, out, extra=["--list", str(tmp_path / "first.txt")]) == 0
    # a crash in the middle of a line: the torn line is dropped and that image done again
    with open(out / "predictions.jsonl", "a") as stream:
        stream.write('{"file": "' + str(folder / "deeper" / "CAPS.JPG") + '", "wid')
    assert detect(model_path, out, folder) == 0
    files = jsonl_files(out)
    assert sorted(files) == sorted(set(files)) == [str(folder / "b.png"), str(folder / "deeper" / "CAPS.JPG")]
    reference = {r["file"]: r for r in read_records(single[0] / "predictions.jsonl")}
    for record in read_records(out / "predictions.jsonl"):
        expected = reference[record["file"]]
        assert [d["label"] for d in record["detections"]] == [d["label"] for d in expected["detections"]]
        np.testing.assert_allclose([d["box"] + [d["score"]] for d in record["detections"]],
                                   [d["box"] + [d["score"]] for d in expected["detections"]], rtol=1e-4, atol=1e-3)
    # other settings in the same --out would mix two kinds of results: refused
    assert detect(model_path, out, folder, extra=["--score-thresh", "0.5"]) == 2


@pytest.mark.slow
def test_filters_apply_to_every_output(photos, model_path, tmp_path):
    images = photos[1][:2]
    out = tmp_path / "out"
    assert detect(model_path, out, *images, extra=["--score-thresh", "0", "--topk", "3", "--classes", "star,circle"]) == 0
    for record in read_records(out / "predictions.jsonl"):
        assert len(record["detections"]) <= 3
        assert all(d["score"] >= 0 and d["label"] in ("star", "circle") for d in record["detections"])
    assert {a["category_id"] for a in coco(out)["annotations"]} <= {1, 3}
    assert detect(model_path, tmp_path / "other", *images, extra=["--classes", "hexagon"]) == 2


@pytest.mark.slow
def test_shards_merge_into_the_single_process_result(photos, single, model_path, tmp_path, capsys):
    out = tmp_path / "sharded"
    assert detect(model_path, out, photos[0], extra=["--shard", "1/2"]) == 1
    assert not (out / "detections.json").exists()  # shard 0 is not done yet
    detect(model_path, out, photos[0], extra=["--shard", "0/2"])
    assert "all 2 shards are done: merged" in capsys.readouterr().out
    assert_same_coco(coco(out), coco(single[0]))
    assert failures(out) == failures(single[0])
    assert sorted(jsonl_files(out)) == sorted(jsonl_files(single[0]))


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(photos, single, model_path, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "ranks"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "tools.cli", "detect", str(photos[0]), "--model", str(model_path), "--out", str(out),
                          "--device", "cpu", "--workers", "0", "--quiet", "--max-pixels", str(MAX_PIXELS)],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode != 0  # the bad files failed
    assert f"all ranks: {len(photos[1])} done, 0 skipped" in run.stdout, run.stdout + run.stderr
    assert sorted(p.name for p in (out / "parts").glob("*.jsonl")) == ["shard0-of-2.jsonl", "shard1-of-2.jsonl"]
    assert_same_coco(coco(out), coco(single[0]))
    assert failures(out) == failures(single[0])
    assert sorted(jsonl_files(out)) == sorted(jsonl_files(single[0]))


# -- processes that clean up, outputs that are complete -------------------------------------------------

@pytest.mark.slow
def test_a_second_run_into_the_same_out_stops_naming_the_first(model_path, tmp_path, capsys):
    image = save(tmp_path / "in" / "a.png", Image.fromarray(scene(*IMAGE_SIZE, 0)))
    out = tmp_path / "out"
    held = OutputDir(out).lock()  # as a running `sppnet detect` holds it
    try:
        assert detect(model_path, out, image) == 2
    finally:
        held.close()
    error = capsys.readouterr().err.strip()
    assert error == (f"sppnet detect: error: {out}: in use by another sppnet detect (pid {os.getpid()}) writing "
                     "predictions.jsonl; wait for it to end or use another --out")
    assert not (out / "predictions.jsonl").exists()
    # another shard writes another stream: not locked out; the same shard is
    with OutputDir(out, 1, 2).lock():
        assert detect(model_path, out, image, extra=["--shard", "0/2"]) == 0
        assert detect(model_path, out, image, extra=["--shard", "1/2"]) == 2
    assert detect(model_path, out, image) == 0  # released when its holder is done


@pytest.mark.slow
def test_a_full_disk_at_a_picture_leaves_that_image_to_redo(model_path, tmp_path, monkeypatch, capsys):
    import detection.core.cache as cache_module

    folder = tmp_path / "in"
    images = [save(folder / f"{name}.png", Image.fromarray(scene(*IMAGE_SIZE, seed))) for seed, name in enumerate("abc")]
    out = tmp_path / "out"
    real_mkstemp = cache_module.tempfile.mkstemp
    pictures = []

    def full_at_the_second_picture(dir, **kwargs):
        if Path(dir).name == "vis":
            pictures.append(dir)
            if len(pictures) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_mkstemp(dir=dir, **kwargs)

    monkeypatch.setattr(cache_module.tempfile, "mkstemp", full_at_the_second_picture)
    assert detect(model_path, out, folder, extra=["--save-vis"]) == 2
    assert f"No space left on device: '{out / 'vis' / 'b.png'}'" in capsys.readouterr().err
    assert jsonl_files(out) == [str(images[0])]  # b's record was never written without its picture
    monkeypatch.undo()
    assert detect(model_path, out, folder, extra=["--save-vis"]) == 0
    assert sorted(jsonl_files(out)) == [str(p) for p in images]
    assert sorted(p.name for p in (out / "vis").iterdir()) == ["a.png", "b.png", "c.png"]
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("detections.json", "failed.tsv", "run.json", "predictions.jsonl", "vis/a.png"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_a_full_disk_at_a_record_names_the_file(tmp_path):
    stream = PredictionStream(tmp_path / "predictions.jsonl")

    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    stream._file.close()
    stream._file = FullDisk()
    with pytest.raises(OSError, match=r"No space left on device: '.*predictions\.jsonl'"):
        stream.write({"file": "x"})


# -- video input ------------------------------------------------------------------------------------------

def write_video(path: Path, frames: int, fps: float = 10.0) -> list[np.ndarray]:
    """An MJPG .avi (a codec OpenCV writes and reads offline) of ``frames`` scenes; their RGB frames as read back."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, IMAGE_SIZE)
    assert writer.isOpened()
    for seed in range(frames):
        writer.write(cv2.cvtColor(scene(*IMAGE_SIZE, 20 + seed), cv2.COLOR_RGB2BGR))
    writer.release()
    capture = cv2.VideoCapture(str(path))
    decoded = []
    while (frame := capture.read())[0]:
        decoded.append(cv2.cvtColor(frame[1], cv2.COLOR_BGR2RGB))
    return decoded


def test_video_frames_every_kth_with_times_and_errors(model_path, tmp_path, capsys):
    from detection.runs.batch.video import VideoError, frames_to_read, read_frames

    decoded = write_video(tmp_path / "clip.avi", 8)
    frames = list(read_frames(str(tmp_path / "clip.avi"), stride=3))
    assert [(f.index, f.time) for f in frames] == [(0, 0.0), (3, 0.3), (6, 0.6)]
    assert frames_to_read(tmp_path / "clip.avi", 3) == 3
    for frame in frames:
        np.testing.assert_array_equal(frame.image, decoded[frame.index])
    assert frames[1].key == f"{tmp_path / 'clip.avi'}#frame=000003"
    (tmp_path / "notes.mp4").write_text("not a video\n")
    for name, reason in [("missing.mp4", "no such file"), ("notes.mp4", "cannot open as a video")]:
        with pytest.raises(VideoError, match=reason):
            list(read_frames(str(tmp_path / name)))
    with pytest.raises(VideoError, match="smaller than 64 px"):
        list(read_frames(str(tmp_path / "clip.avi"), min_side=64))
    assert detect(model_path, tmp_path / "out", tmp_path / "clip.avi", extra=["--video-stride", "0"]) == 2
    assert capsys.readouterr().err == "sppnet detect: error: --video-stride: must be at least 1, got 0\n"


@pytest.mark.slow
def test_detect_on_a_video_one_record_per_kth_frame(model_path, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    decoded = write_video(folder / "clip.avi", 8)
    photo = save(folder / "photo.png", Image.fromarray(scene(*IMAGE_SIZE, 1)))
    (folder / "broken.mp4").write_text("not a video\n")
    out = tmp_path / "out"
    assert detect(model_path, out, folder, extra=["--video-stride", "3", "--save-vis"]) == 1
    video = str(folder / "clip.avi")
    records = read_records(out / "predictions.jsonl")
    assert sorted((r["file"], r.get("frame"), r.get("time")) for r in records) == [
        (video, 0, 0.0), (video, 3, 0.3), (video, 6, 0.6), (str(photo), None, None)]
    assert failures(out) == {str(folder / "broken.mp4"): "cannot open as a video (no decoder in OpenCV for it?)"}
    # each frame detected as the same picture given to the detector
    det = Detector.load(model_path, device="cpu")
    frame3 = next(r for r in records if r.get("frame") == 3)
    expected = det(decoded[3])
    np.testing.assert_allclose([d["box"] for d in frame3["detections"]], expected.boxes, atol=0.01)
    np.testing.assert_allclose([d["score"] for d in frame3["detections"]], expected.scores, rtol=1e-4, atol=1e-4)
    assert [image["file_name"] for image in coco(out)["images"]] == [
        f"{video}#frame=000000", f"{video}#frame=000003", f"{video}#frame=000006", str(photo)]
    assert sorted(p.name for p in (out / "vis" / "clip.avi.frames").iterdir()) == ["000000.jpg", "000003.jpg", "000006.jpg"]
    capsys.readouterr()
    # a rerun skips the frames done; a smaller stride adds only the frames not done yet
    assert detect(model_path, out, folder, extra=["--video-stride", "2"]) == 1
    assert "2 done, 3 skipped" in capsys.readouterr().out  # frames 2 and 4 new; 0, 6 and the photo skipped
    assert sorted(r.get("frame", -1) for r in read_records(out / "predictions.jsonl")) == [-1, 0, 2, 3, 4, 6]


# -- the output directory, streamed; filtering a finished run again --------------------------------------------

def synthetic_run(out: Path, classes=CLASSES) -> list[dict]:
    """An OUT as `sppnet detect` leaves it, without a model: run.json, predictions.jsonl (with a torn last line), failed.tsv."""
    rng = np.random.default_rng(0)
    records = []
    for name in ("b.jpg", "a.jpg", "clip.mp4#3", "c.jpg", "clip.mp4#0"):
        n = int(rng.integers(0, 6))
        x1, y1 = rng.uniform(0, 40, (2, n))
        dets = Detections(np.stack([x1, y1, x1 + rng.uniform(5, 30, n), y1 + rng.uniform(5, 30, n)], 1),
                          rng.normal(0, 1, n), rng.integers(0, len(classes), n))
        file, _, frame = name.partition("#")
        records.append(prediction_record(f"/data/{file}", (60, 80), dets, classes,
                                         int(frame) if frame else None, int(frame or 0) / 10 if frame else None))
    out.mkdir(parents=True)
    OutputDir(out).check_settings({"model_sha1": "abc", "score_thresh": None, "topk": None, "classes": None}, classes)
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"file": "/data/torn')
    (out / "failed.tsv").write_text("/data/bad.jpg\tcannot decode image\n")
    return records


def test_merge_streams_what_detections_to_coco_writes(tmp_path):
    from detection.data.coco import detections_to_coco
    from detection.runs.batch import record_detections
    from detection.runs.batch.records import record_key

    out = tmp_path / "out"
    records = synthetic_run(out)
    # a shard's part with one record more and one already merged
    (out / "parts").mkdir()
    extra = prediction_record("/data/d.jpg", (60, 80), Detections.empty(), CLASSES)
    (out / "parts" / "shard1-of-2.jsonl").write_text(json.dumps(extra) + "\n" + json.dumps(records[0]) + "\n")
    count, failed = OutputDir(out).merge(CLASSES, {"/data/a.jpg": "stale", "/data/e.jpg": "new"})
    everything = sorted(records + [extra], key=record_key)
    assert count == 6 and failed == {"/data/e.jpg": "new"}  # failures come from the caller and the parts
    assert read_records(out / "predictions.jsonl") == records + [extra]
    images = [{"id": i, "file_name": record_key(r), "width": 80, "height": 60} for i, r in enumerate(everything, 1)]
    expected = detections_to_coco(images, [record_detections(r, CLASSES) for r in everything], CLASSES,
                                  info={"description": "sppnet detect", "box_format": "[x, y, w, h], w = x2 - x1 + 1"})
    assert coco(out) == json.loads(json.dumps(expected))
    assert [image["file_name"] for image in coco(out)["images"]][3:5] == ["/data/clip.mp4#frame=000000",
                                                                          "/data/clip.mp4#frame=000003"]


def test_filter_a_finished_run_again(tmp_path, capsys):
    source, out = tmp_path / "run", tmp_path / "filtered"
    records = synthetic_run(source)
    assert main(["filter", str(source), "--out", str(out), "--score-thresh", "0", "--topk", "2",
                 "--classes", "star,circle"]) == 0
    filtered = read_records(out / "predictions.jsonl")
    assert [(r["file"], r.get("frame"), r.get("time")) for r in filtered] == [
        (r["file"], r.get("frame"), r.get("time")) for r in records]
    for before, after in zip(records, filtered):
        kept = sorted((d for d in before["detections"] if d["score"] >= 0 and d["label"] in ("star", "circle")),
                      key=lambda d: -d["score"])[:2]
        assert after["detections"] == kept
    assert len(coco(out)["annotations"]) == sum(len(r["detections"]) for r in filtered)
    assert failures(out) == {"/data/bad.jpg": "cannot decode image"}
    settings = json.loads((out / "run.json").read_text())
    assert settings["filtered_from"] == str(source) and settings["topk"] == 2
    assert "filter: 5 images, 1 failed" in capsys.readouterr().out
    # the same again is the same; into the run itself, with an unknown class, or from a non-run: one-line errors
    assert main(["filter", str(source), "--out", str(out), "--score-thresh", "0", "--topk", "2",
                 "--classes", "star,circle"]) == 0
    assert read_records(out / "predictions.jsonl") == filtered
    capsys.readouterr()
    assert main(["filter", str(source), "--out", str(source), "--topk", "1"]) == 2
    assert main(["filter", str(source), "--out", str(tmp_path / "x"), "--classes", "hexagon"]) == 2
    assert main(["filter", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert main(["filter", str(source), "--out", str(out), "--topk", "1"]) == 2  # made with other filters
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 4 and all(line.startswith("sppnet filter: error: ") for line in errors)
    assert "needs another --out" in errors[0] and "hexagon" in errors[1] and "run.json" in errors[2]
    assert "other settings" in errors[3]


def test_filter_by_probability_keeps_a_calibrated_runs_likely_detections(tmp_path, capsys):
    source, out = tmp_path / "run", tmp_path / "filtered"
    records = synthetic_run(source)
    rng = np.random.default_rng(1)
    for record in records:
        for detection in record["detections"]:
            detection["probability"] = round(float(rng.uniform()), 6)  # as records store them
    (source / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["filter", str(source), "--out", str(out), "--min-prob", "0.5"]) == 0
    filtered = read_records(out / "predictions.jsonl")
    for before, after in zip(records, filtered):
        kept = sorted((d for d in before["detections"] if d["probability"] >= 0.5), key=lambda d: -d["probability"])
        assert after["detections"] == kept
    assert json.loads((out / "run.json").read_text())["min_prob"] == 0.5
    # a run of margins only, or a probability out of range: one-line errors naming what is wrong
    margins_only = tmp_path / "margins"
    synthetic_run(margins_only)
    capsys.readouterr()
    assert main(["filter", str(margins_only), "--out", str(tmp_path / "m"), "--min-prob", "0.5"]) == 2
    assert main(["filter", str(source), "--out", str(tmp_path / "p"), "--min-prob", "1.5"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and "/data/b.jpg" in errors[0] and "calibrated" in errors[0]
    assert "--min-prob: a probability in [0, 1], got 1.5" in errors[1]


def test_a_run_json_without_the_class_list_is_resumed_and_gains_it(tmp_path):
    out = tmp_path / "run"
    synthetic_run(out)
    settings = json.loads((out / "run.json").read_text())
    del settings["model_classes"]
    (out / "run.json").write_text(json.dumps(settings))  # as sppnet wrote it before
    with pytest.raises(BatchError, match="no class list"):
        refilter(out, tmp_path / "filtered", topk=1)
    OutputDir(out).check_settings({k: settings[k] for k in ("model_sha1", "score_thresh", "topk", "classes")}, CLASSES)
    assert json.loads((out / "run.json").read_text())["model_classes"] == list(CLASSES)
    assert refilter(out, tmp_path / "filtered", topk=1)[0] == 5
