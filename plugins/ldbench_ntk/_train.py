"""Weights for the ``ntk`` source: state-dict files and a short training run.

This module imports torch at the top, so import it only when a matrix is
formed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._data import ImageData, channel_stats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSettings:
    """Settings of the training run before an NTK formation.

    Attributes
    ----------
    steps
        Number of optimiser steps.
    lr
        Learning rate.
    batch
        Samples per step, drawn at random from the whole training set.
    optimizer
        ``"sgd"`` (momentum 0.9) or ``"adam"``.
    seed
        Seed of the batch draws.
    """

    steps: int
    lr: float
    batch: int
    optimizer: str
    seed: int


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state-dict file into ``model`` in place, converted to float64.

    Raises
    ------
    TypeError
        When the file does not contain a state dict.
    ValueError
        When the file's tensors do not match the model's parameter names or
        shapes. The message lists the differences.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(
            f"weights file {str(path)!r} contains a {type(state).__name__}, not a "
            "state dict; save it with torch.save(model.state_dict(), path)"
        )
    state = {name: value.to(torch.float64) for name, value in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"weights file {str(path)!r} does not fit the network: {exc}"
        ) from exc
    logger.info("ntk: loaded %d tensors from %s", len(state), path)


def train(
    model: nn.Module, data: ImageData, settings: TrainingSettings, device: torch.device
) -> list[float]:
    """Train ``model`` in place with cross-entropy on the whole training set.

    Training runs in float64 on ``device``, and the model is moved back to
    the CPU afterwards. Inputs are scaled and normalised per channel as for
    the formation. Batch draws are seeded with ``settings.seed``, and the
    model has no dropout or batch statistics, so two runs on the same device
    give the same weights up to the order of floating-point reductions.

    Returns
    -------
    list of float
        The loss of each step.
    """
    rng = np.random.default_rng([settings.seed, 1])
    mean, std = channel_stats(data)
    std = np.where(std > 0, std, 1.0)
    model.to(device=device, dtype=torch.float64).train()
    if settings.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=settings.lr
        )
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9)
    losses = []
    size = data.labels.size
    for _ in range(settings.steps):
        index = rng.choice(size, size=min(settings.batch, size), replace=False)
        images = data.images[index].astype(np.float64) / data.scale
        images = (images - mean[None, :, None, None]) / std[None, :, None, None]
        x = torch.from_numpy(images).to(device)
        y = torch.from_numpy(data.labels[index]).to(device)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.to("cpu").eval()
    if losses:
        logger.info(
            "ntk: trained %d steps, loss %.4f -> %.4f",
            settings.steps,
            losses[0],
            losses[-1],
        )
    return losses
