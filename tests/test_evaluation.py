"""VOC evaluation (devkit AP rules, both metrics) and devkit result files."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from detection.evaluation.voc_eval import (
    ELEVEN_POINTS,
    SIZE_RANGES,
    evaluate_by_class,
    evaluate_by_size,
    evaluate_class,
    evaluate_detections,
    format_ap_table,
    format_size_table,
    voc_ap,
)
from detection.core.detections import ClassDetections, Detections, by_class
from detection.data.devkit import read_devkit_results, write_devkit_results
from detection.data.voc import VOCDataset
from detection.evaluation.results import evaluate_results

METRICS = ("voc07", "voc10")


# ---------------------------------------------------------------- slow reference: a port of VOCevaldet.m

def matlab_colon_0_01_1():
    """MATLAB's 0:0.1:1, written out as its colon operator computes it: up from 0, then down from 1."""
    return [0 + k * 0.1 for k in range(6)] + [1 - k * 0.1 for k in range(4, -1, -1)]


def textread(result_text):
    """``[ids,confidence,b1,b2,b3,b4]=textread(file,'%s %f %f %f %f %f')`` of a class's result file."""
    fields = [line.split() for line in result_text.splitlines() if line.strip()]
    return [f[0] for f in fields], [float(f[1]) for f in fields], [[float(v) for v in f[2:6]] for f in fields]


def vocevaldet_port(gt_by_image, ids, confidence, BB, use_07=True):
    """VOCevaldet.m (VOC2007/2012 devkit), statement by statement, for one class.

    ``gt_by_image``: image id -> (boxes (G, 4), difficult (G,)) of the class, every image of the
    split (its keys are ``gtids``); ``ids``, ``confidence``, ``BB``: the result file's columns in
    file order (:func:`textread`). MATLAB's sort is stable (Python's ``sorted`` too), and its max
    skips NaN (np.nanmax / np.fmax). VOCap.m for the VOC2010+ metric. Returns (rec, prec, ap).
    """
    gtids = list(gt_by_image)
    npos = 0
    gt = []
    for image_id in gtids:
        boxes, difficult = gt_by_image[image_id]
        gt.append({"BB": [list(map(float, b)) for b in boxes], "diff": [bool(d) for d in difficult],
                   "det": [False] * len(boxes)})
        npos = npos + sum(not d for d in gt[-1]["diff"])
    si = sorted(range(len(confidence)), key=lambda d: -confidence[d])
    ids = [ids[d] for d in si]
    BB = [BB[d] for d in si]
    nd = len(confidence)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        i = gtids.index(ids[d])
        bb = BB[d]
        ovmax = -np.inf
        for j, bbgt in enumerate(gt[i]["BB"]):
            bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
            iw = bi[2] - bi[0] + 1
            ih = bi[3] - bi[1] + 1
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) \
                    - iw * ih
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax = ov
                    jmax = j
        if ovmax >= 0.5:
            if not gt[i]["diff"][jmax]:
                if not gt[i]["det"][jmax]:
                    tp[d] = 1
                    gt[i]["det"][jmax] = True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        rec = tp / npos
        prec = tp / (fp + tp)
    if use_07:
        ap = 0
        for t in matlab_colon_0_01_1():
            selected = prec[rec >= t]
            p = np.fmax.reduce(selected) if len(selected) else 0  # max skips NaN: NaN only if all are
            ap = ap + p / 11
        return rec, prec, ap
    mrec = np.concatenate(([0], rec, [1]))
    mpre = np.concatenate(([0], prec, [0]))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = np.fmax(mpre[i], mpre[i + 1])
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return rec, prec, np.sum((mrec[i] - mrec[i - 1]) * mpre[i])


def random_problem(rng, num_images=12):
    """GT with some difficult boxes, and detections: jittered GT copies (several per box) plus clutter.

    Integer coordinates and scores on a 0.05 grid make exact IoU and score ties common.
    """
    gt, ids, boxes = {}, [], []
    for i in range(num_images):
        n = rng.integers(0, 5)
        xy = rng.integers(0, 80, size=(n, 2))
        wh = rng.integers(5, 40, size=(n, 2))
        gt_boxes = np.hstack([xy, xy + wh]).astype(float)
        gt[f"im{i}"] = (gt_boxes, rng.random(n) < 0.2)
        for box in gt_boxes:
            for _ in range(rng.integers(0, 3)):
                boxes.append(box + rng.integers(-4, 5, size=4))
                ids.append(f"im{i}")
        for _ in range(rng.integers(0, 4)):
            xy = rng.integers(0, 100, size=2)
            boxes.append(np.concatenate([xy, xy + rng.integers(3, 40, size=2)]).astype(float))
            ids.append(f"im{i}")
    boxes = np.array(boxes, dtype=float).reshape(-1, 4)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    scores = np.round(rng.random(len(ids)) * 20) / 20
    return np.array(ids), scores, boxes, gt


