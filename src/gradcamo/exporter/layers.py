"""``gradcamo layers``: the model's candidate target layers, their output shapes, layouts and gradients."""

import copy
import dataclasses

import torch

from gradcamo.errors import InputError, first_line
from gradcamo.exporter.export import check_input_shape
from gradcamo.exporter.layout import decide_layout
from gradcamo.exporter.trace import choose_trace_batch

SEED = 0


@dataclasses.dataclass(frozen=True)
class LayerCandidate:
    """One layer whose output has a batch axis and at least two more axes.

    ``layout`` is the :class:`~gradcamo.exporter.layout.TargetLayout` export would use, or
    None with ``refused`` saying why; ``channels`` and ``spatial`` are those of the
    channels-first maps; ``gradient_nonzero`` is None where the layout is undecided.
    """

    name: str
    shape: tuple
    calls: int
    layout: object = None
    refused: str = ""
    channels: int = 0
    spatial: tuple = ()
    gradient_nonzero: bool | None = None

    @property
    def usable(self) -> bool:
        return self.calls == 1 and self.layout is not None and bool(self.gradient_nonzero)


def _run_with_outputs_kept(model, image):
    """Forward ``image``; keep every sub-module's tensor output (a clone goes downstream); return logits, outputs, calls."""
    kept, calls, handles = {}, {}, []

    def hook(name):
        def keep(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.dim() >= 3 and output.requires_grad:
                kept[name] = output
                return output.clone()
            return None
        return keep

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        logits = model(image)
    except Exception as error:  # user models raise anything on a bad shape
        raise InputError(f"--input-shape: the model rejects input {tuple(image.shape[1:])}: {first_line(error)}") from error
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise InputError("MODEL: the model must return (N, classes) logits")
    return logits, kept, calls


def list_layers(model, input_shape, *, names=None) -> "tuple[list[LayerCandidate], str | None]":
    """Every candidate target layer of ``model`` on a seeded random input, in forward order, and the suggested one.

    The gradient is that of each sample's predicted logit, as the scorer's default target;
    it is judged on the channels-first maps (a ViT's last block passes gradient to its class
    token only: zero on the token grid). ``names`` (``{module name: name to list}``), when
    given, limits the candidates to those modules, listed under their names (an ONNX
    graph's tensors).

    Returns
    -------
    candidates : list of LayerCandidate
    suggested : str or None
        The last usable layer (runs once, layout decided, non-zero gradient, more than one
        spatial position) with the channel count of the last decided layer, i.e. the
        network's final width (``layer4`` of a ResNet, ``blocks.N.norm1`` of a ViT); else
        the last usable layer; None when there is none.
    """
    input_shape = check_input_shape(input_shape)
    model = copy.deepcopy(model).float().eval()
    batch = choose_trace_batch(input_shape)
    image = torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(SEED)).requires_grad_(True)
    with torch.enable_grad():
        logits, kept, calls = _run_with_outputs_kept(model, image)
        selected = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
        layers = [name for name, output in kept.items()
                  if output.shape[0] == batch and (names is None or name in names)]
        gradients = torch.autograd.grad(selected, [kept[n] for n in layers], allow_unused=True)
    modules = dict(model.named_modules())
    candidates = []
    for name, gradient in zip(layers, gradients):
        shape, listed = tuple(kept[name].shape), names[name] if names is not None else name
        try:
            layout = decide_layout(shape, input_shape[1:], model=model, layer_name=name, layer=modules[name])
        except InputError as error:
            candidates.append(LayerCandidate(listed, shape, calls[name], refused=getattr(error, "short", str(error))))
            continue
        maps = layout.to_channels_first(kept[name].detach())
        nonzero = gradient is not None and bool(layout.to_channels_first(gradient).ne(0).any())
        candidates.append(LayerCandidate(listed, shape, calls[name], layout, channels=maps.shape[1],
                                         spatial=tuple(maps.shape[2:]), gradient_nonzero=nonzero))
    return candidates, _suggest(candidates)


def _suggest(candidates):
    decided = [c for c in candidates if c.layout is not None]
    usable = [c for c in decided if c.usable and max(c.spatial, default=1) > 1]
    if not usable:
        return None
    width = decided[-1].channels
    same_width = [c for c in usable if c.channels == width]
    return (same_width or usable)[-1].name


def format_layers(candidates, suggested) -> list[str]:
    """One line per candidate (``*`` marks the suggested one), then a line naming the suggestion."""
    rows = [("", "layer", "output", "read as", "gradient")]
    for c in candidates:
        shape = "(" + ", ".join(["N", *map(str, c.shape[1:])]) + ")"
        if c.layout is None:
            read, gradient = f"refused: {c.refused}", "-"
        else:
            read = c.layout.describe()
            gradient = "non-zero" if c.gradient_nonzero else "zero"
        if c.calls != 1:
            gradient += f" (runs {c.calls} times: not a target)"
        rows.append(("*" if c.name == suggested else "", c.name, shape, read, gradient))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    lines.append(f"suggested target layer: {suggested}" if suggested else
                 "no usable target layer: none runs once with a decided layout, a non-zero gradient and "
                 "more than one spatial position")
    return [line.rstrip() for line in lines]


__all__ = ["LayerCandidate", "format_layers", "list_layers"]
