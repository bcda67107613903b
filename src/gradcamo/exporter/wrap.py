"""The module that is traced: image, target -> logits, activations, gradients."""

import contextlib
import difflib
from collections.abc import Iterator

import torch
from torch import nn

from gradcamo.errors import ExportError, InputError
from gradcamo.exporter.layout import TargetLayout


def resolve_layer(model, name) -> nn.Module:
    """Return the sub-module called ``name``, or raise ``InputError`` pointing to ``gradcamo layers``."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    alike = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.8)
    spelled = f"names spelled alike (not checked as targets): {', '.join(alike)}; " if alike else ""
    raise InputError(
        f"--target-layer: the model has no layer {name!r}; {spelled}`gradcamo layers MODEL --input-shape ...` "
        f"lists the candidate layers with their shapes and gradients; top-level layers: {_layer_listing(model)}"
    )


MAX_LISTED_LAYERS = 16


def _layer_listing(model):
    """The top-level layers with their types (``0 (Conv2d), 1 (ReLU), ...``), at most MAX_LISTED_LAYERS."""
    children = [f"{child_name} ({type(child).__name__})" for child_name, child in model.named_children()]
    nested = sum(1 for _ in model.named_modules()) - 1 - len(children)
    listed = ", ".join(children[:MAX_LISTED_LAYERS]) or "none"
    more = len(children) - MAX_LISTED_LAYERS
    if more > 0:
        listed += f", ... ({more} more)"
    if nested > 0:
        listed += f"; nested layers are named with dots, e.g. {next(n for n, _ in model.named_modules() if '.' in n)}"
    return listed


@contextlib.contextmanager
def capture_layer_output(layer) -> Iterator[list]:
    """Capture ``layer``'s output as a fresh autograd leaf while the block runs.

    The hook swaps the output for a leaf tensor and hands a clone of it downstream, so
    the backward stops at the layer (no weight gradients, only a partial backward) and
    later in-place ops (DenseNet's ``relu_``) cannot alter the captured activations.
    Yields a list that holds one leaf per call of the layer.
    """
    leaves = []

    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise ExportError(
                f"target layer returns {type(output).__name__}, not a tensor; choose a layer "
                "whose output is one (N, C, [D,] H, W) feature map"
            )
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield leaves
    finally:
        handle.remove()


class ChannelNormalisation(nn.Module):
    """Per-channel ``(x - mean) / std`` (:meth:`forward`) and its inverse (:meth:`undo`), baked into a graph.

    Without ``mean`` and ``std`` both are the identity and add no op to the graph.
    """

    def __init__(self, input_shape, mean=None, std=None):
        super().__init__()
        self.active = mean is not None or std is not None
        n_channels, spatial_dims = input_shape[0], len(input_shape) - 1
        view = (1, n_channels) + (1,) * spatial_dims
        mean = [0.0] * n_channels if mean is None else mean
        std = [1.0] * n_channels if std is None else std
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(view), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(view), persistent=False)

    def forward(self, image) -> torch.Tensor:
        return (image - self.mean) / self.std if self.active else image

    def undo(self, image) -> torch.Tensor:
        return image * self.std + self.mean if self.active else image


class GradCamWrapper(nn.Module):
    """forward(image, target) -> (logits, activations, gradients) of one target layer.

    ``image`` holds raw intensities; the optional per-channel ``mean``/``std``
    normalisation is applied first, so it becomes part of the exported graph.
    ``target`` holds one class index per sample, -1 for the predicted class; each
    sample's gradient is that of its own target logit. ``layout`` (a
    :class:`~gradcamo.exporter.layout.TargetLayout`; default channels-first) turns the
    layer's output and its gradient alike into ``(N, C, [d,] h, w)``.
    """

    def __init__(self, model, target_layer, *, input_shape, mean=None, std=None, layout=None):
        super().__init__()
        self.model = model
        self.layer_name = target_layer
        self.layer = resolve_layer(model, target_layer)
        self.layout = layout or TargetLayout("nchw", "default")
        self.normalise = ChannelNormalisation(input_shape, mean, std)

    def forward(self, image, target) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.normalise(image)
        with torch.enable_grad():
            with capture_layer_output(self.layer) as leaves:
                logits = self.model(x)
            if len(leaves) != 1:
                raise ExportError(
                    f"target layer {self.layer_name!r} ran {len(leaves)} times in one forward "
                    "pass; choose a layer that runs exactly once"
                )
            activations = leaves[0]
            target = torch.where(target < 0, logits.argmax(dim=1), target)
            selected = logits.gather(1, target[:, None]).sum()
            try:
                (gradients,) = torch.autograd.grad(selected, activations)
            except RuntimeError as error:
                raise ExportError(
                    f"the logits do not depend on target layer {self.layer_name!r}: {error}"
                ) from None
        to_maps = self.layout.to_channels_first
        return logits.detach(), to_maps(activations.detach()), to_maps(gradients)
