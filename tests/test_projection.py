"""Scale choice and window projection (recipe §2, §4): hand-computed cases and a scalar reference."""
import math

import numpy as np
import pytest
import torch

from detection.core.config import FIVE_SCALES
from features.projection import choose_scales, image_scale_factors, project_boxes

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def boxes_on(device, rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype, device=device).reshape(-1, 4)


def project_one(box, stride, c0, map_size, rule, offset):
    """One box, straight from the formulas in the docstring of project_boxes, with Python ints."""
    height, width = map_size
    out = []
    for lo, hi, size in ((box[0], box[2], width), (box[1], box[3], height)):
        if rule == "paper":
            a = math.floor((lo - c0) / stride) + 1
            b = math.ceil((hi - c0) / stride) - 1
        else:
            a = math.floor((lo - c0 + offset) / stride + 0.5)
            b = math.ceil((hi - c0 - offset) / stride - 0.5)
        if a > b:
            a = b = (a + b) // 2
        out.append((min(max(a, 0), size - 1), min(max(b, 0), size - 1)))
    (x0, x1), (y0, y1) = out
    return [x0, y0, x1, y1]


def test_image_scale_factors():
    factors = image_scale_factors(375, 500, FIVE_SCALES)
    assert factors.shape == (5,)
    np.testing.assert_allclose(factors.numpy(), np.array(FIVE_SCALES) / 375)
    assert float(image_scale_factors(600, 400, (688,))[0]) == pytest.approx(688 / 400)


@pytest.mark.parametrize("device", DEVICES)
def test_project_paper_rule_hand_computed(device):
    # S = 16, c0 = 0: x0' = floor(x0/16) + 1, x1' = ceil(x1/16) - 1
    boxes = boxes_on(device, [[0, 0, 100, 50],  # (1, 1, ceil(6.25)-1 = 6, ceil(3.125)-1 = 3)
                              [32, 16, 64, 47.5]])  # edges on cell centres are excluded: (3, 2, 3, 2)
    cells = project_boxes(boxes, 16, 0.0, (20, 20), rule="paper")
    assert cells.dtype == torch.int64 and cells.device.type == device
    assert cells.tolist() == [[1, 1, 6, 3], [3, 2, 3, 2]]
    # ZF-5's c0 = 20 (0-based): x0' = floor((x0-20)/16) + 1, x1' = ceil((x1-20)/16) - 1
    cells = project_boxes(boxes_on(device, [[20, 36, 200, 99]]), 16, 20.0, (20, 20), rule="paper")
    assert cells.tolist() == [[1, 2, 11, 4]]  # x1': ceil(11.25)-1, y0': floor(1)+1, y1': ceil(4.9375)-1


@pytest.mark.parametrize("device", DEVICES)
def test_project_official_rule_hand_computed(device):
    # S = 16, c0 = 20, o = 6.5: x0' = floor((x0 - 13.5)/16 + 0.5), x1' = ceil((x1 - 26.5)/16 - 0.5)
    boxes = boxes_on(device, [[100, 60, 300, 200],
                              [0, 0, 100, 50]])
    cells = project_boxes(boxes, 16, 20.0, (30, 30), rule="official", offset=6.5)
    # x0: floor(86.5/16 + .5) = floor(5.906) = 5; y0: floor(46.5/16 + .5) = floor(3.406) = 3
    # x1: ceil(273.5/16 - .5) = ceil(16.59) = 17; y1: ceil(173.5/16 - .5) = ceil(10.34) = 11
    # second: x0 = floor(-0.34) = -1 -> clamped 0; x1 = ceil(4.09) = 5; y1 = ceil(0.97) = 1
    assert cells.tolist() == [[5, 3, 17, 11], [0, 0, 5, 1]]
    # c0 = 0: x0' = floor((x0 + 6.5)/16 + 0.5); an edge half-way between centres rounds up (left)
    # and down (right): (1.5 + 6.5)/16 + .5 = 1 and (30.5 - 6.5)/16 - .5 = 1
    cells = project_boxes(boxes_on(device, [[1.5, 1.5, 30.5, 30.5]]), 16, 0.0, (30, 30), rule="official")
    assert cells.tolist() == [[1, 1, 1, 1]]


@pytest.mark.parametrize("device", DEVICES)
def test_project_small_window_collapses_to_floor_of_midpoint(device):
    # paper, S = 16, c0 = 0, x 40..44: x0' = floor(2.5)+1 = 3 > x1' = ceil(2.75)-1 = 2 -> floor(2.5) = 2;
    # y 5..10: 1 > 0 -> 0
    cells = project_boxes(boxes_on(device, [[40, 5, 44, 10]]), 16, 0.0, (10, 10), rule="paper")
    assert cells.tolist() == [[2, 0, 2, 0]]
    # official, c0 = 0, x 40..44: x0' = floor(46.5/16 + .5) = 3 > x1' = ceil(37.5/16 - .5) = 2 -> 2
    # (the official 1-based (4 + 3) / 2 = 3 in C integer division, i.e. cell 2 0-based)
    cells = project_boxes(boxes_on(device, [[40, 40, 44, 60]]), 16, 0.0, (10, 10), rule="official")
    assert cells.tolist() == [[2, 3, 2, 3]]  # y 40..60: floor(3.41) = 3, ceil(2.84) = 3


