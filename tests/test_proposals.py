"""Selective search boxes, the proposal store and R-CNN's proposal files."""
import os
import pickle
import signal
import typing
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from PIL import Image

import proposals.selective_search as selective_search_module
import proposals.store as store_module
from detection.core.cache import Cache
from detection.core.boxes import clip_boxes
from detection.core.config import ProposalConfig, ProposalMode
from detection.core.images import ImageError
from detection.data.demo import make_demo_dataset
from detection.data.voc import VOCDataset
from proposals.precomputed import PrecomputedProposals, ProposalFileError
from proposals.recall import best_overlaps, compare_modes, recall, recall_table
from proposals.selective_search import PROPOSAL_MODES, keep_windows, load_rcnn_proposals, search_windows, selective_search
from proposals.store import ProposalStore, with_ground_truth
from tools.cli import main


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8 RGB: coloured rectangles on a gradient with a little noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, width)[None, :, None]
    image = np.broadcast_to(ramp, (height, width, 3)).copy()
    for _ in range(6):
        x1, y1 = rng.integers(0, width - 20), rng.integers(0, height - 20)
        x2, y2 = x1 + rng.integers(15, width // 2), y1 + rng.integers(15, height // 2)
        image[y1:y2, x1:x2] = rng.integers(0, 256, 3)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_png(path, image: np.ndarray):
    Image.fromarray(image).save(path)
    return path


def assert_valid_boxes(boxes: np.ndarray, width: int, height: int):
    assert boxes.dtype == np.float64 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width - 1).all() and (boxes[:, 3] <= height - 1).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)


def test_boxes_inside_image_unique_and_min_size_at_proposal_scale():
    image = scene(160, 120)
    config = ProposalConfig(resize_width=160, min_size=20)
    boxes = selective_search(image, config)
    assert_valid_boxes(boxes, 160, 120)
    widths, heights = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    assert widths.min() >= 20 and heights.min() >= 20
    # deterministic: OpenCV's random ranking is reseeded for every image
    np.testing.assert_array_equal(boxes, selective_search(image, config))


def test_cap_keeps_the_first_boxes_in_selective_search_order():
    image = scene(160, 120)
    boxes = selective_search(image, ProposalConfig(resize_width=0, min_size=1))
    capped = selective_search(image, ProposalConfig(resize_width=0, min_size=1, max_proposals=7))
    assert len(boxes) > 7
    np.testing.assert_array_equal(capped, boxes[:7])


@pytest.mark.parametrize("width, resize_width", [(250, 500), (320, 160)])
def test_boxes_are_in_original_coordinates_when_resized(width, resize_width):
    height = 3 * width // 4
    boxes = selective_search(scene(width, height), ProposalConfig(resize_width=resize_width, min_size=20))
    assert_valid_boxes(boxes, width, height)
    # the last merge covers the whole proposal image, which maps back to the whole original
    assert ((boxes == [0, 0, width - 1, height - 1]).all(axis=1)).any()
    # min_size applies at the proposal scale: 20 px there is about 20 / scale px here
    smallest = min((boxes[:, 2] - boxes[:, 0] + 1).min(), (boxes[:, 3] - boxes[:, 1] + 1).min())
    assert smallest >= np.floor(20 * width / resize_width) - 1
    if resize_width > width:  # enlarged: windows under 20 px here were 20+ px at the proposal scale
        assert smallest < 20


def test_every_mode_runs_and_unknown_mode_raises():
    image = scene(96, 72)
    found = {mode: selective_search(image, ProposalConfig(mode=mode, resize_width=0, min_size=5))
             for mode in PROPOSAL_MODES}
    assert PROPOSAL_MODES == typing.get_args(ProposalMode) == ("rcnn_fast", "opencv_fast", "quality")
    assert ProposalConfig().mode == "rcnn_fast"
    for boxes in found.values():
        assert_valid_boxes(boxes, 96, 72)
    assert len(found["quality"]) > len(found["opencv_fast"])  # more colour spaces, ks and strategies
    # finer segmentations (k 50, 100 with min size k, against k 150-450 with none): different windows
    assert not np.array_equal(found["rcnn_fast"], found["opencv_fast"])
    with pytest.raises(ValueError, match="mode"):
        selective_search(image, ProposalConfig(mode="slow"))