@pytest.mark.parametrize("seed", range(25))
def test_matches_the_devkit_port_on_random_data(seed):
    ids, scores, boxes, gt = random_problem(np.random.default_rng(seed))
    for metric in METRICS:
        ap, rec, prec = evaluate_class(ids, scores, boxes, gt, metric=metric)
        ref_rec, ref_prec, ref_ap = vocevaldet_port(gt, list(ids), list(scores), boxes.tolist(), use_07=metric == "voc07")
        np.testing.assert_array_equal(rec, ref_rec)
        # where only difficult boxes were hit so far the devkit's precision is 0/0, here 0 (module doc)
        np.testing.assert_array_equal(prec, np.nan_to_num(ref_prec, nan=0.0))
        assert ap == pytest.approx(0.0 if np.isnan(ref_ap) else ref_ap, rel=0, abs=1e-15)


# ---------------------------------------------------------------- voc_ap by hand

# The curve of five detections TP, FP, TP, FP, FP against 4 positives:
#   cumulative TP 1 1 2 2 2, FP 0 1 1 2 3
#   recall    .25  .25  .5   .5   .5
#   precision 1    1/2  2/3  1/2  2/5
# voc07: t = 0, .1, .2 reach recall .25 -> max precision 1; t = .3, .4, .5 reach only the
#        recall-.5 points -> 2/3; t = .6 ... 1 unreached -> 0. AP = (3 * 1 + 3 * 2/3) / 11 = 5/11.
# voc10: envelope 1 up to recall .25, then 2/3 up to .5, then 0. AP = .25 * 1 + .25 * 2/3 = 5/12.
HAND_RECALL = np.array([0.25, 0.25, 0.5, 0.5, 0.5])
HAND_PRECISION = np.array([1, 1 / 2, 2 / 3, 1 / 2, 2 / 5])
HAND_AP = {"voc07": 5 / 11, "voc10": 5 / 12}


@pytest.mark.parametrize("metric", METRICS)
def test_voc_ap_by_hand(metric):
    assert voc_ap(HAND_RECALL, HAND_PRECISION, metric) == pytest.approx(HAND_AP[metric], abs=1e-12)


def test_voc_ap_envelope_and_empty_curve():
    # a late precision rise lifts the envelope before it: recall .5 at precision 1/2, then 1 at 2/3
    #   voc10: envelope 2/3 over [0, 1] -> 2/3; voc07: every t reaches the last point -> 2/3
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1 / 2, 1 / 3, 2 / 3])
    for metric in METRICS:
        assert voc_ap(recall, precision, metric) == pytest.approx(2 / 3, abs=1e-12)
        assert voc_ap([], [], metric) == 0.0
    with pytest.raises(ValueError, match="unknown AP metric"):
        voc_ap(recall, precision, "coco")
    with pytest.raises(ValueError, match="differ"):
        voc_ap(recall, precision[:2])


