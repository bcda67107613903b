"""Rules that turn the backward ops of a traced gradient graph into ONNX-exportable aten ops.

``core_aten_decompositions`` lowers most backward ops to ordinary ones; these rules cover
the rest, and ``simplify_as_strided`` rewrites the ``as_strided`` views that would
otherwise become ``as_strided_scatter`` (which the ONNX exporter cannot lower).
"""

import numpy as np
import torch
from torch._decomp import core_aten_decompositions
from torch.fx.experimental.symbolic_shapes import statically_known_true

aten = torch.ops.aten


def _transposed_output_padding(input_size, output_size, kernel, stride, padding, dilation):
    """output_padding that makes a transposed convolution give back ``input_size``."""
    padding_needed = []
    for axis, size in enumerate(input_size):
        produced = (
            (output_size[axis] - 1) * stride[axis]
            - 2 * padding[axis]
            + dilation[axis] * (kernel[axis] - 1)
            + 1
        )
        padding_needed.append(size - produced)
    return padding_needed


def convolution_backward(
    grad_output, input, weight, bias_sizes, stride, padding, dilation,
    transposed, output_padding, groups, output_mask,
) -> object:
    """Input gradient of a convolution as a transposed convolution, and of a transposed
    convolution (a decoder's upsampling, for Latent Shift graphs) as a convolution with the
    same weight; weights get none."""
    if output_mask[1] or output_mask[2]:
        return NotImplemented
    if transposed:
        if groups != 1:
            return NotImplemented
        zeros = [0] * len(stride)
        return aten.convolution(grad_output, weight, None, stride, padding, dilation, False, zeros, 1), None, None
    spatial_input, spatial_output = input.shape[2:], grad_output.shape[2:]
    padding_needed = _transposed_output_padding(
        spatial_input, spatial_output, weight.shape[2:], stride, padding, dilation
    )
    grad_input = aten.convolution(
        grad_output, weight, None, stride, padding, dilation, True, padding_needed, groups
    )
    return grad_input, None, None


def max_pool_backward(grad_output, input, kernel_size, stride, padding, dilation, ceil_mode, indices) -> torch.Tensor:
    """Max-pool input gradient: scatter-add each output gradient to its argmax position."""
    n_batch, n_channels = input.shape[:2]
    plane = input.shape[2:].numel()
    zeros = grad_output.new_zeros((n_batch, n_channels, plane))
    flat = zeros.scatter_add(2, indices.flatten(2), grad_output.flatten(2))
    return flat.view(input.shape)


def _adaptive_pool_matrix(n_in, n_out):
    """(n_out, n_in) averaging weights of 1-D adaptive average pooling."""
    weights = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool_backward(grad_output, input) -> torch.Tensor:
    """Adaptive average-pool input gradient: transposed pooling matrix per spatial axis."""
    grad = grad_output
    for axis in range(2, input.dim()):
        weights = torch.tensor(_adaptive_pool_matrix(input.shape[axis], grad_output.shape[axis]))
        grad = torch.movedim(torch.movedim(grad, axis, -1) @ weights, -1, axis)
    return grad


def avg_pool_backward(
    grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
    divisor_override=None,
) -> object:
    """Average-pool input gradient as a depthwise transposed convolution with a flat kernel."""
    spatial_dims = input.dim() - 2
    kernel = list(kernel_size) * (spatial_dims if len(kernel_size) == 1 else 1)
    stride = list(stride or kernel) * (spatial_dims if len(stride or kernel) == 1 else 1)
    padding = list(padding) * (spatial_dims if len(padding) == 1 else 1)
    if ceil_mode or (any(padding) and not count_include_pad):
        return NotImplemented
    divisor = divisor_override or int(np.prod(kernel))
    n_channels = input.shape[1]
    weight = grad_output.new_full((n_channels, 1, *kernel), 1.0 / divisor)
    padding_needed = _transposed_output_padding(
        input.shape[2:], grad_output.shape[2:], kernel, stride, padding, [1] * spatial_dims
    )
    return aten.convolution(
        grad_output, weight, None, stride, padding, [1] * spatial_dims, True, padding_needed, n_channels
    )


def gradient_decompositions() -> dict:
    """The decomposition table used to trace gradient graphs."""
    table = dict(core_aten_decompositions())
    table[aten.convolution_backward.default] = convolution_backward
    table[aten.max_pool2d_with_indices_backward.default] = max_pool_backward
    table[aten.max_pool3d_with_indices_backward.default] = max_pool_backward
    table[aten._adaptive_avg_pool2d_backward.default] = adaptive_avg_pool_backward
    table[aten._adaptive_avg_pool3d_backward.default] = adaptive_avg_pool_backward
    table[aten.avg_pool2d_backward.default] = avg_pool_backward
    table[aten.avg_pool3d_backward.default] = avg_pool_backward
    return table


def simplify_as_strided(graph_module) -> int:
    """Replace ``as_strided`` views that are plain reshapes of contiguous tensors.

    Returns the number of nodes replaced.
    """
    graph = graph_module.graph
    replaced = 0
    for node in list(graph.nodes):
        if node.target not in (aten.as_strided.default, aten.as_strided_.default):
            continue
        source, size = node.args[0], node.args[1]
        offset = node.args[3] if len(node.args) > 3 else node.kwargs.get("storage_offset", 0)
        source_value, view_value = source.meta["val"], node.meta["val"]
        if offset not in (0, None) or not (source_value.is_contiguous() and view_value.is_contiguous()):
            continue
        if not statically_known_true(source_value.numel() == view_value.numel()):
            continue
        if node.target is aten.as_strided_.default and len(source.users) > 1:
            continue
        with graph.inserting_before(node):
            reshape = graph.call_function(aten.reshape.default, (source, size))
        reshape.meta = dict(node.meta)
        node.replace_all_uses_with(reshape)
        graph.erase_node(node)
        replaced += 1
    graph.lint()
    graph_module.recompile()
    return replaced