def test_with_ground_truth_prepends_gt_boxes():
    proposals = np.array([[0, 0, 9, 9], [5, 5, 20, 20]], dtype=np.float32)
    gt = np.array([[1, 2, 3, 4]])
    boxes = with_ground_truth(proposals, gt)
    assert boxes.dtype == np.float64
    np.testing.assert_array_equal(boxes, [[1, 2, 3, 4], [0, 0, 9, 9], [5, 5, 20, 20]])
    assert with_ground_truth(proposals, np.zeros((0, 4))).shape == (2, 4)


@pytest.fixture
def image_items(tmp_path):
    """Three readable PNGs and one corrupt file, as (key, path) pairs."""
    items = [(f"img{i}", write_png(tmp_path / f"img{i}.png", scene(120, 90, seed=i))) for i in range(3)]
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return items + [("broken", corrupt)]


CONFIG = ProposalConfig(resize_width=0, min_size=10, max_proposals=300)


def test_store_caches_and_second_run_reads_no_image(tmp_path, image_items, monkeypatch):
    calls = []

    def counting_search(image, config):
        calls.append(image.shape)
        return selective_search(image, config)

    monkeypatch.setattr(store_module, "selective_search", counting_search)
    store = ProposalStore(Cache(tmp_path / "cache"), CONFIG)
    first, failures = store.compute_all(image_items, progress=True)
    assert len(calls) == 3 and set(first) == {"img0", "img1", "img2"}
    assert set(failures) == {"broken"} and "broken.jpg" in failures["broken"]
    assert (store.cache.directory("proposals", store.fingerprint) / "meta.json").is_file()

    def no_reading(path):
        raise AssertionError(f"{path} was read although its boxes are cached")

    monkeypatch.setattr(store_module, "load_image", no_reading)
    again, _ = ProposalStore(Cache(tmp_path / "cache"), CONFIG).compute_all(image_items[:3], progress=False)
    assert len(calls) == 3
    for key, boxes in first.items():
        assert again[key].dtype == np.float64
        np.testing.assert_array_equal(again[key], boxes)
        np.testing.assert_array_equal(store.get(key, dict(image_items)[key]), boxes)


def test_store_get_computes_once_and_raises_for_a_bad_image(tmp_path, image_items):
    store = ProposalStore(Cache(tmp_path / "cache"), CONFIG)
    key, path = image_items[0]
    boxes = store.get(key, path)
    assert_valid_boxes(boxes, 120, 90)
    assert store.has(key, store.cache.source(path))
    with pytest.raises(ImageError, match="broken.jpg"):
        store.get(*image_items[-1])


def test_an_interrupted_run_keeps_the_images_it_finished(tmp_path, image_items, monkeypatch):
    done = []

    def interrupted_after_one(image, config):
        if done:
            raise KeyboardInterrupt
        done.append(True)
        return selective_search(image, config)

    monkeypatch.setattr(store_module, "selective_search", interrupted_after_one)
    store = ProposalStore(Cache(tmp_path / "cache"), CONFIG)
    with pytest.raises(KeyboardInterrupt):
        store.compute_all(image_items[:3], progress=False)
    sources = {key: store.cache.source(path) for key, path in image_items}
    assert store.has("img0", sources["img0"])
    assert not store.has("img1", sources["img1"])


