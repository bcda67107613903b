"""How a target layer's output is read as channels-first maps: decided from the model, the shape or flags.

A target layer may output channels-first maps ``(N, C, [D,] H, W)`` (``nchw``), channels-last
maps ``(N, [D,] H, W, C)`` (``nhwc``: Swin, timm stages with ``output_fmt="NHWC"``) or tokens
``(N, T, C)`` (``tokens``: ViT, DeiT, BEiT, EVA, ...) with ``T = prefix + h * w [* d]``.
:meth:`TargetLayout.to_channels_first` turns any of them into ``(N, C, [d,] h, w)``; the
exporter applies it to the captured activations and to their gradients alike.

A layout is never guessed. In order:

1. an ONNX graph's operators, for a tensor of a converted ONNX classifier
   (:class:`~gradcamo.exporter.onnx_in.OnnxClassifier` declares each tensor's axes: ONNX
   defines ``Conv`` and pooling outputs as channels-first, ``Transpose`` permutes axes,
   element-wise ops keep them); a ``--target-layout`` that contradicts it is refused;
2. ``--target-layout`` (and, for tokens, ``--token-grid`` / ``--prefix-tokens``) when given;
3. the layer's type: convolutions, batch/instance/group norms and pooling layers compute
   channels-first; ``nn.Linear`` and an ``nn.LayerNorm`` over one axis act on the last axis
   (channels-last);
4. the model: a module around the layer that declares a token grid (timm ViTs:
   ``patch_embed`` and ``num_prefix_tokens``; torchvision's ``VisionTransformer``: its
   ``image_size``, ``patch_size`` and class token);
5. the shape: of the two readings of an ``(N, a, b, c)`` output, the one whose spatial
   sizes fit the crop (no axis larger than the crop's, H and W through one common stride,
   each within one of ``S / stride``), if only one does.

Anything else is refused with the flag that settles it.
"""

import dataclasses
import json
import math
import torch

from torch import nn

from gradcamo.errors import InputError
from gradcamo.options import check_whole_number

LAYOUTS = ("nchw", "nhwc", "tokens")
LAYOUT_OPTION = "--target-layout"
GRID_OPTION = "--token-grid"
PREFIX_OPTION = "--prefix-tokens"

_CHANNELS_FIRST_TYPES = (
    nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
)
"""Layers whose (N, C, ...) output is channels-first by torch's definition of the op."""
_CHANNELS_LAST_TYPES = (nn.Linear, nn.LayerNorm)
"""Layers acting on the last axis (exact types only: timm's ``LayerNorm2d`` subclasses ``nn.LayerNorm``;
a LayerNorm over several axes, as onnx2torch makes of ``LayerNormalization(axis=1)``, decides nothing)."""


class UndecidedLayout(InputError):
    """The layout of a layer's output cannot be decided or contradicts the flags; ``short`` says why in a few words."""

    def __init__(self, message, short):
        super().__init__(message)
        self.short = short


@dataclasses.dataclass(frozen=True)
class TargetLayout:
    """How to read a target layer's output as ``(N, C, [d,] h, w)``.

    ``token_grid`` and ``prefix_tokens`` apply to ``tokens`` only; ``decided_by`` says what
    settled the layout (``flag``, ``layer type``, ``model``, ``shape``).
    """

    layout: str
    decided_by: str
    token_grid: tuple | None = None
    prefix_tokens: int = 0

    def to_channels_first(self, tensor) -> "torch.Tensor":
        """(N, C, *s), (N, *s, C) or (N, prefix + prod(grid), C) -> (N, C, *s) (torch, traceable)."""
        if self.layout == "nchw":
            return tensor
        if self.layout == "tokens":
            tensor = tensor[:, self.prefix_tokens:].unflatten(1, self.token_grid)
        return tensor.movedim(-1, 1)

    def describe(self):
        """``tokens (grid 6x6 after 1 prefix token, from the model)``, for the export log and errors."""
        if self.layout != "tokens":
            return f"{self.layout} (from the {self.decided_by})"
        grid = "x".join(map(str, self.token_grid))
        plural = "" if self.prefix_tokens == 1 else "s"
        return f"tokens (grid {grid} after {self.prefix_tokens} prefix token{plural}, from the {self.decided_by})"

    def to_json(self):
        """The ``gradcamo.target_layout`` metadata value."""
        fields = {"layout": self.layout, "decided_by": self.decided_by}
        if self.layout == "tokens":
            fields.update(token_grid=list(self.token_grid), prefix_tokens=self.prefix_tokens)
        return json.dumps(fields)


def _shape_text(shape):
    return "(" + ", ".join(["N", *map(str, shape[1:])]) + ")"


def _fits_crop(sizes, crop_spatial):
    """Whether ``sizes`` can be the crop's spatial shape after downsampling.

    Every axis at most one more than the crop's (no upsampling), and H and W seen through one
    common stride r (each within one of ``S / r``); a 3D depth axis may have its own stride.
    """
    if any(size > crop + 1 for size, crop in zip(sizes, crop_spatial)):
        return False
    low, high = 0.0, math.inf
    for size, crop in zip(sizes[-2:], crop_spatial[-2:]):
        low = max(low, crop / (size + 1))
        high = min(high, crop / (size - 1) if size > 1 else math.inf)
    return low <= high


