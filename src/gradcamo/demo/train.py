"""Train the demo's tiny classifiers on crops cut exactly as the scorer cuts them (needs torch)."""

import numpy as np
import torch
from torch import nn

from gradcamo.models import TinyCNN2d, TinyCNN3d
from gradcamo.scorer.crops import cut_object_crops

TARGET_LAYER = "features.block2"
"""Half the crop's resolution: fine enough for CAMs that can tell a cell from its surroundings."""


def cell_crops(fields, crop_shape) -> tuple[np.ndarray, np.ndarray]:
    """Crops (float32) and their class indices, one per cell of ``fields``."""
    crops = [cut_object_crops(field.image, field.labels, tuple(crop_shape[1:]))[1] for field in fields]
    classes = [np.full(len(c), field.class_index, dtype=np.int64) for c, field in zip(crops, fields)]
    return np.concatenate(crops), np.concatenate(classes)


def channel_statistics(crops) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of training crops: the normalisation baked into the export."""
    axes = (0,) + tuple(range(2, crops.ndim))
    return crops.mean(axis=axes).tolist(), (crops.std(axis=axes) + 1e-6).tolist()


def augment(batch, generator) -> torch.Tensor:
    """Random flips of every spatial axis and a random quarter turn in (y, x)."""
    spatial = list(range(2, batch.ndim))
    flips = [axis for axis in spatial if torch.rand((), generator=generator) < 0.5]
    if flips:
        batch = torch.flip(batch, flips)
    turns = int(torch.randint(0, 4, (), generator=generator))
    return torch.rot90(batch, turns, dims=(batch.ndim - 2, batch.ndim - 1))


def train_classifier(crops, classes, *, mean, std, epochs, seed, batch_size=32) -> nn.Module:
    """A tiny CNN trained with Adam on normalised, augmented crops; returned in eval mode.

    Returns
    -------
    model : torch.nn.Module
        Expects *normalised* input; export it with the same ``mean``/``std``.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    spatial_dims = crops.ndim - 2
    model = (TinyCNN2d if spatial_dims == 2 else TinyCNN3d)(in_channels=crops.shape[1], num_classes=2)
    view = (1, -1) + (1,) * spatial_dims
    x = (torch.from_numpy(crops) - torch.tensor(mean).reshape(view)) / torch.tensor(std).reshape(view)
    y = torch.from_numpy(classes)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_function = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for begin in range(0, len(x), batch_size):
            index = order[begin : begin + batch_size]
            optimiser.zero_grad()
            loss = loss_function(model(augment(x[index], generator)), y[index])
            loss.backward()
            optimiser.step()
    return model.eval()