def test_two_workers_match_one_and_survive_a_corrupt_image(tmp_path, image_items):
    # the corrupt file first, so it is not merely the last job to finish
    items = image_items[-1:] + image_items[:-1]
    serial, serial_failures = ProposalStore(Cache(tmp_path / "c1"), CONFIG, workers=1).compute_all(items, progress=False)
    parallel_store = ProposalStore(Cache(tmp_path / "c2"), CONFIG, workers=2)
    parallel, parallel_failures = parallel_store.compute_all(items, progress=False)
    assert set(parallel) == set(serial) == {"img0", "img1", "img2"}
    for key in serial:
        np.testing.assert_array_equal(parallel[key], serial[key])
        assert parallel_store.has(key, parallel_store.cache.source(dict(items)[key]))
    assert parallel_failures == serial_failures
    assert "broken.jpg" in parallel_failures["broken"] and "\n" not in parallel_failures["broken"]
    assert not parallel_store.has("broken", parallel_store.cache.source(dict(items)["broken"]))


def test_load_rcnn_proposals_converts_one_based_yx_to_zero_based_xy(tmp_path):
    ids = np.empty((1, 2), dtype=object)
    ids[0, :] = ["000005", "000007"]
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0] = np.array([[1, 2, 30, 40], [5, 6, 7, 8]], dtype=np.float64)  # [y1 x1 y2 x2], 1-based
    cells[0, 1] = np.zeros((0, 4))
    path = tmp_path / "voc_2007_test.mat"
    scipy.io.savemat(path, {"images": ids, "boxes": cells})
    loaded = load_rcnn_proposals(path)
    assert set(loaded) == {"000005", "000007"}
    np.testing.assert_array_equal(loaded["000005"], [[1, 0, 39, 29], [5, 4, 7, 6]])
    assert loaded["000007"].shape == (0, 4)


def small_objects_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(240, 320, 3) uint8 RGB: 12-24 px squares 15 grey levels off a noisy ground, and their (G, 4) boxes."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(np.clip(rng.normal(128, 20, (240, 320, 3)), 0, 255), (0, 0), 1.0)
    boxes = []
    for row in range(3):
        for col in range(4):
            side = int(rng.integers(12, 25))
            x1, y1 = 20 + col * 75 + int(rng.integers(0, 20)), 20 + row * 75 + int(rng.integers(0, 20))
            image[y1:y1 + side, x1:x1 + side] += 15 * rng.choice([-1, 1], 3)
            boxes.append([x1, y1, x1 + side - 1, y1 + side - 1])
    return np.clip(image, 0, 255).astype(np.uint8), np.array(boxes, dtype=np.float64)


def test_rcnn_fast_finds_small_low_contrast_objects_better_than_opencv_fast(tmp_path):
    paths, gts = [], []
    for seed in range(2):
        image, gt = small_objects_scene(seed)
        paths.append(write_png(tmp_path / f"{seed}.png", image))
        gts.append(gt)
    config = ProposalConfig(resize_width=0, min_size=10)
    results = {r.mode: r for r in compare_modes(list(zip(paths, gts)), config, ("rcnn_fast", "opencv_fast"))}
    assert results["rcnn_fast"].num_objects == 24 and results["rcnn_fast"].num_small == 24
    assert results["rcnn_fast"].recall[0.5] == 1.0 and results["opencv_fast"].recall[0.5] < 1.0
    assert results["rcnn_fast"].recall[0.7] > results["opencv_fast"].recall[0.7]
    for r in results.values():
        assert r.cpu_s_per_image > 0 and r.wall_s_per_image > 0 and r.boxes_per_image > 0
    table = recall_table(list(results.values()))
    assert table.splitlines()[0].startswith("| mode | min size | boxes / image | recall @ 0.5 | recall @ 0.7 |")
    assert len(table.splitlines()) == 4
    assert table.splitlines()[2].startswith("| rcnn_fast | 10 |")


def test_smaller_min_size_keeps_windows_on_small_objects(tmp_path):
    """12-24 px objects: windows of at least 30 px cover few of them at IoU 0.5; at least 8 px, all."""
    image, gt = small_objects_scene(0)
    path = write_png(tmp_path / "0.png", image)
    config = ProposalConfig(resize_width=0)
    results = compare_modes([(path, gt)], config, ("rcnn_fast",), min_sizes=(30, 8))
    assert [(r.mode, r.min_size) for r in results] == [("rcnn_fast", 30), ("rcnn_fast", 8)]
    coarse, fine = results
    assert fine.recall[0.5] == 1.0 and coarse.recall[0.5] < 0.5
    assert fine.boxes_per_image > coarse.boxes_per_image
    assert fine.cpu_s_per_image == coarse.cpu_s_per_image  # one search served both sizes


