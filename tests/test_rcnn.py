"""R-CNN mode (recipe §11): crop geometry, warp and features against slow per-window references."""
import json
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detection.core.config import FeatureConfig
from detection.data.demo import make_demo_dataset
from detection.data.devkit import read_devkit_results
from features.backbones import build_backbone
from features.extractor import SPPFeatureExtractor, build_extractor
from features.rcnn import RCNNFeatureExtractor, rcnn_crop_boxes, warp_crops
from tools.cli import main


def matlab_round(x):
    return math.copysign(math.floor(abs(x) + 0.5), x)


def rcnn_im_crop_reference(box, image_size, crop_size, padding):
    """rcnn_im_crop.m ("warp" mode) line by line for one 0-based box -> (source, placement) as in features.rcnn."""
    height, width = image_size
    bbox = [v + 1 for v in box]  # MATLAB is 1-based
    pad_w = pad_h = 0
    crop_width = crop_height = crop_size
    if padding > 0:
        scale = crop_size / (crop_size - padding * 2)
        half_height = (bbox[3] - bbox[1] + 1) / 2
        half_width = (bbox[2] - bbox[0] + 1) / 2
        center = [bbox[0] + half_width, bbox[1] + half_height]
        bbox = [matlab_round(c + d * scale) for c, d in zip(center + center, [-half_width, -half_height,
                                                                              half_width, half_height])]
        unclipped_height = bbox[3] - bbox[1] + 1
        unclipped_width = bbox[2] - bbox[0] + 1
        pad_x1 = max(0, 1 - bbox[0])
        pad_y1 = max(0, 1 - bbox[1])
        bbox = [max(1, bbox[0]), max(1, bbox[1]), min(width, bbox[2]), min(height, bbox[3])]
        clipped_height = bbox[3] - bbox[1] + 1
        clipped_width = bbox[2] - bbox[0] + 1
        scale_x = crop_size / unclipped_width
        scale_y = crop_size / unclipped_height
        crop_width = matlab_round(clipped_width * scale_x)
        crop_height = matlab_round(clipped_height * scale_y)
        pad_w = matlab_round(pad_x1 * scale_x)
        pad_h = matlab_round(pad_y1 * scale_y)
        crop_height = min(crop_height, crop_size - pad_h)
        crop_width = min(crop_width, crop_size - pad_w)
    return [v - 1 for v in bbox], [pad_w, pad_h, crop_width, crop_height]


def random_boxes(rng, n, height, width):
    """Random windows, plus ones on every border, whole-image, tiny and corner windows."""
    x1 = rng.integers(0, width, n)
    y1 = rng.integers(0, height, n)
    x2 = np.minimum(x1 + rng.integers(0, width, n), width - 1)
    y2 = np.minimum(y1 + rng.integers(0, height, n), height - 1)
    special = [[0, 0, width - 1, height - 1], [0, 0, 0, 0], [width - 1, height - 1, width - 1, height - 1],
               [0, 5, 3, 8], [width - 20, 0, width - 1, height - 1], [2, 2, 12, 40], [0, 0, 49, 49]]
    return np.concatenate([np.stack([x1, y1, x2, y2], axis=1), special]).astype(np.float64)


@pytest.mark.parametrize("crop_size", [227, 224])
@pytest.mark.parametrize("context", [16, 0])
def test_crop_geometry_matches_rcnn_im_crop(crop_size, context):
    rng = np.random.default_rng(crop_size + context)
    for height, width in [(60, 80), (375, 500), (240, 320)]:
        boxes = random_boxes(rng, 300, height, width)
        source, placement = rcnn_crop_boxes(boxes, (height, width), crop_size, context)
        for box, src, place in zip(boxes, source, placement):
            ref_src, ref_place = rcnn_im_crop_reference(box.tolist(), (height, width), crop_size, context)
            assert src.tolist() == ref_src and place.tolist() == ref_place, box
        assert (source[:, :2] >= 0).all() and (source[:, 2] < width).all() and (source[:, 3] < height).all()
        assert (placement[:, :2] >= 0).all() and (placement[:, 2:] > 0).all()
        assert (placement[:, :2] + placement[:, 2:] <= crop_size).all()