def _declared_tokens(model, layer_name, crop_spatial):
    """(grid, prefix, owner name) declared by the innermost module around the layer, or None.

    timm ViTs declare ``patch_embed`` (with ``grid_size``, or ``dynamic_feat_size(crop)`` when
    built with ``dynamic_img_size``) and ``num_prefix_tokens``; torchvision's
    ``VisionTransformer`` its ``image_size``, ``patch_size`` and ``class_token``.
    """
    if model is None:
        return None
    owners = [(name, module) for name, module in model.named_modules()
              if name == "" or layer_name == name or layer_name.startswith(name + ".")]
    for name, module in reversed(owners):
        embed, prefix = getattr(module, "patch_embed", None), getattr(module, "num_prefix_tokens", None)
        if embed is not None and isinstance(prefix, int) and getattr(embed, "grid_size", None) is not None:
            dynamic = getattr(module, "dynamic_img_size", False) and hasattr(embed, "dynamic_feat_size")
            grid = embed.dynamic_feat_size(tuple(crop_spatial)) if dynamic else embed.grid_size
            return tuple(int(n) for n in grid), prefix, name
        image, patch = getattr(module, "image_size", None), getattr(module, "patch_size", None)
        if isinstance(image, int) and isinstance(patch, int) and hasattr(module, "class_token"):
            return (image // patch,) * 2, 1, name
    return None


def _graph_tensor(model, layer_name):
    """(tensor name, axes) an ONNX classifier converted to torch declares for the layer's output, or None.

    :class:`~gradcamo.exporter.onnx_in.OnnxClassifier` (possibly inside a wrapper such as the
    ``--references`` head) declares ``graph_tensors``: for each node's module, its output
    tensor's name and axes as the graph defines them (``NCHW``, ``NHWC``, ... or None).
    """
    if model is None:
        return None
    for name, module in model.named_modules():
        tensors = getattr(module, "graph_tensors", None)
        inside = not name or layer_name.startswith(name + ".")
        if isinstance(tensors, dict) and inside and layer_name[len(name) + bool(name):] in tensors:
            return tensors[layer_name[len(name) + bool(name):]]
    return None


def _graph_layout(axes, spatial_dims, label, flag):
    """The layout of a tensor whose axes (``NCHW``, ``NDHWC``, ...) the ONNX graph defines; ``flag`` must agree."""
    spatial = "DHW"[3 - spatial_dims:]
    layout = {"NC" + spatial: "nchw", "N" + spatial + "C": "nhwc"}.get(axes)
    shown = ",".join(axes)
    if layout is None:
        raise UndecidedLayout(
            f"--target-layer: {label!r} has axes ({shown}) in the ONNX graph: its spatial axes are not in the "
            "input's order, so it cannot be read as maps of the crop; choose another tensor",
            f"axes ({shown}) in the graph",
        )
    if flag not in (None, layout):
        raise UndecidedLayout(
            f"{LAYOUT_OPTION} {flag}: the ONNX graph defines {label!r} as ({shown}), i.e. {layout}; "
            f"drop {LAYOUT_OPTION} or give {layout}",
            f"{LAYOUT_OPTION} {flag} contradicts the graph",
        )
    return TargetLayout(layout, "ONNX graph")


def _token_layout(shape, crop_spatial, *, model, layer_name, label, token_grid, prefix_tokens, decided_by):
    spatial_dims = len(crop_spatial)
    declared = _declared_tokens(model, layer_name, crop_spatial)
    grid = tuple(token_grid) if token_grid is not None else declared[0] if declared else None
    prefix = prefix_tokens if prefix_tokens is not None else declared[1] if declared else None
    missing = [option for option, value in ((GRID_OPTION, grid), (PREFIX_OPTION, prefix)) if value is None]
    if missing:
        needed = " and ".join(f"{o} {'H,W' if o == GRID_OPTION else 'N'}" for o in missing)
        raise UndecidedLayout(
            f"--target-layer: {label!r} outputs {_shape_text(shape)}, read as tokens (N, T, C), but the model "
            f"declares no token grid; give {needed} (prefix tokens: class, distillation, register tokens)",
            f"tokens without a declared grid ({GRID_OPTION}, {PREFIX_OPTION})",
        )
    if len(grid) != spatial_dims or not all(isinstance(n, int) and n > 0 for n in grid):
        raise InputError(f"{GRID_OPTION}: expected {spatial_dims} positive integers (the crop is {spatial_dims}D), "
                         f"got {','.join(map(str, grid))}")
    check_whole_number(prefix, PREFIX_OPTION, minimum=0)
    if shape[1] != prefix + math.prod(grid):
        source = "the model's" if declared and token_grid is None and prefix_tokens is None else "the"
        raise UndecidedLayout(
            f"--target-layer: {label!r} outputs {shape[1]} tokens {_shape_text(shape)}, but {source} grid "
            f"{'x'.join(map(str, grid))} with {prefix} prefix tokens makes {prefix + math.prod(grid)}; "
            f"give {GRID_OPTION} and {PREFIX_OPTION} that fit, or choose another layer",
            f"{shape[1]} tokens != {prefix} + {'x'.join(map(str, grid))}",
        )
    by = "flag" if decided_by == "flag" or token_grid is not None or prefix_tokens is not None else "model"
    if by == "model" and declared[2]:
        by = f"model ({declared[2]})"
    return TargetLayout("tokens", by, grid, prefix)


def decide_layout(shape, crop_spatial, *, model=None, layer_name="", layer=None, layout=None, token_grid=None,
                  prefix_tokens=None) -> "TargetLayout":
    """Decide how the target layer's output ``shape`` (batch first) is read; see the module docstring.

    Parameters
    ----------
    shape : tuple of int
        The layer's output shape on an example batch.
    crop_spatial : tuple of int
        The crop's spatial shape ``([D,] H, W)``.
    model, layer_name, layer : optional
        The model, the layer's name in it and the layer module, for the model's declarations
        (an ONNX classifier's tensor names and axes, a ViT's token grid).
    layout : {"nchw", "nhwc", "tokens"}, optional
        ``--target-layout``.
    token_grid : tuple of int, optional
        ``--token-grid``: ``(h, w)`` or ``(d, h, w)``.
    prefix_tokens : int, optional
        ``--prefix-tokens``: tokens before the grid (class, distillation, register tokens).

    Returns
    -------
    TargetLayout

    Raises
    ------
    InputError
        The flags contradict the shape, or the layout cannot be decided (the message names the flag).
    """
    shape, spatial_dims = tuple(shape), len(crop_spatial)
    tensor_name, graph_axes = _graph_tensor(model, layer_name) or (None, None)
    label = tensor_name or layer_name
    if layout is not None and layout not in LAYOUTS:
        raise InputError(f"{LAYOUT_OPTION}: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    maps_rank = 2 + spatial_dims
    if layout == "tokens" or (layout is None and len(shape) == 3 and len(shape) != maps_rank):
        if len(shape) != 3:
            raise InputError(f"{LAYOUT_OPTION} tokens: {label!r} outputs {_shape_text(shape)}, not (N, T, C)")
        return _token_layout(shape, crop_spatial, model=model, layer_name=layer_name, label=label,
                             token_grid=token_grid, prefix_tokens=prefix_tokens,
                             decided_by="flag" if layout else "model")
    if len(shape) != maps_rank:
        raise UndecidedLayout(
            f"--target-layer: {label!r} outputs shape {_shape_text(shape)}: not {spatial_dims}D maps "
            f"(N, C, {'D, ' if spatial_dims == 3 else ''}H, W) or (N, {'D, ' if spatial_dims == 3 else ''}H, W, C), "
            "nor tokens (N, T, C); choose another layer (`gradcamo layers` lists candidates)",
            "neither maps nor tokens",
        )
    if token_grid is not None or prefix_tokens is not None:
        raise InputError(f"{GRID_OPTION} and {PREFIX_OPTION} apply to token outputs (N, T, C); {label!r} "
                         f"outputs {spatial_dims}D maps {_shape_text(shape)}")
    if graph_axes is not None and len(graph_axes) == len(shape):
        return _graph_layout(graph_axes, spatial_dims, label, layout)
    if layout is not None:
        return TargetLayout(layout, "flag")
    if type(layer) in _CHANNELS_LAST_TYPES and len(getattr(layer, "normalized_shape", (0,))) == 1:
        return TargetLayout("nhwc", "layer type")
    if isinstance(layer, _CHANNELS_FIRST_TYPES):
        return TargetLayout("nchw", "layer type")
    fitting = [name for name, sizes in (("nchw", shape[2:]), ("nhwc", shape[1:-1])) if _fits_crop(sizes, crop_spatial)]
    if len(fitting) == 1:
        return TargetLayout(fitting[0], "shape")
    crop, depth = "x".join(map(str, crop_spatial)), "D, " if spatial_dims == 3 else ""
    readings = f"channels-first (N, C, {depth}H, W) {'and' if fitting else 'nor'} as channels-last (N, {depth}H, W, C)"
    raise UndecidedLayout(
        f"--target-layer: {label!r} outputs {_shape_text(shape)}, which fits a {crop} crop "
        f"{'both' if fitting else 'neither'} as {readings}; give {LAYOUT_OPTION} nchw or nhwc",
        f"{'nchw or nhwc' if fitting else 'neither nchw nor nhwc'} ({LAYOUT_OPTION})",
    )


def parse_token_grid(text) -> tuple[int, ...] | None:
    """``"6,6"`` -> ``(6, 6)``; None stays None."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"{GRID_OPTION}: expected comma-separated whole numbers such as 14,14, got {text!r}") from None


__all__ = ["LAYOUTS", "TargetLayout", "UndecidedLayout", "decide_layout", "parse_token_grid"]