def test_one_search_filtered_per_size_is_selective_search_at_each_size():
    image, _ = small_objects_scene(1)
    found = search_windows(image, ProposalConfig(resize_width=400))  # enlarged: windows map back through a scale
    assert found[1] == 1.25 and found[2] == (240, 320)
    for min_size, max_proposals in ((30, 2000), (8, 2000), (8, 25)):
        config = ProposalConfig(resize_width=400, min_size=min_size, max_proposals=max_proposals)
        np.testing.assert_array_equal(keep_windows(*found, config), selective_search(image, config))


def test_rcnn_fast_is_selective_search_boxes_m_fast_mode(monkeypatch):
    """k in {50, 100} with min size k and sigma 0.8; HSV and Lab; colour+texture+size+fill and texture+size+fill."""
    segmentation = cv2.ximgproc.segmentation
    calls = []

    class Recording:
        def __getattr__(self, name):
            def record(*args, **kwargs):
                calls.append((name.replace("createSelectiveSearchSegmentation", ""), args, kwargs))
                return getattr(segmentation, name)(*args, **kwargs)
            return record

    monkeypatch.setattr(selective_search_module, "_SEGMENTATION", Recording())
    images = []
    original = cv2.cvtColor
    monkeypatch.setattr(selective_search_module.cv2, "cvtColor",
                        lambda image, code: images.append(code) or original(image, code))
    selective_search(scene(64, 48), ProposalConfig(mode="rcnn_fast", resize_width=0, min_size=5))
    graph = [c[2] for c in calls if c[0] == "createGraphSegmentation"]
    assert graph == [{"sigma": 0.8, "k": 50.0, "min_size": 50}, {"sigma": 0.8, "k": 100.0, "min_size": 100}]
    strategies = [c[0] for c in calls if c[0].startswith("Strategy")]
    assert strategies == ["StrategyColor", "StrategyTexture", "StrategySize", "StrategyFill", "StrategyMultiple",
                          "StrategyTexture", "StrategySize", "StrategyFill", "StrategyMultiple"]
    assert [c for c in images if c != cv2.COLOR_RGB2BGR] == [cv2.COLOR_BGR2HSV, cv2.COLOR_BGR2Lab]


def test_best_overlaps_and_recall_match_a_loop():
    rng = np.random.default_rng(3)

    def boxes(n):
        xy = rng.uniform(0, 80, (n, 2))
        return np.hstack([xy, xy + rng.uniform(5, 40, (n, 2))])

    proposals, gts = [boxes(50), np.zeros((0, 4)), boxes(7)], [boxes(4), boxes(2), np.zeros((0, 4))]
    expected = []
    for props, gt in zip(proposals, gts):
        for g in gt:
            best = 0.0
            for p in props:
                iw = min(g[2], p[2]) - max(g[0], p[0]) + 1
                ih = min(g[3], p[3]) - max(g[1], p[1]) + 1
                if iw > 0 and ih > 0:
                    inter = iw * ih
                    union = (g[2] - g[0] + 1) * (g[3] - g[1] + 1) + (p[2] - p[0] + 1) * (p[3] - p[1] + 1) - inter
                    best = max(best, inter / union)
            expected.append(best)
    overlaps = best_overlaps(proposals, gts)
    np.testing.assert_allclose(overlaps, expected)
    assert overlaps[4:6].tolist() == [0.0, 0.0]  # an image without proposals finds nothing
    thresholds = np.array([0.0, 0.5, 0.7, 1.01])
    np.testing.assert_allclose(recall(overlaps, thresholds),
                               [np.mean([o >= t for o in expected]) for t in thresholds])
    assert np.isnan(recall(np.zeros(0), [0.5])).all()


# -- precomputed proposals (--proposals PATH) ---------------------------------------------------