def test_sixteen_pixels_of_context_in_the_warped_frame():
    # a 195-px window inside the image: enlarged by 227/195 it spans 227 px of source, and the
    # window itself lands 16 px in from each side of the crop (17 on the right: R-CNN's centre
    # x1 + w/2 sits half a pixel right of the true centre)
    box = np.array([[100.0, 50.0, 294.0, 244.0]])
    source, placement = rcnn_crop_boxes(box, (400, 500), 227, 16)
    assert placement.tolist() == [[0, 0, 227, 227]]
    per_pixel = 227 / (source[0, 2] - source[0, 0] + 1)
    left = (box[0, 0] - source[0, 0]) * per_pixel
    right = (source[0, 2] - box[0, 2]) * per_pixel
    assert 15 <= left <= 16.5 and 16 <= right <= 17.5
    # without context the window fills the crop
    source, placement = rcnn_crop_boxes(box, (400, 500), 227, 0)
    assert source.tolist() == box.astype(int).tolist() and placement.tolist() == [[0, 0, 227, 227]]


def test_clipping_at_the_border_places_the_crop_with_mean_padding():
    # box (0, 0, 49, 49): enlarged to -3 .. 55 (1-based), clipped to 1 .. 55; 4 of its 59 px lie
    # off the image, round(4 · 227/59) = 15 crop px of padding on the left and top
    source, placement = rcnn_crop_boxes(np.array([[0.0, 0.0, 49.0, 49.0]]), (100, 100), 227, 16)
    assert source.tolist() == [[0, 0, 54, 54]] and placement.tolist() == [[15, 15, 212, 212]]
    image = torch.ones(3, 100, 100)
    crop = warp_crops(image, source, placement, 227)[0]
    assert crop.shape == (3, 227, 227)
    assert crop[:, :15].abs().max() == 0 and crop[:, :, :15].abs().max() == 0  # padding: the mean, 0
    assert torch.allclose(crop[:, 15:, 15:], torch.ones(1), atol=1e-5)


