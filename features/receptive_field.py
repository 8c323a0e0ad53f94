"""Stride S and receptive-field centre c0 of a conv body, analytic and measured (recipe §2).

SPP-net projects windows onto the feature map with the cumulative stride S and the input-pixel
centre c0 of output cell 0's receptive field, so cell i is centred on pixel c0 + i·S. Both are
properties of the layers: :func:`conv_geometry` composes them from the layer parameters and
:func:`measure_receptive_field` measures them from input gradients, so each checks the other.

Coordinates are 0-based input pixels; c0 can be fractional (e.g. 7.5 for VGG16, whose 2×2 pools
centre cells between pixels).
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call


@dataclass(frozen=True)
class _Layer:
    """One spatial layer as it ran: parameters per axis (height, width) and the sizes it saw."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]  # before (top, left), as applied in this call
    dilation: tuple[int, int]


def conv_geometry(body: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> tuple[int, float, int]:
    """Analytic (stride S, first-cell centre c0, receptive-field size) of ``body``.

    A shape-only forward of a (1, *input_size) input records every leaf module with
    ``kernel_size`` and ``stride`` attributes (Conv2d, MaxPool2d, AvgPool2d, and modules such as the within-channel
    LRN that declare them) in execution order, and composes them as one chain:
    centre += ((k - 1)·d/2 - p)·jump, rf += (k - 1)·d·jump, jump *= s.

    Assumptions: the recorded layers form one chain, the main path. Residual blocks whose
    shortcut is an identity (timm's EfficientNet) keep the main path's alignment, so the sum has
    its geometry; a shortcut with layers of its own (ResNet's strided 1×1 conv) would be recorded
    into the chain and is not supported. Padding added
    only at the right/bottom outside these layers does not move cell 0. Ceil-mode pooling only
    adds cells at the end, so cell 0 is unchanged. Layers that pad inside ``forward`` (TensorFlow
    "SAME", e.g. timm's Conv2dSame, whose ``padding`` attribute is 0) are recognised by an output
    size that the static padding cannot produce; their padding is split as TensorFlow does
    (the odd pixel at the end), which depends on the input size, so c0 holds for inputs whose
    intermediate sizes have the same parity as ``input_size``'s.

    Raises ValueError when the height and width geometries differ.
    """
    layers = _record_layers(body, input_size)
    per_axis = [_compose(layers, axis) for axis in (0, 1)]
    if per_axis[0] != per_axis[1]:
        raise ValueError(f"height and width geometries differ: {per_axis[0]} vs {per_axis[1]}")
    jump, centre, size = per_axis[0]
    return jump, centre, size


def measure_receptive_field(body: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224),
                            samples: int = 2, seed: int = 0, max_doublings: int = 3) -> tuple[int, float]:
    """Empirical (stride S, first-cell centre c0) of ``body`` from input gradients.

    Two neighbouring interior cells a and a+1 (on the diagonal, so both axes are measured at once)
    are back-propagated to a batch of random inputs; the pixels with a nonzero gradient in any
    sample form each cell's receptive field. ReLUs and max-pool argmaxes zero some gradients on
    any one input, so the union over ``samples`` inputs is what reaches the true edges. Then
    S = centre(a+1) - centre(a) and c0 = centre(a) - a·S.

    The measured fields must lie inside the input (zero padding would cut them): when one touches
    the border the input side is doubled, at most ``max_doublings`` times. The body is copied,
    in eval mode (batch norm uses running statistics, so samples stay independent).

    Raises ValueError when no input size fits or the geometry is not a whole-pixel stride.
    """
    probe = copy.deepcopy(body).eval().requires_grad_(False)
    like = next(probe.parameters(), torch.empty(0))
    generator = torch.Generator().manual_seed(seed)
    channels, height, width = input_size
    for _ in range(max_doublings + 1):
        inputs = torch.randn(samples, channels, height, width, generator=generator).to(like)
        extents = _cell_extents(probe, inputs)
        if extents is not None:
            return _stride_and_centre(extents)
        height, width = 2 * height, 2 * width
    raise ValueError(f"receptive field does not fit inside a {height // 2}×{width // 2} input")


def _record_layers(body: nn.Module, input_size: tuple[int, int, int]) -> list[_Layer]:
    """Spatial leaf layers of ``body`` in the order a forward runs them.

    The forward runs on the meta device with stand-in parameters and buffers: shapes only, no
    arithmetic (cheap even for VGG16), and the body's own tensors, batch-norm statistics
    included, are never touched.
    """
    layers: list[_Layer] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        layers.append(_layer_from_call(module, tuple(args[0].shape[-2:]), tuple(output.shape[-2:])))

    tensors = itertools.chain(body.named_parameters(), body.named_buffers())
    stand_ins = {name: torch.empty_like(tensor, device="meta") for name, tensor in tensors}
    dummy = torch.empty(1, *input_size, device="meta")
    handles = [m.register_forward_hook(hook) for m in body.modules() if _is_spatial_leaf(m)]
    try:
        with torch.no_grad():
            functional_call(body, stand_ins, (dummy,))
    finally:
        for handle in handles:
            handle.remove()
    return layers


