"""Shapes of the data sets and sizes of the networks, without torch.

The counts here let :class:`~ldbench_ntk.NTKSource` describe a matrix and its
formation cost without building the network. ``tests/test_ntk.py`` checks the
parameter counts against the torch models of :mod:`ldbench_ntk._models`.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

MODELS = ("mlp", "cnn", "resnet9")

#: Width used when the ``width`` parameter is not set, per model.
DEFAULT_WIDTH = {"mlp": 128, "cnn": 32, "resnet9": 16}

#: Output scale of the ResNet9 head, as in the DAWNBench CIFAR-10 network.
RESNET9_OUTPUT_SCALE = 0.125


@dataclass(frozen=True)
class DatasetShape:
    """Image shape, class count and training-set size of a data set."""

    channels: int
    height: int
    width: int
    classes: int
    size: int

    @property
    def features(self) -> int:
        """Number of input values per sample, ``channels * height * width``."""
        return self.channels * self.height * self.width


DATASETS = {
    "digits": DatasetShape(channels=1, height=8, width=8, classes=10, size=1797),
    "mnist": DatasetShape(channels=1, height=28, width=28, classes=10, size=60000),
    "cifar10": DatasetShape(channels=3, height=32, width=32, classes=10, size=50000),
}


@dataclass(frozen=True)
class ArchitectureCost:
    """Size and per-sample cost of a network.

    Attributes
    ----------
    parameters
        Number of trainable scalars P.
    forward_macs
        Multiply-adds of one forward pass on one sample, counting linear and
        convolution layers only (normalisation, activations and pooling are
        left out, as they cost far less).
    activations
        Estimated number of intermediate values that one forward pass on one
        sample produces. It only sizes the Jacobian work space.
    """

    parameters: int
    forward_macs: int
    activations: int


def mlp_dims(features: int, width: int, depth: int, classes: int) -> list[int]:
    """Return the layer sizes of the MLP, input first and output last."""
    return [features] + [width] * depth + [classes]


def cnn_channels(width: int) -> tuple[int, int]:
    """Return the output channels of the two convolutions of the small CNN."""
    return (width, 2 * width)


def resnet9_channels(width: int) -> tuple[int, int, int, int]:
    """Return the channels of the prep layer and of layers 1, 2 and 3.

    ``width=64`` gives the channels of the DAWNBench ResNet9 (64, 128, 256, 512).
    """
    return (width, 2 * width, 4 * width, 8 * width)


def architecture_cost(
    model: str, width: int, depth: int, shape: DatasetShape
) -> ArchitectureCost:
    """Return the parameter count and per-sample cost of a network.

    Parameters
    ----------
    model
        ``"mlp"``, ``"cnn"`` or ``"resnet9"``.
    width
        Width parameter of the model, as :mod:`ldbench_ntk._models` reads it.
    depth
        Number of hidden layers of the MLP. The other models ignore it.
    shape
        Input shape and number of outputs.
    """
    if model == "mlp":
        return _mlp_cost(width, depth, shape)
    if model == "cnn":
        return _cnn_cost(width, shape)
    if model == "resnet9":
        return _resnet9_cost(width, shape)
    raise ValueError(f"unknown model {model!r}; expected one of {list(MODELS)}")


def _mlp_cost(width: int, depth: int, shape: DatasetShape) -> ArchitectureCost:
    dims = mlp_dims(shape.features, width, depth, shape.classes)
    parameters = sum(a * b + b for a, b in itertools.pairwise(dims))
    macs = sum(a * b for a, b in itertools.pairwise(dims))
    # Each hidden layer stores its linear output and its ReLU output.
    activations = 2 * width * depth + shape.classes
    return ArchitectureCost(parameters, macs, activations)


def _cnn_cost(width: int, shape: DatasetShape) -> ArchitectureCost:
    c1, c2 = cnn_channels(width)
    h, w = shape.height, shape.width
    h1, w1 = h // 2, w // 2
    parameters = 9 * shape.channels * c1 + c1 + 9 * c1 * c2 + c2
    parameters += c2 * shape.classes + shape.classes
    macs = 9 * shape.channels * c1 * h * w + 9 * c1 * c2 * h1 * w1
    macs += c2 * shape.classes
    # Convolution and ReLU outputs at full size, then the pooled maps.
    activations = 2 * c1 * h * w + c1 * h1 * w1 + 2 * c2 * h1 * w1
    activations += c2 * (h1 // 2) * (w1 // 2) + c2 + shape.classes
    return ArchitectureCost(parameters, macs, activations)


def _resnet9_cost(width: int, shape: DatasetShape) -> ArchitectureCost:
    prep, c1, c2, c3 = resnet9_channels(width)
    parameters = 0
    macs = 0
    activations = 0

    def conv_block(c_in: int, c_out: int, h: int, w: int) -> None:
        # 3x3 convolution without bias, then a normalisation with a scale and a
        # shift per channel, then ReLU.
        nonlocal parameters, macs, activations
        parameters += 9 * c_in * c_out + 2 * c_out
        macs += 9 * c_in * c_out * h * w
        activations += 3 * c_out * h * w

    h, w = shape.height, shape.width
    conv_block(shape.channels, prep, h, w)
    conv_block(prep, c1, h, w)
    h, w = h // 2, w // 2
    conv_block(c1, c1, h, w)
    conv_block(c1, c1, h, w)
    conv_block(c1, c2, h, w)
    h, w = h // 2, w // 2
    conv_block(c2, c3, h, w)
    h, w = h // 2, w // 2
    conv_block(c3, c3, h, w)
    conv_block(c3, c3, h, w)
    parameters += c3 * shape.classes
    macs += c3 * shape.classes
    activations += c3 + shape.classes
    return ArchitectureCost(parameters, macs, activations)