@pytest.mark.parametrize("crop_size", [227, 224])
def test_warp_matches_per_window_resize(crop_size):
    """Bilinear warp of each clipped region (cv2.resize INTER_LINEAR, as Caffe's window data layer
    and R-CNN's imresize without antialiasing), placed in a zero crop."""
    rng = np.random.default_rng(crop_size)
    height, width = 70, 90
    image = rng.normal(size=(3, height, width)).astype(np.float32)
    boxes = random_boxes(rng, 40, height, width)
    source, placement = rcnn_crop_boxes(boxes, (height, width), crop_size, 16)
    crops = warp_crops(torch.from_numpy(image), source, placement, crop_size).numpy()
    assert crops.shape == (len(boxes), 3, crop_size, crop_size)
    for crop, (x0, y0, x1, y1), (px, py, pw, ph) in zip(crops, source, placement):
        region = np.ascontiguousarray(image[:, y0:y1 + 1, x0:x1 + 1].transpose(1, 2, 0))
        expected = np.zeros((crop_size, crop_size, 3), np.float32)
        expected[py:py + ph, px:px + pw] = cv2.resize(region, (int(pw), int(ph)), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(crop.transpose(1, 2, 0), expected, atol=2e-4)


@pytest.fixture(scope="module")
def zf5():
    torch.manual_seed(0)
    return build_backbone("zf5", pretrained=False)


def test_rcnn_features_match_a_per_window_reference(zf5):
    """Crop + warp (cv2), conv, then each level by adaptive max pooling, whose bins are §3's."""
    config = FeatureConfig(mode="rcnn", backbone="zf5", rcnn_batch_size=2)
    extractor = build_extractor(zf5, config)
    assert isinstance(extractor, RCNNFeatureExtractor)
    assert extractor.output_dim == SPPFeatureExtractor(zf5, config).output_dim == 256 * 50
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 119, 89], [10, 20, 40, 60], [100, 70, 119, 89], [30, 5, 31, 6], [50, 0, 110, 30]], float)
    maps, size = extractor.maps("any", lambda: image, None)
    assert size == (90, 120) and len(maps) == 1 and maps[0].shape == (3, 90, 120)
    pooled = extractor.pool(maps, boxes, size)
    assert pooled.shape == (5, 12800) and pooled.dtype == torch.float32

    normalised = maps[0].numpy().transpose(1, 2, 0)
    source, placement = rcnn_crop_boxes(boxes, size, 227, 16)
    for row, (x0, y0, x1, y1), (px, py, pw, ph) in zip(pooled, source, placement):
        crop = np.zeros((227, 227, 3), np.float32)
        crop[py:py + ph, px:px + pw] = cv2.resize(np.ascontiguousarray(normalised[y0:y1 + 1, x0:x1 + 1]),
                                                  (int(pw), int(ph)), interpolation=cv2.INTER_LINEAR)
        with torch.no_grad():
            fmap = zf5(torch.from_numpy(crop.transpose(2, 0, 1))[None])
        expected = torch.cat([F.adaptive_max_pool2d(fmap, n).flatten() for n in (1, 2, 3, 6)])
        torch.testing.assert_close(row, expected, rtol=1e-3, atol=1e-3)
    # the batch size is a speed setting only; scale_index has no effect in R-CNN mode
    one_batch = RCNNFeatureExtractor(zf5, FeatureConfig(mode="rcnn", rcnn_batch_size=64)).pool(maps, boxes, size)
    torch.testing.assert_close(one_batch, pooled, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(extractor.pool(maps, boxes, size, scale_index=torch.zeros(5, dtype=torch.int64)),
                               pooled, rtol=0, atol=0)
    assert extractor.pool(maps, np.zeros((0, 4)), size).shape == (0, 12800)
    # detection crops each distinct box once: repeats (as the benchmark pads with) share a row
    repeated = np.concatenate([boxes, boxes[[3, 0, 3]], boxes[[1]] + 1])
    distinct, rows = extractor.pool_distinct(maps, repeated, size)
    assert len(distinct) == 6 and rows.tolist() == [0, 1, 2, 3, 4, 3, 0, 3, 5]
    torch.testing.assert_close(distinct[rows][:5], pooled, rtol=1e-4, atol=1e-4)


def test_rcnn_maps_only_read_the_image(zf5, monkeypatch):
    extractor = RCNNFeatureExtractor(zf5, FeatureConfig(mode="rcnn"))
    monkeypatch.setattr(zf5, "forward", lambda x: pytest.fail("the conv layers ran for maps()"))
    calls = []
    maps, size = extractor.maps("k", lambda: calls.append(1) or np.zeros((20, 30, 3), np.uint8), None)
    assert calls == [1] and size == (20, 30) and maps[0].shape == (3, 20, 30)


@pytest.fixture
def one_thread():
    """Small conv batches gain nothing from a second thread, and lose a lot on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_rcnn_mode_trains_tests_and_detects_end_to_end(tmp_path, one_thread):
    voc = make_demo_dataset(tmp_path / "data", num_trainval=3, num_test=2, seed=1)
    small = ["--max-proposals", "8", "--workers", "1", "--quiet", "--device", "cpu"]
    work = tmp_path / "train"
    # pool5: fine-tuning reads cached conv maps, which R-CNN mode has none of
    assert main(["train", "--data", str(voc), "--work-dir", str(work), "--mode", "rcnn", "--feature-layer", "pool5",
                 *small]) == 0
    model = torch.load(work / "model.pt", weights_only=True)
    assert model["config"]["features"]["mode"] == "rcnn"
    out = tmp_path / "test"
    assert main(["test", "--data", str(voc), "--model", str(work / "model.pt"), "--out", str(out),
                 "--workers", "1", "--quiet", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    classes = tuple(metrics["ap"])
    assert set(classes) <= {"circle", "cross", "square", "star", "triangle"}
    image_id = (voc / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    detected = tmp_path / "detect"
    assert main(["detect", str(voc / "JPEGImages" / f"{image_id}.jpg"), "--model", str(work / "model.pt"),
                 "--out", str(detected), "--quiet", "--device", "cpu", "--workers", "1", "--min-prob", "0"]) == 0
    assert (detected / "predictions.jsonl").read_text().count("\n") == 1
    # `detect` and `test` are two paths through the R-CNN features: the same detections of the image,
    # up to the result files' rounding (scores to 6 decimals, boxes to 1)
    record = json.loads((detected / "predictions.jsonl").read_text())
    by_detect = sorted((d["label"], d["score"], *d["box"]) for d in record["detections"])
    results = read_devkit_results(out / "results", "test", classes)
    by_test = sorted((name, score, *box) for name, dets in zip(classes, results)
                     for image, score, box in zip(dets.image_ids, dets.scores, dets.boxes.tolist()) if image == image_id)
    assert by_detect and [d[0] for d in by_detect] == [t[0] for t in by_test]
    np.testing.assert_allclose([d[1:] for d in by_detect], [t[1:] for t in by_test], rtol=0, atol=0.06)