def _is_spatial_leaf(module: nn.Module) -> bool:
    # Leaves only: a wrapper that declared kernel_size around its own conv would count twice.
    return hasattr(module, "kernel_size") and hasattr(module, "stride") and next(module.children(), None) is None


def _layer_from_call(module: nn.Module, in_size: tuple[int, int], out_size: tuple[int, int]) -> _Layer:
    kernel = _pair(module.kernel_size)
    stride = _pair(module.stride)
    dilation = _pair(getattr(module, "dilation", 1))
    padding = module.padding
    if isinstance(padding, str):  # nn.Conv2d(padding="same"/"valid"): stride 1, extra pixel at the end
        before = tuple((d * (k - 1)) // 2 if padding == "same" else 0 for k, d in zip(kernel, dilation))
    else:
        before = tuple(_padding_before(i, o, k, s, p, d, getattr(module, "ceil_mode", False))
                       for i, o, k, s, p, d in zip(in_size, out_size, kernel, stride, _pair(padding), dilation))
    return _Layer(kernel, stride, before, dilation)


def _padding_before(in_size: int, out_size: int, kernel: int, stride: int, padding: int, dilation: int,
                    ceil_mode: bool) -> int:
    """Top/left padding one axis actually had: the static value unless the output size rules it out."""
    span = dilation * (kernel - 1) + 1
    # Ceil-mode layers are pools, whose padding is always the static one.
    if ceil_mode or (in_size + 2 * padding - span) // stride + 1 == out_size:
        return padding
    # Padded inside forward: TensorFlow "SAME" pads the least total that gives this output size
    # and puts the odd pixel at the end.
    total = max((out_size - 1) * stride + span - in_size, 0)
    return total // 2


def _compose(layers: list[_Layer], axis: int) -> tuple[int, float, int]:
    """(jump, centre, size) of the chain along one axis."""
    jump, centre, size = 1, 0.0, 1
    for layer in layers:
        kernel, stride = layer.kernel[axis], layer.stride[axis]
        padding, dilation = layer.padding[axis], layer.dilation[axis]
        centre += ((kernel - 1) * dilation / 2 - padding) * jump
        size += (kernel - 1) * dilation * jump
        jump *= stride
    return jump, centre, size


def _cell_extents(probe: nn.Module, inputs: torch.Tensor) -> list[tuple[int, int, int, int]] | None:
    """Per measured cell: (cell index, axis, first, last) input pixels with a nonzero gradient.

    Cells a and a+1 sit at the middle of the map on both axes. None when the map has fewer than
    three cells on an axis or a field touches the input border (it may be cut off there).
    """
    inputs = inputs.requires_grad_(True)
    output = probe(inputs)  # (B, C, H', W')
    rows, cols = output.shape[-2:]
    if min(rows, cols) < 3:
        return None
    extents = []
    for offset in (0, 1):
        row, col = rows // 2 - 1 + offset, cols // 2 - 1 + offset
        (grad,) = torch.autograd.grad(output[:, :, row, col].sum(), inputs, retain_graph=offset == 0)
        touched = grad.ne(0).any(dim=0).any(dim=0)  # (H, W): any sample, any channel
        for axis, cell in ((0, row), (1, col)):
            hits = touched.any(dim=1 - axis).nonzero().flatten()
            first, last = int(hits[0]), int(hits[-1])
            if first == 0 or last == touched.shape[axis] - 1:
                return None
            extents.append((cell, axis, first, last))
    return extents


def _stride_and_centre(extents: list[tuple[int, int, int, int]]) -> tuple[int, float]:
    """(S, c0) from two neighbouring cells' extents on both axes; ValueError if the axes disagree."""
    results = set()
    for axis in (0, 1):
        (cell_a, _, first_a, last_a), (_, _, first_b, last_b) = [e for e in extents if e[1] == axis]
        centre_a, centre_b = (first_a + last_a) / 2, (first_b + last_b) / 2
        stride = centre_b - centre_a
        if not stride.is_integer() or stride <= 0:
            raise ValueError(f"measured stride {stride} on axis {axis} is not a positive whole number")
        results.add((int(stride), centre_a - cell_a * stride))
    if len(results) != 1:
        raise ValueError(f"height and width geometries differ: {sorted(results)}")
    return results.pop()


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])
