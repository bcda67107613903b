"""Small CNN classifiers (and an autoencoder) for tests, the demos and benchmarks (needs torch).

Not imported by ``gradcamo.scorer``: the scorer must run without torch.
"""

import torch
from torch import nn

__all__ = ["ConvAutoencoder2d", "TinyCNN2d", "TinyCNN3d", "EfficientNet3dSmall", "adapt_first_conv"]


def _init_weights(model):
    """He initialisation (fan-in for depthwise convolutions): activations stay O(1) in depth."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            nn.init.kaiming_normal_(module.weight, mode="fan_in" if depthwise else "fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            bound = 1.0 / module.out_features**0.5
            nn.init.uniform_(module.weight, -bound, bound)
            nn.init.zeros_(module.bias)


def _conv_bn_relu(in_channels, out_channels, *, stride=1, spatial_dims=2):
    conv, norm = (nn.Conv2d, nn.BatchNorm2d) if spatial_dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    return nn.Sequential(
        conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        norm(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyCNN2d(nn.Module):
    """A three-block 2D CNN: ``features.block1..3`` (conv-bn-relu), global pool, linear.

    Parameters
    ----------
    in_channels : int
        Image channels.
    num_classes : int
        Number of logits.
    width : int
        Channels of the first block; doubled in each later block.

    Notes
    -----
    ``block2`` and ``block3`` halve the spatial size, so a 32x32 crop gives 8x8 maps
    at ``features.block3``. Runs in milliseconds on CPU at 5x64x64.

    Examples
    --------
    >>> model = TinyCNN2d(in_channels=5, num_classes=2).eval()
    >>> tuple(model(torch.zeros(1, 5, 32, 32)).shape)
    (1, 2)
    """

    spatial_dims = 2

    def __init__(self, in_channels=5, num_classes=2, *, width=16):
        super().__init__()
        dims = self.spatial_dims
        self.features = nn.Sequential()
        self.features.add_module("block1", _conv_bn_relu(in_channels, width, spatial_dims=dims))
        self.features.add_module("block2", _conv_bn_relu(width, 2 * width, stride=2, spatial_dims=dims))
        self.features.add_module("block3", _conv_bn_relu(2 * width, 4 * width, stride=2, spatial_dims=dims))
        self.pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Linear(4 * width, num_classes)
        _init_weights(self)

    def forward(self, x) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(self.pool(x), 1))


class TinyCNN3d(TinyCNN2d):
    """:class:`TinyCNN2d` with 3D convolutions: an 8x32x32 crop gives 2x8x8 maps at ``features.block3``."""

    spatial_dims = 3


class SqueezeExcitation3d(nn.Module):
    """Channel re-weighting: global pool, 1x1 reduce, SiLU, 1x1 expand, sigmoid gate."""

    def __init__(self, channels, squeeze_channels):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.reduce = nn.Conv3d(channels, squeeze_channels, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv3d(squeeze_channels, channels, 1)

    def forward(self, x) -> torch.Tensor:
        scale = torch.sigmoid(self.expand(self.act(self.reduce(self.pool(x)))))
        return x * scale


class MBConv3d(nn.Module):
    """Inverted residual block in 3D (EfficientNet's MBConv).

    1x1x1 expansion, depthwise 3x3x3 convolution (``groups = channels``),
    squeeze-excitation, 1x1x1 projection; each conv is followed by batch norm,
    SiLU after all but the projection. A residual is added when input and output
    shapes match (stride 1, same channels).
    """

    def __init__(self, in_channels, out_channels, *, expand_ratio=4, stride=1, se_ratio=0.25):
        super().__init__()
        hidden = in_channels * expand_ratio
        layers = []
        if expand_ratio != 1:
            layers += [nn.Conv3d(in_channels, hidden, 1, bias=False), nn.BatchNorm3d(hidden), nn.SiLU()]
        layers += [
            nn.Conv3d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm3d(hidden),
            nn.SiLU(),
            SqueezeExcitation3d(hidden, max(1, int(in_channels * se_ratio))),
            nn.Conv3d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm3d(out_channels),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class EfficientNet3dSmall(nn.Module):
    """A small 3D EfficientNet-style classifier.

    ``stem`` (conv3d stride (1, 2, 2)), ``blocks.0..5`` (MBConv3d), ``head``
    (1x1x1 conv-bn-SiLU), global average pool, dropout-free linear classifier.

    Parameters
    ----------
    in_channels : int
        Image channels.
    num_classes : int
        Number of logits.

    Notes
    -----
    Strides only shrink H and W in the stem and D, H, W in ``blocks.2`` and
    ``blocks.4``, so an 8x32x32 crop gives 2x4x4 maps at ``head``.

    Examples
    --------
    >>> model = EfficientNet3dSmall(in_channels=5, num_classes=2).eval()
    >>> tuple(model(torch.zeros(1, 5, 8, 32, 32)).shape)
    (1, 2)
    """

    # (in, out, expand_ratio, stride) per MBConv block
    BLOCKS = (
        (16, 16, 1, 1),
        (16, 24, 4, 1),
        (24, 24, 4, 2),
        (24, 32, 4, 1),
        (32, 48, 4, 2),
        (48, 48, 4, 1),
    )

    def __init__(self, in_channels=5, num_classes=2, *, head_channels=96):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, 16, 3, stride=(1, 2, 2), padding=1, bias=False),
            nn.BatchNorm3d(16),
            nn.SiLU(),
        )
        self.blocks = nn.Sequential(
            *(MBConv3d(i, o, expand_ratio=e, stride=s) for i, o, e, s in self.BLOCKS)
        )
        last = self.BLOCKS[-1][1]
        self.head = nn.Sequential(
            nn.Conv3d(last, head_channels, 1, bias=False), nn.BatchNorm3d(head_channels), nn.SiLU()
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Linear(head_channels, num_classes)
        _init_weights(self)

    def forward(self, x) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def adapt_first_conv(model, in_channels) -> nn.Module:
    """Replace the model's first ``Conv2d``/``Conv3d`` by one taking ``in_channels`` inputs.

    Kernel size, stride, padding, dilation, groups (when it is 1), bias and padding
    mode are kept; the new weights are freshly initialised. The model is changed in
    place and returned.

    Parameters
    ----------
    model : torch.nn.Module
        For example a torchvision classifier built with ``weights=None``.
    in_channels : int
        Number of input channels the first convolution should take.

    Returns
    -------
    model : torch.nn.Module

    Raises
    ------
    ValueError
        The model has no 2D/3D convolution, or the first one is grouped.

    Examples
    --------
    >>> import torchvision
    >>> model = adapt_first_conv(torchvision.models.resnet18(weights=None), 5)
    >>> model.conv1.in_channels
    5
    """
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            break
    else:
        raise ValueError("model: no Conv2d or Conv3d found; adapt_first_conv needs a CNN")
    if module.groups != 1:
        raise ValueError(
            f"model: first convolution {name!r} has groups={module.groups}; only groups=1 can be adapted"
        )
    # torch's stubs type the constructor's kernel_size etc. as int or an n-tuple, the attributes as tuple[int, ...]
    conv: type[nn.Module] = type(module)
    replacement = conv(
        in_channels,
        module.out_channels,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=1,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, replacement)
    return model


class ConvAutoencoder2d(nn.Module):
    """A small convolutional autoencoder for square 2D crops whose side is a multiple of 8.

    ``encode``: three stride-2 conv-relu blocks (``width``, ``2 * width``, ``2 * width``
    channels), flatten, linear to ``latent_size``. ``decode``: linear-relu back to the
    smallest feature map, three stride-2 transposed convolutions (relu between them) to
    the crop. Works on normalised crops; ``export_autoencoder`` bakes the normalisation in.

    Examples
    --------
    >>> model = ConvAutoencoder2d(in_channels=2, crop=32, latent_size=8).eval()
    >>> tuple(model.encode(torch.zeros(3, 2, 32, 32)).shape), tuple(model.decode(torch.zeros(3, 8)).shape)
    ((3, 8), (3, 2, 32, 32))
    """

    def __init__(self, in_channels=2, crop=32, latent_size=8, *, width=16):
        super().__init__()
        self.hidden = (2 * width, crop // 8, crop // 8)
        hidden_size = 2 * width * (crop // 8) ** 2
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(hidden_size, latent_size),
        )
        self.expand = nn.Sequential(nn.Linear(latent_size, hidden_size), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, 2 * width, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(width, in_channels, 4, stride=2, padding=1),
        )

    def encode(self, x) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z) -> torch.Tensor:
        return self.decoder(self.expand(z).reshape(-1, *self.hidden))

    def forward(self, x) -> torch.Tensor:
        return self.decode(self.encode(x))