BOXES = {"000005": np.array([[1, 0, 39, 29], [5, 4, 7, 6], [0, 0, 500, 10]], dtype=np.float64),
         "000007": np.zeros((0, 4))}


def write_formats(tmp_path) -> dict[str, object]:
    """The same windows in the three formats: R-CNN's .mat, a directory of .txt, an .npz."""
    ids = np.empty((1, 2), dtype=object)
    ids[0, :] = list(BOXES)
    cells = np.empty((1, 2), dtype=object)
    for i, boxes in enumerate(BOXES.values()):
        cells[0, i] = boxes[:, [1, 0, 3, 2]] + 1  # [y1 x1 y2 x2], 1-based
    scipy.io.savemat(tmp_path / "voc_2007_test.mat", {"images": ids, "boxes": cells})
    (tmp_path / "txt").mkdir()
    for image_id, boxes in BOXES.items():
        np.savetxt(tmp_path / "txt" / f"{image_id}.txt", boxes, fmt="%d")
    np.savez(tmp_path / "boxes.npz", **BOXES)
    return {"mat": tmp_path / "voc_2007_test.mat", "dir": tmp_path / "txt", "npz": tmp_path / "boxes.npz"}


@pytest.mark.parametrize("kind", ["mat", "dir", "npz"])
def test_precomputed_formats_read_the_same_boxes_and_name_the_file_when_an_image_is_missing(tmp_path, kind):
    path = write_formats(tmp_path)[kind]
    precomputed = PrecomputedProposals(path)
    assert precomputed.kind == kind
    for image_id, boxes in BOXES.items():
        np.testing.assert_array_equal(precomputed.boxes(image_id), boxes)
        assert precomputed.boxes(image_id).dtype == np.float64
    np.testing.assert_array_equal(precomputed.boxes("000005", width=320, height=240)[2], [0, 0, 319, 10])
    with pytest.raises(ProposalFileError, match=r"no proposals for image '000009'") as err:
        precomputed.boxes("000009")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert pickle.loads(pickle.dumps(precomputed)).boxes("000005").shape == (3, 4)


def test_precomputed_bad_paths_are_one_line_errors(tmp_path):
    with pytest.raises(ProposalFileError, match="no such proposal file"):
        PrecomputedProposals(tmp_path / "nope.mat")
    (tmp_path / "boxes.csv").write_text("1,2,3,4\n")
    with pytest.raises(ProposalFileError, match=r"boxes.csv: unknown proposal format"):
        PrecomputedProposals(tmp_path / "boxes.csv")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("1 2 3\n")
    with pytest.raises(ProposalFileError, match=r"a.txt: line 1 has 3 numbers"):
        PrecomputedProposals(tmp_path / "txt").boxes("a")


def test_store_reads_precomputed_boxes_under_their_own_fingerprint(tmp_path, monkeypatch):
    def no_selective_search(*args, **kwargs):
        raise AssertionError("selective search ran although proposals were given")

    paths = write_formats(tmp_path)
    items = [(image_id, write_png(tmp_path / f"{image_id}.png", scene(320, 240))) for image_id in BOXES]
    items.append(("000009", write_png(tmp_path / "000009.png", scene(320, 240))))
    monkeypatch.setattr(store_module, "selective_search", no_selective_search)
    cache = Cache(tmp_path / "cache")
    store = ProposalStore(cache, CONFIG, workers=2, precomputed=PrecomputedProposals(paths["dir"]))
    found, failures = store.compute_all(items, progress=False)
    np.testing.assert_array_equal(found["000005"], clip_boxes(BOXES["000005"], 320, 240))
    assert found["000007"].shape == (0, 4)
    assert list(failures) == ["000009"] and failures["000009"].startswith(f"{paths['dir']}: no proposals for image")
    # another file (or selective search) is another cache entry; the same contents are the same one
    other = ProposalStore(cache, CONFIG, precomputed=PrecomputedProposals(paths["npz"]))
    assert other.fingerprint != store.fingerprint != ProposalStore(cache, CONFIG).fingerprint
    assert ProposalStore(cache, CONFIG, precomputed=PrecomputedProposals(paths["dir"])).fingerprint == store.fingerprint
    with pytest.raises(ProposalFileError, match="000009"):
        ProposalStore(cache, CONFIG, precomputed=PrecomputedProposals(paths["npz"])).get(*items[2])


