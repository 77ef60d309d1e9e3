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

MODELS = ("mlp", "cnn", "resnet9", "resnet18", "mobilenet")

#: Width used when the ``width`` parameter is not set, per model.
DEFAULT_WIDTH = {"mlp": 128, "cnn": 32, "resnet9": 16, "resnet18": 16, "mobilenet": 8}

#: Output channels (as multiples of ``width``) and strides of the
#: depthwise-separable blocks of the small MobileNet.
MOBILENET_BLOCKS = ((2, 1), (4, 2), (4, 1), (8, 2), (8, 1), (16, 2))

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


def resnet18_stages(width: int) -> list[tuple[int, int]]:
    """Return ``(channels, stride)`` of the four stages of the CIFAR ResNet18.

    ``width=64`` gives the channels of the original network (64 to 512).
    """
    return [(width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)]


def mobilenet_blocks(width: int) -> list[tuple[int, int]]:
    """Return ``(output channels, stride)`` of the depthwise-separable blocks."""
    return [(factor * width, stride) for factor, stride in MOBILENET_BLOCKS]


def strided(size: int, stride: int) -> int:
    """Return the output size of a 3x3 convolution with padding 1 (or of a 1x1
    convolution without padding) with ``stride``, on an input of ``size``."""
    return (size - 1) // stride + 1


def architecture_cost(
    model: str, width: int, depth: int, shape: DatasetShape
) -> ArchitectureCost:
    """Return the parameter count and per-sample cost of a network.

    Parameters
    ----------
    model
        One of :data:`MODELS`.
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
    if model == "resnet18":
        return _resnet18_cost(width, shape)
    if model == "mobilenet":
        return _mobilenet_cost(width, shape)
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


class _Tally:
    """Running totals of parameters, multiply-adds and activations."""

    def __init__(self) -> None:
        self.parameters = 0
        self.macs = 0
        self.activations = 0

    def conv(
        self, c_in: int, c_out: int, kernel: int, h: int, w: int, groups: int = 1
    ) -> None:
        """Count a convolution without bias, followed by GroupNorm (a scale and
        a shift per channel); ``h`` and ``w`` are the output size."""
        weights = kernel * kernel * (c_in // groups) * c_out
        self.parameters += weights + 2 * c_out
        self.macs += weights * h * w
        # Convolution output, normalised output and activation output.
        self.activations += 3 * c_out * h * w

    def head(self, features: int, classes: int) -> ArchitectureCost:
        """Count the linear head with bias and return the totals."""
        self.parameters += features * classes + classes
        self.macs += features * classes
        self.activations += features + classes
        return ArchitectureCost(self.parameters, self.macs, self.activations)


def _resnet18_cost(width: int, shape: DatasetShape) -> ArchitectureCost:
    tally = _Tally()
    h, w = shape.height, shape.width
    tally.conv(shape.channels, width, 3, h, w)
    c_in = width
    for c_out, stride in resnet18_stages(width):
        for block in range(2):
            step = stride if block == 0 else 1
            h, w = strided(h, step), strided(w, step)
            tally.conv(c_in, c_out, 3, h, w)
            tally.conv(c_out, c_out, 3, h, w)
            if step != 1 or c_in != c_out:
                tally.conv(c_in, c_out, 1, h, w)
            c_in = c_out
    return tally.head(c_in, shape.classes)


def _mobilenet_cost(width: int, shape: DatasetShape) -> ArchitectureCost:
    tally = _Tally()
    h, w = shape.height, shape.width
    tally.conv(shape.channels, width, 3, h, w)
    c_in = width
    for c_out, stride in mobilenet_blocks(width):
        h, w = strided(h, stride), strided(w, stride)
        tally.conv(c_in, c_in, 3, h, w, groups=c_in)
        tally.conv(c_in, c_out, 1, h, w)
        c_in = c_out
    return tally.head(c_in, shape.classes)
