"""Networks whose tangent kernels the ``ntk`` source forms, in float64.

This module imports torch at the top, so import it only when a matrix is
formed. Every network maps a batch of images of shape ``(batch, channels,
height, width)`` to logits of shape ``(batch, classes)``.

Batch normalisation is replaced by ``GroupNorm(1, channels)``, a normalisation
over the channels and pixels of each sample. In training mode batch norm
couples the samples of a batch, and in eval mode at initialisation it is a
fixed affine map, so the per-sample Jacobian of either is not the one of a
normalised network. ``GroupNorm`` keeps the per-channel scale and shift
parameters of batch norm and depends on one sample only.
"""

from __future__ import annotations

import itertools
import logging

import torch
from torch import nn

from ._arch import (
    RESNET9_OUTPUT_SCALE,
    DatasetShape,
    cnn_channels,
    mlp_dims,
    mobilenet_blocks,
    resnet9_channels,
    resnet18_stages,
)

logger = logging.getLogger(__name__)

DTYPE = torch.float64


def build_model(
    model: str, width: int, depth: int, shape: DatasetShape, seed: int
) -> nn.Module:
    """Build a network with PyTorch's default initialisation, seeded.

    Parameters
    ----------
    model
        ``"mlp"``, ``"cnn"``, ``"resnet9"``, ``"resnet18"`` or ``"mobilenet"``.
    width
        MLP: units per hidden layer. CNN: channels of the first convolution.
        ResNet9: channels of the prep layer. ResNet18 and MobileNet: channels
        of the stem convolution.
    depth
        Number of hidden layers of the MLP. The other models ignore it.
    shape
        Input shape and number of outputs.
    seed
        Seed of ``torch.manual_seed`` for the initial weights. The global
        torch random state of the caller is restored afterwards.

    Returns
    -------
    torch.nn.Module
        The network in eval mode, with float64 parameters on the CPU.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model == "mlp":
            network: nn.Module = MLP(width, depth, shape)
        elif model == "cnn":
            network = SmallCNN(width, shape)
        elif model == "resnet9":
            network = ResNet9(width, shape)
        elif model == "resnet18":
            network = ResNet18(width, shape)
        elif model == "mobilenet":
            network = MobileNet(width, shape)
        else:
            raise ValueError(f"unknown model {model!r}")
    return network.eval()


class MLP(nn.Module):
    """Fully connected ReLU network on the flattened image.

    ``depth`` hidden layers of ``width`` units each, then a linear output
    layer. ``depth=0`` gives a linear model.
    """

    def __init__(self, width: int, depth: int, shape: DatasetShape) -> None:
        super().__init__()
        dims = mlp_dims(shape.features, width, depth, shape.classes)
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(d_in, d_out, dtype=DTYPE))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions with ReLU and 2x2 average pooling, then global
    average pooling and a linear layer.

    The convolutions have ``width`` and ``2 * width`` output channels.
    """

    def __init__(self, width: int, shape: DatasetShape) -> None:
        super().__init__()
        c1, c2 = cnn_channels(width)
        self.features = nn.Sequential(
            nn.Conv2d(shape.channels, c1, 3, padding=1, dtype=DTYPE),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1, dtype=DTYPE),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(c2, shape.classes, dtype=DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _conv_block(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, dtype=DTYPE),
        nn.GroupNorm(1, c_out, dtype=DTYPE),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    """Two convolution blocks with an identity shortcut: ``x + f(x)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_block(channels, channels), _conv_block(channels, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """ResNet9 in the layout of the DAWNBench CIFAR-10 network.

    The layers are: a prep convolution block, layer 1 (convolution block, 2x2
    max pooling, residual pair), layer 2 (convolution block, pooling), layer 3
    (convolution block, pooling, residual pair), global max pooling, and a
    linear head without bias whose output is scaled by 0.125. Channels are
    ``width`` for the prep block and ``2, 4, 8 * width`` for layers 1 to 3, so
    ``width=64`` gives the original sizes. Batch norm is replaced by
    ``GroupNorm(1, channels)`` (see the module docstring).
    """

    def __init__(self, width: int, shape: DatasetShape) -> None:
        super().__init__()
        prep, c1, c2, c3 = resnet9_channels(width)
        self.features = nn.Sequential(
            _conv_block(shape.channels, prep),
            _conv_block(prep, c1, pool=True),
            _Residual(c1),
            _conv_block(c1, c2, pool=True),
            _conv_block(c2, c3, pool=True),
            _Residual(c3),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(c3, shape.classes, bias=False, dtype=DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RESNET9_OUTPUT_SCALE * self.head(self.features(x))


def _conv_norm(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    """Return a convolution without bias and its GroupNorm, without activation."""
    return [
        nn.Conv2d(
            c_in,
            c_out,
            kernel,
            stride=stride,
            padding=kernel // 2,
            groups=groups,
            bias=False,
            dtype=DTYPE,
        ),
        nn.GroupNorm(1, c_out, dtype=DTYPE),
    ]


class _BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions, and a 1x1 convolution on the
    shortcut when the stride or the channel count changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_norm(c_in, c_out, 3, stride),
            nn.ReLU(),
            *_conv_norm(c_out, c_out, 3),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(*_conv_norm(c_in, c_out, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet18 in its CIFAR layout: a 3x3 stem convolution with stride 1 and
    no max pooling, four stages of two basic blocks with ``1, 2, 4, 8 *
    width`` channels and strides 1, 2, 2, 2, global average pooling and a
    linear head. ``width=64`` gives the usual sizes (11.2 million parameters
    on CIFAR-10). Batch norm is replaced by ``GroupNorm(1, channels)``.
    """

    def __init__(self, width: int, shape: DatasetShape) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_norm(shape.channels, width, 3), nn.ReLU()]
        c_in = width
        for c_out, stride in resnet18_stages(width):
            layers.append(_BasicBlock(c_in, c_out, stride))
            layers.append(_BasicBlock(c_out, c_out, 1))
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, shape.classes, dtype=DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MobileNet(nn.Module):
    """Small MobileNet: a 3x3 stem convolution, six depthwise-separable blocks
    (a 3x3 depthwise convolution, then a 1x1 pointwise one, each normalised and
    followed by ReLU) with ``2, 4, 4, 8, 8, 16 * width`` output channels and
    strides 1, 2, 1, 2, 1, 2, global average pooling and a linear head. Batch
    norm is replaced by ``GroupNorm(1, channels)``.
    """

    def __init__(self, width: int, shape: DatasetShape) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_norm(shape.channels, width, 3), nn.ReLU()]
        c_in = width
        for c_out, stride in mobilenet_blocks(width):
            layers += [*_conv_norm(c_in, c_in, 3, stride, groups=c_in), nn.ReLU()]
            layers += [*_conv_norm(c_in, c_out, 1), nn.ReLU()]
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, shape.classes, dtype=DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
