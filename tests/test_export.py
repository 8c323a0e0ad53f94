"""Export: the scoring graph equals the detector, and ONNX Runtime / TorchScript give its outputs."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from detection.core.config import SPPConfig
from detection.detector import Detector
from detection.export import ExportError, ScoringGraph, example_inputs, export_model
from features.backbones import build_backbone
from features.head import FCHead
from features.spp import roi_pool_bins_exact, roi_pyramid_pool, spatial_pyramid_pool, spp_output_dim
from svm.calibration import PlattScaling
from tools.cli import main

CLASSES = ("a", "b", "c")
SCALE = 96


def make_detector(feature_layer: str = "pool5", calibrated: bool = True, scales=(SCALE,), fc6_svd_rank=0,
                  backbone_name: str = "efficientnet_lite0") -> Detector:
    config = SPPConfig().replace(features={"scales": scales, "backbone": backbone_name},
                                 svm={"feature_layer": feature_layer},
                                 bbox={"enabled": False}, test={"fc6_svd_rank": fc6_svd_rank})
    torch.manual_seed(0)
    backbone = build_backbone(config.features.backbone)
    dim = spp_output_dim(backbone.channels, config.features.pyramid_levels)
    head = None if feature_layer == "pool5" else FCHead(dim, 64, None).eval()
    rng = np.random.default_rng(0)
    platt = None
    if calibrated:
        platt = PlattScaling.from_state({"coef": np.array([-1.0, -2.0, -0.5]), "intercept": np.array([0.0, 1.0, -1.0])})
    width = {"pool5": dim, "ftfc7+pool5": dim + 64}.get(feature_layer, 64)
    return Detector(config, CLASSES, backbone, rng.normal(0, 0.05, (len(CLASSES), width)), rng.normal(0, 1, 3), 0.5,
                    device="cpu", head=head, calibration=platt)


def test_roi_pool_pyramid_equals_the_sparse_table_pyramid():
    generator = torch.Generator().manual_seed(1)
    fmap = torch.rand((7, 23, 31), generator=generator)
    corners = torch.stack([torch.randint(0, 31, (300, 2), generator=generator),
                           torch.randint(0, 23, (300, 2), generator=generator)], dim=2)  # (N, 2, xy)
    cells = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    cells[:5] = torch.tensor([[0, 0, 30, 22], [3, 4, 3, 4], [0, 0, 0, 22], [30, 0, 30, 0], [10, 11, 15, 12]])
    for levels in [(1, 2, 3, 6), (1, 2, 4), (5,)]:
        assert torch.equal(roi_pyramid_pool(fmap, cells, levels), spatial_pyramid_pool(fmap, cells, levels))


def test_float_bin_edges_are_checked():
    assert roi_pool_bins_exact((1, 2, 3, 4, 5, 6), 1000)
    assert not roi_pool_bins_exact((7,), 100)  # 6 · float32(57 / 7) rounds above 48 ...
    detector = make_detector().replace(features={"pyramid_levels": (1, 7)})
    with pytest.raises(ExportError, match="bin edges"):  # ... so such a pyramid is refused
        ScoringGraph(detector)


@pytest.mark.parametrize("feature_layer,calibrated,fc6_svd_rank,backbone",
                         [("pool5", True, 0, "efficientnet_lite0"), ("fc7", False, 0, "efficientnet_lite0"),
                          ("ftfc7+pool5", True, 0, "efficientnet_lite0"),
                          ("ftfc7+pool5", True, 8, "efficientnet_lite0"),
                          ("pool5", False, 0, "efficientnet_lite0_s16+s32")])
def test_graph_scores_like_the_detector(feature_layer, calibrated, fc6_svd_rank, backbone):
    detector = make_detector(feature_layer, calibrated, fc6_svd_rank=fc6_svd_rank, backbone_name=backbone)
    graph = ScoringGraph(detector).eval()
    if fc6_svd_rank:  # the graph runs the head detection runs: fc6 as two layers of 8 singular values
        assert [layer.weight.shape[0] for layer in graph.head.fc6] == [8, 64]
    image, boxes = example_inputs(graph, SCALE, 150, windows=40)  # shorter side = the scale: no resize
    pixels = image.round()
    with torch.no_grad():
        outputs = graph(pixels, boxes)
    margins = outputs[0] if calibrated else outputs
    array = np.ascontiguousarray(pixels[0].permute(1, 2, 0).to(torch.uint8).numpy())
    features = detector.features(detector.compute_maps(array), boxes.double().numpy(), array.shape[:2])
    assert margins.shape == (40, 3)
    assert torch.allclose(margins, detector.score(features), atol=1e-4)
    if calibrated:
        expected = detector.calibration.predict_proba(margins.numpy())
        assert np.allclose(outputs[1].numpy(), expected, atol=1e-6)


def test_the_command_offers_the_formats_there_are():
    from detection.export import FORMATS
    from tools import export_net

    assert export_net.FORMATS == FORMATS


def test_multi_scale_models_need_a_scale():
    detector = make_detector(scales=(96, 128))
    with pytest.raises(ExportError, match="--scale"):
        ScoringGraph(detector)
    with pytest.raises(ExportError, match="not one of"):
        ScoringGraph(detector, scale=100)
    assert ScoringGraph(detector, scale=128).scale == 128


# ONNX Runtime runs in a child process: once it has made a session, a thread of its own calls C's
# rand() now and then for the rest of the process, which reorders any selective search running at
# that moment (OpenCV ranks its regions with rand(); proposals/selective_search.py reseeds it per
# search), so later tests of this suite would see other proposals.
ORT_CHILD = """
import sys
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
names = [o.name for o in session.get_outputs()]
feeds = np.load(sys.argv[2])
outputs = {}
for i in range(len(feeds.files) // 2):
    values = session.run(None, {"image": feeds[f"image{i}"], "boxes": feeds[f"boxes{i}"]})
    outputs.update({f"{name}{i}": value for name, value in zip(names, values)})
np.savez(sys.argv[3], names=np.array(names), **outputs)
"""


needs_onnx_runtime = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                        reason="onnxruntime not installed")


def onnx_runtime_outputs(path, feeds, tmp_path):
    """ONNX Runtime on the model at ``path`` for each (image, boxes) pair in ``feeds``, in a child
    process (see ORT_CHILD): its output names and, per feed, the outputs by name."""
    np.savez(tmp_path / "feeds.npz", **{f"{k}{i}": v for i, (image, boxes) in enumerate(feeds)
                                        for k, v in (("image", image), ("boxes", boxes))})
    subprocess.run([sys.executable, "-c", ORT_CHILD, str(path), str(tmp_path / "feeds.npz"),
                    str(tmp_path / "outputs.npz")], check=True)
    outputs = np.load(tmp_path / "outputs.npz")
    names = list(outputs["names"])
    return names, [{name: outputs[f"{name}{i}"] for name in names} for i in range(len(feeds))]


@pytest.mark.slow  # two exports of efficientnet_lite0: about 30 s on 2 cores per layer
@needs_onnx_runtime
@pytest.mark.parametrize("feature_layer,backbone", [("pool5", "efficientnet_lite0"),
                                                    ("ftfc7+pool5", "efficientnet_lite0"),
                                                    ("pool5", "efficientnet_lite0_s16+s32")])  # two stages, one grid
def test_onnx_runtime_and_torchscript_match_pytorch(tmp_path, feature_layer, backbone):
    detector = make_detector(feature_layer, backbone_name=backbone)
    onnx_path = export_model(detector, tmp_path / "model.onnx", "onnx")
    script_path = export_model(detector, tmp_path / "model.ts", "torchscript")
    scripted = torch.jit.load(str(script_path))
    graph = ScoringGraph(detector).eval()
    # sizes and window counts other than the example the graph was traced with
    inputs = [example_inputs(graph, height, width, windows) for height, width, windows in
              [(96, 130, 7), (141, 96, 33), (96, 96, 1)]]
    names, onnx_outputs = onnx_runtime_outputs(onnx_path, [(i.numpy(), b.numpy()) for i, b in inputs], tmp_path)
    assert names == ["margins", "probabilities"]
    for (image, boxes), onnx in zip(inputs, onnx_outputs):
        with torch.no_grad():
            margins, probabilities = graph(image, boxes)
            script_margins, script_probabilities = scripted(image, boxes)
        assert onnx["margins"].shape == (len(boxes), 3)
        assert np.allclose(onnx["margins"], margins.numpy(), rtol=1e-4, atol=1e-4)
        assert np.allclose(onnx["probabilities"], probabilities.numpy(), atol=1e-5)
        assert torch.allclose(script_margins, margins, atol=1e-5)
        assert torch.allclose(script_probabilities, probabilities, atol=1e-6)


@pytest.mark.slow
@needs_onnx_runtime
def test_export_command(tmp_path, capsys):
    model = tmp_path / "model.pt"
    make_detector(calibrated=False).save(model)
    assert main(["export", "--model", str(model), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert "outputs margins (N, 3)" in capsys.readouterr().out
    graph = ScoringGraph(make_detector(calibrated=False)).eval()
    names, _ = onnx_runtime_outputs(tmp_path / "m.onnx", [tuple(x.numpy() for x in example_inputs(graph))], tmp_path)
    assert names == ["margins"]
    assert main(["export", "--model", str(model), "--format", "torchscript", "--out", str(tmp_path / "m.ts"),
                 "--scale", "128"]) == 2
    assert "not one of the model's scales" in capsys.readouterr().err


@pytest.mark.slow  # one TorchScript trace of efficientnet_lite0
def test_export_takes_test_time_options(tmp_path, capsys):
    model = tmp_path / "model.pt"
    make_detector("ftfc7+pool5", calibrated=False).save(model)
    out = tmp_path / "m.ts"
    assert main(["export", "--model", str(model), "--format", "torchscript", "--out", str(out),
                 "--set", "test.fc6_svd_rank=8"]) == 0
    shapes = {k: tuple(v.shape) for k, v in torch.jit.load(str(out)).state_dict().items() if "fc6" in k}
    assert shapes["head.fc6.0.weight"][0] == 8 and shapes["head.fc6.1.weight"] == (64, 8)
    assert main(["export", "--model", str(model), "--format", "torchscript", "--out", str(out),
                 "--set", "svm.C=1"]) == 2
    assert "--set svm.C" in capsys.readouterr().err
