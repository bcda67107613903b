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