def test_eleven_point_thresholds_are_matlabs():
    # MATLAB's 0:0.1:1 counts the first half up from 0 and the second half down from 1
    assert ELEVEN_POINTS.tolist() == [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    # 3 of 10 positives found, all precise: recall 3/10 = 0.3 misses t = 0.30000000000000004 (the issue's
    # reproducer: devkit 3/11 = 0.2727, not 4/11)
    recall, precision = np.arange(1, 4) / 10, np.ones(3)
    assert voc_ap(recall, precision, "voc07") == 3 / 11
    # 6 and 7 of 10 reach t = 0.6 and 0.7 as in MATLAB (np.arange(11) * 0.1 would hold 0.6000000000000001
    # and 0.7000000000000001 and give 6/11 and 7/11)
    assert voc_ap(np.arange(1, 7) / 10, np.ones(6), "voc07") == pytest.approx(7 / 11, abs=1e-15)
    assert voc_ap(np.arange(1, 8) / 10, np.ones(7), "voc07") == pytest.approx(8 / 11, abs=1e-15)


def test_ten_positives_recall_three_tenths_scores_like_the_devkit():
    gt = {"a": (np.array([square(20 * i) for i in range(10)], dtype=float), np.zeros(10, dtype=bool))}
    boxes = np.array([square(0), square(20), square(40)], dtype=float)
    ap, recall, _ = evaluate_class(["a"] * 3, [0.9, 0.8, 0.7], boxes, gt)
    assert recall[-1] == 0.3 and ap == pytest.approx(0.2727, abs=1e-4) and ap == 3 / 11


# ---------------------------------------------------------------- evaluate_class by hand

def square(x, y=0, size=10):
    return [x, y, x + size - 1, y + size - 1]


def test_hand_example_with_duplicate_and_image_without_gt():
    # image a: four GT squares; b: none. Score order: hit g1 (TP), g1 again (FP, duplicate),
    # hit g2 (TP), far box in a (FP), box in b (FP) -> the TP FP TP FP FP curve of HAND_AP.
    gt = {"a": (np.array([square(0), square(20), square(40), square(60)], dtype=float), np.zeros(4, dtype=bool)),
          "b": (np.zeros((0, 4)), np.zeros(0, dtype=bool))}
    dets = [("b", 0.5, square(0)), ("a", 0.8, square(1)), ("a", 0.6, square(100, 100)),
            ("a", 0.9, square(0)), ("a", 0.7, square(20))]  # shuffled: sorting is the evaluator's job
    ids, scores, boxes = zip(*dets)
    for metric in METRICS:
        ap, recall, precision = evaluate_class(np.array(ids), np.array(scores), np.array(boxes, dtype=float), gt,
                                               metric=metric)
        assert ap == pytest.approx(HAND_AP[metric], abs=1e-12)
        np.testing.assert_allclose(recall, HAND_RECALL)
        np.testing.assert_allclose(precision, HAND_PRECISION)
    # an image missing from the ground truth altogether is an image without GT, too
    del gt["b"]
    assert evaluate_class(np.array(ids), np.array(scores), np.array(boxes, dtype=float), gt)[0] == \
        pytest.approx(HAND_AP["voc07"], abs=1e-12)


def one_box(box):
    return np.array([box], dtype=float)


@pytest.mark.parametrize("metric", METRICS)
def test_iou_exactly_half_is_a_match(metric):
    gt = {"a": (one_box([0, 0, 9, 9]), np.array([False]))}
    # inclusive areas: 10x10 GT inside a 10x20 detection -> 100 / 200 = 0.5 exactly
    assert evaluate_class(["a"], [1.0], one_box([0, 0, 9, 19]), gt, metric=metric)[0] == 1.0
    # one pixel row more: 100 / 210 < 0.5 -> a false positive
    ap, recall, precision = evaluate_class(["a"], [1.0], one_box([0, 0, 9, 20]), gt, metric=metric)
    assert ap == 0.0 and recall.tolist() == [0.0] and precision.tolist() == [0.0]


@pytest.mark.parametrize("metric", METRICS)
def test_difficult_boxes_are_neither_rewarded_nor_counted(metric):
    gt = {"a": (np.array([square(0), square(20)], dtype=float), np.array([False, True]))}
    # the top detection hits the difficult box: ignored (precision 0, not 0/0, at that point);
    # the second finds the only positive: recall 1 at precision 1 -> AP 1 in both metrics
    ap, recall, precision = evaluate_class(["a", "a"], [0.9, 0.8], np.array([square(20), square(0)], dtype=float),
                                           gt, metric=metric)
    assert ap == 1.0 and recall.tolist() == [0.0, 1.0] and precision.tolist() == [0.0, 1.0]
    # were that box not difficult, the first detection would be a TP and npos 2: recall [.5, 1]
    not_difficult = {"a": (gt["a"][0], np.array([False, False]))}
    _, recall, _ = evaluate_class(["a", "a"], [0.9, 0.8], np.array([square(20), square(0)], dtype=float),
                                  not_difficult, metric=metric)
    assert recall.tolist() == [0.5, 1.0]


def test_equal_scores_keep_input_order():
    # as the devkit's stable sort keeps file order: FP then TP -> precision [0, 1/2] -> AP 1/2;
    # TP then FP -> precision [1, 1/2] -> AP 1
    gt = {"a": (one_box(square(0)), np.array([False]))}
    miss_first = np.array([square(50), square(0)], dtype=float)
    assert evaluate_class(["a", "a"], [0.5, 0.5], miss_first, gt)[0] == pytest.approx(0.5, abs=1e-12)
    assert evaluate_class(["a", "a"], [0.5, 0.5], miss_first[::-1], gt)[0] == 1.0


@pytest.mark.parametrize("metric", METRICS)
def test_perfect_detector_and_class_without_positives(metric):
    rng = np.random.default_rng(0)
    ids, _, _, gt = random_problem(rng)
    gt = {k: (b, np.zeros(len(b), dtype=bool)) for k, (b, _) in gt.items()}
    ids = np.concatenate([[k] * len(b) for k, (b, _) in gt.items()])
    boxes = np.concatenate([b for b, _ in gt.values()])
    ap, recall, precision = evaluate_class(ids, rng.random(len(ids)), boxes, gt, metric=metric)
    assert ap == 1.0 and recall[-1] == 1.0 and (precision == 1.0).all()
    # no non-difficult GT: recall is undefined (NaN) and the AP is 0, detections or not
    only_difficult = {"a": (one_box(square(0)), np.array([True]))}
    ap, recall, _ = evaluate_class(["a", "a"], [0.9, 0.8], np.array([square(0), square(30)], dtype=float),
                                   only_difficult, metric=metric)
    assert ap == 0.0 and np.isnan(recall).all()
    ap, recall, precision = evaluate_class(np.zeros(0, dtype=str), np.zeros(0), np.zeros((0, 4)), {}, metric=metric)
    assert ap == 0.0 and recall.shape == precision.shape == (0,)


def test_evaluate_class_rejects_bad_arguments():
    gt = {"a": (one_box(square(0)), np.array([False]))}
    with pytest.raises(ValueError, match="unknown AP metric"):
        evaluate_class(["a"], [1.0], one_box(square(0)), gt, metric="voc12")
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_class(["a"], [1.0], one_box(square(0)), gt, iou_threshold=0.0)
    with pytest.raises(ValueError, match="lengths differ"):
        evaluate_class(["a", "a"], [1.0], one_box(square(0)), gt)


# ---------------------------------------------------------------- a tiny VOC dataset

@pytest.fixture
def tiny(tmp_path, write_voc):
    """apple: one box (found); pear: one positive (found after a miss) and one difficult box."""
    root = write_voc(tmp_path / "VOC2007", {
        "000001": [("apple", (11, 11, 30, 30)), ("pear", (40, 5, 60, 40), 1)],
        "000002": [("pear", (6, 6, 25, 25))],
        "000003": [],
    })
    dataset = VOCDataset(root, "test")
    detections = {
        # 0-based: the 1-based (11, 11, 30, 30) is (10, 10, 29, 29)
        "000001": Detections(np.array([[10, 10, 29, 29], [0, 30, 10, 40]], dtype=float), np.array([0.9, 0.8]),
                             np.array([0, 1])),
        "000002": Detections(np.array([[5, 5, 24, 24]], dtype=float), np.array([0.7]), np.array([1])),
    }
    return dataset, detections


@pytest.mark.parametrize("metric", METRICS)
def test_evaluate_detections_on_a_tiny_dataset(tiny, metric):
    dataset, detections = tiny
    assert dataset.classes == ("apple", "pear")
    result = evaluate_detections(dataset, detections, metric=metric)
    # pear: miss (0.8) then hit (0.7) -> precision [0, 1/2], recall [0, 1] -> 1/2 in both metrics
    assert result == {"metric": metric, "mAP": pytest.approx(0.75), "ap": {"apple": 1.0, "pear": pytest.approx(0.5)}}
    assert json.loads(json.dumps(result))["ap"]["apple"] == 1.0
    assert evaluate_detections(dataset, {}, metric=metric) == {"metric": metric, "mAP": 0.0,
                                                               "ap": {"apple": 0.0, "pear": 0.0}}


def test_evaluate_detections_rejects_foreign_images_and_labels(tiny):
    dataset, detections = tiny
    with pytest.raises(ValueError, match="not in split 'test'.*'999999'"):
        evaluate_detections(dataset, {**detections, "999999": Detections.empty()})
    with pytest.raises(ValueError, match="label 2 of image '000002'"):
        evaluate_detections(dataset, {"000002": Detections(np.zeros((1, 4)), np.ones(1), np.array([2]))})


def test_format_ap_table(tiny):
    dataset, detections = tiny
    table = format_ap_table(evaluate_detections(dataset, detections))
    lines = table.splitlines()
    assert lines[0].split() == ["class", "AP", "(%)"]
    assert lines[2].split() == ["apple", "100.0"] and lines[3].split() == ["pear", "50.0"]
    assert lines[-1].split() == ["mAP", "(voc07)", "75.0"]
    assert len({len(line) for line in lines}) == 1  # right-aligned numbers end in one column


# ---------------------------------------------------------------- devkit result files

def test_devkit_file_lines_are_one_based(tmp_path, tiny):
    dataset, detections = tiny
    paths = write_devkit_results(tmp_path, "test", dataset.classes, detections)
    assert [p.name for p in paths] == ["comp4_det_test_apple.txt", "comp4_det_test_pear.txt"]
    assert paths[0].read_text() == "000001 0.900000 11.0 11.0 30.0 30.0\n"
    assert paths[1].read_text() == "000001 0.800000 1.0 31.0 11.0 41.0\n000002 0.700000 6.0 6.0 25.0 25.0\n"
    assert not list(tmp_path.glob(".*.tmp"))
    # every class gets a file, empty without detections
    paths = write_devkit_results(tmp_path / "none", "val", ("a", "b"), {}, prefix="comp3_det")
    assert [(p.name, p.read_text()) for p in paths] == [("comp3_det_val_a.txt", ""), ("comp3_det_val_b.txt", "")]


def test_devkit_literal_file_is_read_zero_based(tmp_path):
    (tmp_path / "comp4_det_test_pear.txt").write_text("img7 0.5 1 1 10.5 20\n\nimg2 -1.25 3 4 5 6\n")
    # no apple file: an empty class
    apple, pear = read_devkit_results(tmp_path, "test", ("apple", "pear"))
    assert len(apple) == 0 and apple.boxes.shape == (0, 4)
    assert pear.image_ids.tolist() == ["img7", "img2"]  # file order
    np.testing.assert_array_equal(pear.boxes, [[0, 0, 9.5, 19], [2, 3, 4, 5]])
    np.testing.assert_array_equal(pear.scores, [0.5, -1.25])


def test_devkit_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    classes = ("apple", "pear", "plum")
    detections = {}
    for i in range(6):
        n = rng.integers(0, 8)
        xy = rng.uniform(0, 300, size=(n, 2))
        detections[f"{i:06d}"] = Detections(np.hstack([xy, xy + rng.uniform(1, 100, size=(n, 2))]),
                                            rng.normal(size=n), rng.integers(0, 3, size=n))
    write_devkit_results(tmp_path, "test", classes, detections)
    back = read_devkit_results(tmp_path, "test", classes)
    # each class's lines: images in the dict's order, each image's detections in their order
    for original, read in zip(by_class(detections, len(classes)), back, strict=True):
        assert read.image_ids.tolist() == original.image_ids.tolist()
        np.testing.assert_allclose(read.scores, original.scores, rtol=0, atol=5e-7 + 1e-12)
        np.testing.assert_allclose(read.boxes, original.boxes, rtol=0, atol=0.05 + 1e-9)
    # nothing is lost when nothing needs rounding
    for dets in detections.values():
        dets.boxes, dets.scores = np.round(dets.boxes), np.round(dets.scores, 3)
    write_devkit_results(tmp_path, "test", classes, detections)
    for original, read in zip(by_class(detections, len(classes)), read_devkit_results(tmp_path, "test", classes)):
        np.testing.assert_array_equal(read.boxes, original.boxes)
        np.testing.assert_array_equal(read.scores, original.scores)


def test_devkit_errors_name_file_and_line(tmp_path):
    path = tmp_path / "comp4_det_test_apple.txt"
    for bad in ("img1 0.5 1 2 3", "img1 high 1 2 3 4", "img1 0.5 1 2 3 4 5"):
        path.write_text(f"img0 0.5 1 2 3 4\n{bad}\n")
        with pytest.raises(ValueError, match=r"comp4_det_test_apple\.txt, line 2"):
            read_devkit_results(tmp_path, "test", ("apple", "pear"))
    with pytest.raises(FileNotFoundError, match="no comp4_det_val_<class>.txt"):
        read_devkit_results(tmp_path, "val", ("apple", "pear"))
    with pytest.raises(ValueError, match="whitespace"):
        write_devkit_results(tmp_path, "test", ("apple",), {"a b": Detections(np.zeros((1, 4)), np.ones(1),
                                                                               np.zeros(1, dtype=np.int64))})
    with pytest.raises(ValueError, match="label 3 of image 'x'"):
        write_devkit_results(tmp_path, "test", ("apple",), {"x": Detections(np.zeros((1, 4)), np.ones(1),
                                                                             np.array([3]))})


# ---------------------------------------------------------------- result files against the devkit port

def random_voc_and_results(write_voc, root, rng, classes=("apple", "pear"), num_images=10):
    """A VOC split of random boxes inside 64x48 images, and devkit result files for it: jittered GT
    copies and clutter, scores on a coarse grid (many ties), coordinates with one decimal, and the
    lines of each file in a random order. Returns the objects by image as the XML holds them."""
    objects = {}
    for i in range(num_images):
        boxes = []
        for _ in range(rng.integers(0, 4)):
            x1, y1 = rng.integers(1, 40), rng.integers(1, 30)
            difficult = int(rng.random() < 0.2)
            boxes.append((str(rng.choice(classes)),
                          (int(x1), int(y1), int(x1 + rng.integers(3, 24)), int(y1 + rng.integers(3, 18))), difficult))
        objects[f"im{i:02d}"] = boxes
    write_voc(root, objects)
    for cls in classes:
        lines = []
        for image_id, objs in objects.items():
            for name, box, _ in objs:
                for _ in range(rng.integers(0, 3) if name == cls else rng.integers(0, 2)):
                    jittered = np.array(box) + np.round(rng.normal(0, 1.5, 4), 1)
                    lines.append((image_id, jittered))
            for _ in range(rng.integers(0, 2)):
                xy = rng.uniform(1, 40, 2)
                lines.append((image_id, np.concatenate([xy, xy + rng.uniform(2, 20, 2)])))
        order = rng.permutation(len(lines))
        (root / f"comp4_det_test_{cls}.txt").write_text("".join(
            f"{lines[k][0]} {rng.integers(0, 5) / 4:.6f} " + " ".join(f"{v:.1f}" for v in lines[k][1]) + "\n"
            for k in order))
    return objects


def class_ground_truth(objects, cls):
    """Image id -> (1-based boxes, difficult flags) of class ``cls``, from the ``write_voc`` fixture's objects."""
    return {image_id: ([box for name, box, *_ in objs if name == cls],
                       [d[0] if d else 0 for name, _, *d in objs if name == cls])
            for image_id, objs in objects.items()}


@pytest.mark.parametrize("seed", range(12))
def test_matches_a_port_of_vocevaldet_on_result_files(tmp_path, write_voc, seed):
    root = tmp_path / "voc"
    objects = random_voc_and_results(write_voc, root, np.random.default_rng(seed))
    dataset = VOCDataset(root, "test", classes=("apple", "pear"))
    for metric in METRICS:
        result = evaluate_results(dataset, root, metric=metric)
        for cls in dataset.classes:
            _, _, expected = vocevaldet_port(class_ground_truth(objects, cls),
                                             *textread((root / f"comp4_det_test_{cls}.txt").read_text()),
                                             use_07=metric == "voc07")
            if np.isnan(expected):  # every detection on a difficult box: the devkit's NaN is 0 here (module doc)
                expected = 0.0
            # equal up to the order of the final sums (voc_ap's docstring)
            assert result["ap"][cls] == pytest.approx(expected, rel=0, abs=1e-15), (cls, metric)


def test_ties_keep_the_class_files_line_order(tmp_path, write_voc):
    # the two-line reproducer: pear's file lists a hit in 000001, then a miss in 000002, both 0.5;
    # the devkit's stable sort keeps that order: precision 1, 1/2 -> AP 1. Reading the files image by
    # image (000002 comes first through apple's file) put the miss first: AP 0.5.
    root = write_voc(tmp_path / "voc", {"000001": [("pear", (11, 11, 30, 30))],
                                       "000002": [("apple", (1, 1, 20, 20))]})
    (root / "comp4_det_test_apple.txt").write_text("000002 0.900000 1.0 1.0 20.0 20.0\n")
    pear = "000001 0.500000 11.0 11.0 30.0 30.0\n000002 0.500000 40.0 5.0 60.0 40.0\n"
    (root / "comp4_det_test_pear.txt").write_text(pear)
    dataset = VOCDataset(root, "test")
    objects = {"000001": [("pear", (11, 11, 30, 30))], "000002": [("apple", (1, 1, 20, 20))]}
    for metric in METRICS:
        assert vocevaldet_port(class_ground_truth(objects, "pear"), *textread(pear), use_07=metric == "voc07")[2] == \
            pytest.approx(1.0, abs=1e-15)
        assert evaluate_results(dataset, root, metric=metric)["ap"] == {"apple": 1.0, "pear": 1.0}


def test_test_metrics_equal_eval_of_the_result_files_it_wrote(tiny, tmp_path, monkeypatch):
    import detection.runs.test as test_run
    from tools.cli import main

    dataset, _ = tiny
    # two pear detections whose scores differ by less than the six written decimals: in memory the miss
    # (0.3000004) ranks first, in the files both read 0.300000 and the hit, listed first, wins the tie
    detections = {"000002": Detections(np.array([[5, 5, 24, 24]], dtype=float), np.array([0.3000001]), np.array([1])),
                  "000001": Detections(np.array([[0, 30, 10, 40]], dtype=float), np.array([0.3000004]), np.array([1]))}
    monkeypatch.setattr(test_run, "detect_dataset", lambda *args, **kwargs: (detections, {}))
    margins_only = SimpleNamespace(calibration=None)  # detection is replaced above: only this is read
    metrics = test_run.test_model(margins_only, dataset, tmp_path / "out", cache=None)
    assert evaluate_detections(dataset, detections)["ap"]["pear"] == pytest.approx(0.5)  # in memory
    assert metrics["ap"]["pear"] == 1.0
    assert main(["eval", "--data", str(dataset.root), "--split", "test", "--results", str(tmp_path / "out" / "results"),
                 "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text()) == json.loads((tmp_path / "out" / "metrics.json").read_text())


def test_evaluate_results_takes_paths_dicts_and_per_class_lists(tiny, tmp_path):
    dataset, detections = tiny
    write_devkit_results(tmp_path, "test", dataset.classes, detections)
    expected = evaluate_detections(dataset, detections)
    assert evaluate_results(dataset, tmp_path) == expected
    assert evaluate_results(dataset, str(tmp_path)) == expected
    assert evaluate_results(dataset, detections) == expected
    assert evaluate_results(dataset, by_class(detections, 2)) == expected
    assert evaluate_results(dataset, detections, metric="coco")["metric"] == "coco"
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_results(dataset, detections, metric="voc12")
    with pytest.raises(ValueError, match="1 classes of detections"):
        evaluate_results(dataset, [ClassDetections.empty()])


def test_bad_result_files_are_one_line_errors_on_the_command_line(tiny, tmp_path, capsys):
    from tools.cli import main

    dataset, _ = tiny
    args = ["eval", "--data", str(dataset.root), "--split", "test", "--results", str(tmp_path)]
    (tmp_path / "comp4_det_test_pear.txt").write_text("000001 0.5 1 2 3 4\n000002 high 1 2 3 4\n")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "comp4_det_test_pear.txt, line 2" in err
    (tmp_path / "comp4_det_test_pear.txt").write_text("000001 0.5 1 2 3 4\n000009 0.5 1 2 3 4\n")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not in split 'test'" in err and "'000009'" in err


# ---------------------------------------------------------------- AP by object size

def size_range_reference(gt_by_image, ids, scores, boxes, area_range, metric):
    """COCOeval's area-range rules on the devkit's loop, one detection at a time: GT outside the range
    is ignored like a difficult box; a detection outside it that is not a true positive is dropped."""
    def area(b):
        return (b[2] - b[0] + 1) * (b[3] - b[1] + 1)

    def iou(a, b):
        iw, ih = min(a[2], b[2]) - max(a[0], b[0]) + 1, min(a[3], b[3]) - max(a[1], b[1]) + 1
        inter = max(iw, 0) * max(ih, 0)
        return inter / (area(a) + area(b) - inter)

    low, high = area_range
    inside = lambda b: low <= area(b) <= high
    ignored = {k: [bool(d) or not inside(b) for b, d in zip(*gt)] for k, gt in gt_by_image.items()}
    taken = {k: [False] * len(gt[0]) for k, gt in gt_by_image.items()}
    npos = sum(not i for flags in ignored.values() for i in flags)
    tp, fp = [], []
    for d in sorted(range(len(scores)), key=lambda d: -scores[d]):
        gt_boxes = gt_by_image.get(ids[d], ([], []))[0]
        overlaps = [iou(boxes[d], g) for g in gt_boxes]
        j = int(np.argmax(overlaps)) if overlaps else -1
        if j >= 0 and overlaps[j] >= 0.5:
            if ignored[ids[d]][j]:
                continue
            if not taken[ids[d]][j]:
                taken[ids[d]][j] = True
                tp.append(1), fp.append(0)
                continue
        if inside(boxes[d]):
            tp.append(0), fp.append(1)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    return voc_ap(tp / npos, tp / np.maximum(tp + fp, 1e-300), metric) if npos else None


@pytest.mark.parametrize("seed", range(10))
def test_ap_by_size_matches_a_one_detection_at_a_time_reference(seed):
    ids, scores, boxes, gt = random_problem(np.random.default_rng(seed))
    boxes = boxes * 3  # areas on both sides of 32² (the problem's boxes are 5-40 px, tripled 15-120)
    gt = {k: (b * 3, d) for k, (b, d) in gt.items()}
    for metric in METRICS:
        for size, area_range in SIZE_RANGES.items():
            expected = size_range_reference(gt, list(ids), list(scores), list(boxes), area_range, metric)
            if expected is None:
                continue
            ap = evaluate_class(ids, scores, boxes, gt, metric=metric, area_range=area_range)[0]
            assert ap == pytest.approx(expected, abs=1e-12), (size, metric)


def test_ap_by_size_by_hand(tmp_path, write_voc):
    # one image with a small (20x20) and a large (100x100) apple; nothing in the other image
    root = write_voc(tmp_path / "VOC2007", {"000001": [("apple", (1, 1, 20, 20)), ("apple", (101, 1, 200, 100))],
                                             "000002": []}, size=(240, 160))
    dataset = VOCDataset(root, "test")
    small_hit, large_hit = [0, 0, 19, 19], [100, 0, 199, 99]
    small_miss, large_miss = [0, 0, 9, 9], [0, 0, 119, 119]
    detections = {"000001": Detections(np.array([large_hit, small_hit], dtype=float), np.array([0.9, 0.7]),
                                       np.zeros(2, dtype=int)),
                  "000002": Detections(np.array([large_miss, small_miss], dtype=float), np.array([0.85, 0.8]),
                                       np.zeros(2, dtype=int))}
    result = evaluate_by_size(dataset, by_class(detections, 1))
    sizes = result["sizes"]
    # all: hit, miss, miss, hit -> precision 1 up to recall 1/2, then 1/2
    assert sizes["all"]["ap"]["apple"] == pytest.approx((6 * 1 + 5 * 0.5) / 11)
    # small: the large hit matches an ignored box, the large miss is dropped: miss, hit -> 1/2
    assert sizes["small"]["ap"]["apple"] == pytest.approx(0.5)
    # large: hit, large miss; the small miss dropped, the small hit on an ignored box -> 1
    assert sizes["large"]["ap"]["apple"] == pytest.approx(1.0)
    assert sizes["medium"] == {"mAP": None, "objects": 0, "ap": {"apple": None}}
    assert [sizes[s]["objects"] for s in ("all", "small", "large")] == [2, 1, 1]
    assert json.loads(json.dumps(result)) == result
    assert sizes["all"]["ap"] == evaluate_by_class(dataset, by_class(detections, 1))["ap"]
    table = format_size_table(result).splitlines()
    assert table[0].split() == ["class", "all", "small", "medium", "large"]
    assert table[2].split() == ["apple", "77.3", "50.0", "–", "100.0"]
    assert table[-2].split() == ["objects", "2", "1", "0", "1"] and "small 0 to 32², medium 32² to 96², large 96² to ∞" in table[-1]


def test_sppnet_eval_by_size(tiny, tmp_path, capsys):
    from tools.cli import main

    dataset, detections = tiny
    write_devkit_results(tmp_path / "results", "test", dataset.classes, detections)
    out = tmp_path / "m.json"
    args = ["eval", "--data", str(dataset.root), "--results", str(tmp_path / "results"), "--json", str(out)]
    assert main(args + ["--by-size"]) == 0
    printed = capsys.readouterr().out
    assert "medium" in printed and "COCO's thresholds" in printed
    written = json.loads(out.read_text())
    assert written["by_size"]["sizes"]["small"]["ap"] == {"apple": 1.0, "pear": pytest.approx(0.5)}
    assert main(args) == 0 and "by_size" not in json.loads(out.read_text())
    assert main(args + ["--by-size", "--metric", "coco"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--by-size: is for voc07 and voc10" in err
