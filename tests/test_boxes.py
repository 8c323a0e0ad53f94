import numpy as np
import pytest
import torch
import torchvision

from detection.core import boxes as B


def random_boxes(rng, n, size=100):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_box_iou_matches_torchvision_with_inclusive_extents():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 30), random_boxes(rng, 20)
    shift = np.array([0, 0, 1, 1])
    expected = torchvision.ops.box_iou(torch.tensor(a + shift), torch.tensor(b + shift)).numpy()
    np.testing.assert_allclose(B.box_iou(a, b), expected, rtol=1e-10)


def test_box_iou_hand_computed_half_overlap():
    # inclusive: [0,0,9,9] has area 100, [0,0,9,19] area 200, intersection 100
    assert B.box_iou([[0, 0, 9, 9]], [[0, 0, 9, 19]])[0, 0] == pytest.approx(0.5)
    assert B.box_iou([[0, 0, 9, 9]], [[10, 0, 19, 9]])[0, 0] == 0.0
    assert B.box_area(np.array([[0, 0, 0, 0]]))[0] == 1


def slow_nms(boxes, scores, thresh):
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if B.box_iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0] <= thresh]
    return np.array(keep)


def test_nms_matches_slow_reference():
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 200, size=60)
    scores = rng.permutation(200).astype(np.float64)
    for thresh in (0.3, 0.5, 0.7):
        np.testing.assert_array_equal(np.sort(B.nms(boxes, scores, thresh)), np.sort(slow_nms(boxes, scores, thresh)))


def test_batched_nms_keeps_overlapping_boxes_of_other_classes():
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 9, 9.0]])
    keep = B.batched_nms(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), 0.3)
    assert sorted(keep.tolist()) == [0, 2]
    assert len(B.nms(np.zeros((0, 4)), np.zeros(0), 0.3)) == 0


def test_regression_targets_hand_computed_and_inverse():
    proposal = np.array([[0, 0, 9, 19.0]])  # w 10, h 20, centre (5, 10)
    gt = np.array([[5, 0, 24, 19.0]])  # w 20, h 20, centre (15, 10)
    t = B.bbox_regression_targets(proposal, gt)
    np.testing.assert_allclose(t, [[1.0, 0.0, np.log(2.0), 0.0]])
    np.testing.assert_allclose(B.apply_bbox_deltas(proposal, t), gt)
    rng = np.random.default_rng(2)
    p, g = random_boxes(rng, 50), random_boxes(rng, 50)
    np.testing.assert_allclose(B.apply_bbox_deltas(p, B.bbox_regression_targets(p, g)), g, atol=1e-9)


def test_clip_flip_small_unique():
    boxes = np.array([[-5, -5, 200, 50], [10, 10, 20, 20], [10, 10, 20, 20], [0, 0, 3, 30]], dtype=float)
    np.testing.assert_array_equal(B.clip_boxes(boxes, 100, 40)[0], [0, 0, 99, 39])
    flipped = B.flip_boxes(boxes[1:2], 100)
    np.testing.assert_array_equal(flipped, [[79, 10, 89, 20]])
    np.testing.assert_array_equal(B.flip_boxes(flipped, 100), boxes[1:2])
    np.testing.assert_array_equal(B.remove_small_boxes(boxes, 5), [0, 1, 2])
    np.testing.assert_array_equal(B.unique_boxes(boxes), [0, 1, 3])


def test_max_overlaps_without_gt():
    iou, idx = B.max_overlaps(np.zeros((3, 4)), np.zeros((0, 4)))
    assert iou.tolist() == [0, 0, 0] and idx.tolist() == [-1, -1, -1]