@pytest.mark.parametrize("device", DEVICES)
def test_project_clamps_to_the_map(device):
    boxes = boxes_on(device, [[-100, -50, 1000, 2000], [900, 900, 990, 995], [-90, -90, -60, -60]])
    for rule in ("paper", "official"):
        cells = project_boxes(boxes, 16, 20.0, (8, 12), rule=rule)  # H' = 8, W' = 12
        assert cells[0].tolist() == [0, 0, 11, 7]
        assert cells[1].tolist() == [11, 7, 11, 7]
        assert cells[2].tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rule", ["paper", "official"])
@pytest.mark.parametrize("stride, c0", [(16, 0.0), (16, 20.0), (12, 5.5), (32, 15.5)])
def test_project_matches_scalar_reference(device, rule, stride, c0):
    rng = np.random.default_rng(stride + int(c0))
    # a half-pixel grid puts many edges exactly on cell centres and half-way between them
    xy = rng.integers(-60, 900, (400, 2)) / 2
    wh = rng.integers(0, 500, (400, 2)) / 2
    boxes = np.concatenate([xy, xy + wh], axis=1)
    map_size = (17, 23)
    cells = project_boxes(torch.tensor(boxes, device=device), stride, c0, map_size, rule=rule, offset=6.5)
    expected = [project_one(b.tolist(), stride, c0, map_size, rule, 6.5) for b in boxes]
    assert cells.cpu().tolist() == expected
    assert (cells[:, :2] <= cells[:, 2:]).all()


def test_project_empty_and_unknown_rule():
    assert project_boxes(torch.zeros(0, 4), 16, 0.0, (5, 5)).shape == (0, 4)
    with pytest.raises(ValueError, match="projection rule"):
        project_boxes(torch.zeros(1, 4), 16, 0.0, (5, 5), rule="nearest")


@pytest.mark.parametrize("device", DEVICES)
def test_choose_scales_hand_computed(device):
    # 375 × 500 image (min side 375), five scales
    boxes = boxes_on(device, [[0, 0, 99, 99], [0, 0, 399, 299]])
    # paper: the 100×100 window is 100·s/375 px on a side: 128, 153.6, 183.5, 230.4, 320 -> 230.4 (864);
    # official: round(208·375/100) = 780 -> |688-780| = 92 > |864-780| = 84 -> 864.
    # The 400×300 window is already larger than the target at 480 under both rules.
    for rule in ("paper", "official"):
        chosen = choose_scales(boxes, (375, 500), FIVE_SCALES, rule=rule)
        assert chosen.dtype == torch.int64 and chosen.device.type == device
        assert chosen.tolist() == [3, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_choose_scales_paper_and_official_differ(device):
    # min side 500, scales (480, 688), a 180×180 window: scaled sides 172.8 and 247.68.
    # paper, areas: |172.8² - 224²| = 20316 > |247.68² - 224²| = 11169 -> 688;
    # official: expected round(208·500/180) = 578, |480-578| = 98 < |688-578| = 110 -> 480.
    boxes = boxes_on(device, [[10, 10, 189, 189]])
    assert choose_scales(boxes, (500, 700), (480, 688), rule="paper").tolist() == [1]
    assert choose_scales(boxes, (500, 700), (480, 688), rule="official").tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
def test_choose_scales_official_rounds_expected_scale_and_breaks_ties_low(device):
    # 140×156 window, min side 375: 208·375/sqrt(21840) = 527.80, rounded to 528 (spm_expected_scale.m),
    # which is 48 from both 480 and 576: the tie goes to the smaller index, in either order
    boxes = boxes_on(device, [[0, 0, 139, 155]])
    assert choose_scales(boxes, (375, 500), (480, 576), rule="official").tolist() == [0]
    assert choose_scales(boxes, (375, 500), (576, 480), rule="official").tolist() == [0]
    # 208·375/100 = 780 exactly, 4 from both 776 and 784
    boxes = boxes_on(device, [[0, 0, 99, 99]])
    assert choose_scales(boxes, (375, 500), (784, 776), rule="official").tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
def test_choose_scales_single_scale_and_errors(device):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, (50, 2))
    boxes = torch.tensor(np.concatenate([xy, xy + rng.uniform(0, 200, (50, 2))], axis=1), device=device)
    for rule in ("paper", "official"):
        assert choose_scales(boxes, (375, 500), (688,), rule=rule).tolist() == [0] * 50
    assert choose_scales(boxes[:0], (375, 500), FIVE_SCALES).shape == (0,)
    with pytest.raises(ValueError, match="scale rule"):
        choose_scales(boxes, (375, 500), FIVE_SCALES, rule="closest")