@pytest.mark.slow
def test_train_test_and_detect_take_proposals_from_the_command_line(tmp_path, capsys):
    """The paper's setting: the same precomputed windows for every command, no selective search."""
    voc = make_demo_dataset(tmp_path / "data", num_trainval=4, num_test=3, image_size=(160, 120))
    rng = np.random.default_rng(0)

    def windows(record) -> np.ndarray:  # jittered GT boxes and random ones, as selective search would give
        jittered = np.repeat(record.boxes, 10, axis=0) + rng.integers(-6, 7, (10 * len(record.boxes), 4))
        xy = rng.uniform(0, 100, (60, 2))
        return clip_boxes(np.vstack([jittered, np.hstack([xy, xy + rng.uniform(10, 60, (60, 2))])]), 160, 120)

    train_dir = tmp_path / "trainval_boxes"
    train_dir.mkdir()
    for record in VOCDataset(voc, "trainval"):
        np.savetxt(train_dir / f"{record.image_id}.txt", windows(record), fmt="%d")
    test_records = list(VOCDataset(voc, "test"))
    np.savez(tmp_path / "test.npz", **{r.image_id: windows(r) for r in test_records[:2]})  # the third is missing
    common = ["--quiet", "--device", "cpu", "--workers", "1"]
    assert main(["train", "--data", str(voc), "--work-dir", str(tmp_path / "train"), "--feature-layer", "pool5",
                 "--proposals", str(train_dir), *common]) == 0
    model = str(tmp_path / "train" / "model.pt")
    code = main(["test", "--data", str(voc), "--model", model, "--out", str(tmp_path / "test"),
                 "--proposals", str(tmp_path / "test.npz"), *common])
    out = capsys.readouterr().out
    assert code == 1 and f"failed: {tmp_path / 'test.npz'}: no proposals for image '{test_records[2].image_id}'" in out
    assert "mAP" in out
    code = main(["detect", str(voc / "JPEGImages" / f"{test_records[0].image_id}.jpg"), "--model", model,
                 "--out", str(tmp_path / "detect"), "--proposals", str(train_dir), *common])
    assert code != 0  # a test image: not in the trainval directory
    assert f"no proposals for image '{test_records[0].image_id}'" in (tmp_path / "detect" / "failed.tsv").read_text()
    code = main(["detect", str(voc / "JPEGImages"), "--list", "/dev/null", "--model", model,
                 "--out", str(tmp_path / "detect2"), "--proposals", str(tmp_path / "test.npz"), *common])
    assert code != 0
    failed = (tmp_path / "detect2" / "failed.tsv").read_text()
    assert len(failed.strip().splitlines()) == 4 + 1  # trainval images and the third test image


def propose_or_crash(item, config, precomputed=None):
    """As the store's worker function, but the worker dies (as on a decoder segfault) on an image named crash*."""
    if Path(item[1]).name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    return store_module._proposals_for_file(item, config, precomputed)


def test_a_dead_worker_fails_its_images_and_the_store_goes_on(tmp_path, image_items, monkeypatch):
    crash = write_png(tmp_path / "crash.png", scene(120, 90, seed=7))
    monkeypatch.setattr(store_module, "_proposals_for_file", propose_or_crash)
    store = ProposalStore(Cache(tmp_path / "cache"), CONFIG, workers=2)
    found, failures = store.compute_all(image_items[:3] + [("crash", crash)], progress=False)
    assert "crash" in failures and failures["crash"].startswith(f"{crash}: a worker process died")
    # images in flight beside it may fail with it; each is either found or reported, and found ones are cached
    assert set(found) | set(failures) == {"img0", "img1", "img2", "crash"}
    assert all(store.has(key, store.cache.source(path)) for key, path in image_items[:3] if key in found)
