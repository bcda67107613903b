"""Tiny 2D and 3D classifiers exported for the scorer and visual tests, and their crop shapes."""

import torch
from torch import nn

import gradcamo

CROP_2D = (3, 16, 16)
CROP_3D = (3, 4, 12, 12)


def tiny_classifier(spatial_dims, n_classes=3):
    """conv-relu-conv(stride 2)-relu-pool-linear; target layer ``"2"``."""
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
    torch.manual_seed(10 + spatial_dims)
    return nn.Sequential(
        conv(3, 6, 3, padding=1), nn.ReLU(), conv(6, 6, 3, stride=2, padding=1), nn.ReLU(),
        pool(1), nn.Flatten(), nn.Linear(6, n_classes),
    )


def export_tiny(path, spatial_dims, **options):
    crop = CROP_2D if spatial_dims == 2 else CROP_3D
    gradcamo.export_model(tiny_classifier(spatial_dims), "2", crop, path, mean=[100.0] * 3, std=[300.0] * 3, **options)
    return path


class TinyAutoencoder(nn.Module):
    """conv(stride 2)-relu-linear encoder to ``latent_size``; linear-transposed conv(stride 2) decoder."""

    def __init__(self, spatial_dims, crop, latent_size=4):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        transposed = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
        channels, *spatial = crop
        self.hidden = (4, *(n // 2 for n in spatial))
        hidden_size = 4 * int(torch.tensor(self.hidden[1:]).prod())
        torch.manual_seed(20 + spatial_dims)
        self.down = nn.Sequential(conv(channels, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(hidden_size, latent_size))
        self.up = nn.Linear(latent_size, hidden_size)
        self.out = transposed(4, channels, 2, stride=2)

    def encode(self, x):
        return self.down(x)

    def decode(self, z):
        return self.out(torch.relu(self.up(z)).reshape(-1, *self.hidden))


def tiny_autoencoder(spatial_dims):
    """A :class:`TinyAutoencoder` for :data:`CROP_2D` or :data:`CROP_3D` (random weights, seeded)."""
    return TinyAutoencoder(spatial_dims, CROP_2D if spatial_dims == 2 else CROP_3D)
