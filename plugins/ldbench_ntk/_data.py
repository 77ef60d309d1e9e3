"""Image data for the ``ntk`` source: readers, sample order and scaling.

Digits comes with scikit-learn. MNIST and CIFAR-10 are read from a local
folder in their standard distribution formats and are never downloaded:

- MNIST: ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (IDX
  format, optionally gzip-compressed with a ``.gz`` suffix) in the data folder,
  in ``<folder>/mnist`` or in ``<folder>/MNIST/raw``.
- CIFAR-10: ``cifar-10-batches-py/data_batch_1`` to ``data_batch_5`` (Python
  pickle format) or ``cifar-10-batches-bin/data_batch_1.bin`` to
  ``data_batch_5.bin`` (binary format), in the data folder or in
  ``<folder>/cifar10``.

The data folder is the ``data_dir`` parameter, else the ``LDBENCH_DATA``
environment variable, else ``./data``. Only the training sets are read.
"""

from __future__ import annotations

import codecs
import gzip
import logging
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ._arch import DATASETS

logger = logging.getLogger(__name__)

DATA_ENV = "LDBENCH_DATA"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_PY_DIR = "cifar-10-batches-py"
CIFAR_BIN_DIR = "cifar-10-batches-bin"
_CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte, then 1024 bytes per channel


@dataclass
class ImageData:
    """A training set held in memory.

    Attributes
    ----------
    images
        Raw pixel values, shape ``(N, channels, height, width)``.
    labels
        Class index of each image, shape ``(N,)``, int64.
    scale
        Largest raw pixel value (255 for uint8 data, 16 for digits). Pixels
        are divided by it to lie in [0, 1].
    """

    images: np.ndarray
    labels: np.ndarray
    scale: float


def data_root(data_dir: str) -> Path:
    """Return the data folder: ``data_dir``, else ``$LDBENCH_DATA``, else ./data."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV, "")
    return Path(env).expanduser() if env else Path("data")


def data_files(dataset: str, data_dir: str) -> list[Path]:
    """Return the files of ``dataset`` under the data folder.

    Returns an empty list for digits, which scikit-learn provides.

    Raises
    ------
    FileNotFoundError
        When the files are missing. The message names every folder searched
        and how to provide the files.
    """
    if dataset == "digits":
        return []
    root = data_root(data_dir)
    if dataset == "mnist":
        return list(_find_mnist(root, data_dir))
    if dataset == "cifar10":
        return _find_cifar10(root, data_dir)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")


def _origin(data_dir: str) -> str:
    if data_dir:
        return "the data_dir parameter"
    if os.environ.get(DATA_ENV):
        return f"${DATA_ENV}"
    return f"the default ./data, as ${DATA_ENV} is not set"


def _find_mnist(root: Path, data_dir: str) -> tuple[Path, Path]:
    folders = [root, root / "mnist", root / "MNIST" / "raw"]
    looked: list[str] = []
    for folder in folders:
        found = []
        for name in MNIST_FILES:
            for candidate in (folder / name, folder / f"{name}.gz"):
                looked.append(str(candidate.absolute()))
                if candidate.is_file():
                    found.append(candidate)
                    break
        if len(found) == 2:
            return found[0], found[1]
    raise FileNotFoundError(
        f"MNIST training files not found in the data folder {str(root.absolute())!r} "
        f"(from {_origin(data_dir)}). Searched: "
        + ", ".join(looked)
        + ". Put train-images-idx3-ubyte and train-labels-idx1-ubyte (optionally "
        "gzip-compressed, with a .gz suffix) in one of these folders, and point "
        f"the data_dir parameter or the {DATA_ENV} environment variable at the "
        "data folder. ldbench does not download data sets."
    )


def _find_cifar10(root: Path, data_dir: str) -> list[Path]:
    looked: list[str] = []
    for base in (root, root / "cifar10"):
        python_dir = base / CIFAR_PY_DIR
        binary_dir = base / CIFAR_BIN_DIR
        layouts = (
            [python_dir / name for name in CIFAR_BATCHES],
            [binary_dir / f"{name}.bin" for name in CIFAR_BATCHES],
        )
        for paths in layouts:
            looked.append(str(paths[0].parent.absolute()))
            if all(path.is_file() for path in paths):
                return paths
    raise FileNotFoundError(
        f"CIFAR-10 training batches not found in the data folder "
        f"{str(root.absolute())!r} (from {_origin(data_dir)}). Searched the folders "
        + ", ".join(looked)
        + " for data_batch_1 to data_batch_5 (Python format, folder "
        f"{CIFAR_PY_DIR}) or data_batch_1.bin to data_batch_5.bin (binary "
        f"format, folder {CIFAR_BIN_DIR}). Extract cifar-10-python.tar.gz or "
        "cifar-10-binary.tar.gz into the data folder, and point the data_dir "
        f"parameter or the {DATA_ENV} environment variable at it. ldbench does "
        "not download data sets."
    )


def count_samples(dataset: str, data_dir: str) -> int:
    """Return the training-set size from the file headers, without reading data.

    For CIFAR-10 in Python format the count is the standard 50,000, as only
    unpickling would tell.
    """
    if dataset == "digits":
        return DATASETS["digits"].size
    paths = data_files(dataset, data_dir)
    if dataset == "mnist":
        with _open(paths[1]) as stream:
            return _read_idx_header(stream, paths[1])[0]
    if paths[0].suffix == ".bin":
        return sum(path.stat().st_size // _CIFAR_RECORD for path in paths)
    return DATASETS["cifar10"].size


# --- readers ---------------------------------------------------------------


def _open(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _read_idx_header(stream: BinaryIO, path: Path) -> tuple[int, ...]:
    head = stream.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
        raise ValueError(
            f"{path} is not an IDX file of unsigned bytes (magic number "
            f"{head.hex() or 'missing'}, expected 000008xx)"
        )
    ndim = head[3]
    raw = stream.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise ValueError(f"{path}: IDX header is truncated")
    return struct.unpack(f">{ndim}I", raw)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes, optionally gzip-compressed.

    Returns
    -------
    numpy.ndarray
        uint8 array with the shape given in the file header.
    """
    with _open(Path(path)) as stream:
        shape = _read_idx_header(stream, Path(path))
        payload = stream.read()
    expected = int(np.prod(shape, dtype=np.int64))
    if len(payload) != expected:
        raise ValueError(
            f"{path}: IDX header gives shape {shape} ({expected} bytes) but the "
            f"file holds {len(payload)} data bytes"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def read_mnist(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read MNIST images and labels from IDX files.

    Returns
    -------
    images : numpy.ndarray
        uint8, shape ``(N, 1, height, width)``.
    labels : numpy.ndarray
        int64, shape ``(N,)``.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"MNIST files do not match: {images_path} has shape {images.shape}, "
            f"{labels_path} has shape {labels.shape}; expected (N, rows, cols) "
            "and (N,)"
        )
    return images[:, None, :, :], labels.astype(np.int64)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as
    # _codecs.encode(str, "latin1"), so only that call is allowed.
    if not isinstance(text, str) or encoding.lower() not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"_codecs.encode called with encoding {encoding!r}; only latin1 is allowed"
        )
    return codecs.encode(text, "latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # The function that ndarray.__reduce__ names, whatever numpy calls its
    # module (numpy.core before NumPy 2, numpy._core since).
    reconstruct = np.zeros(1).__reduce__()[0]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR-10 batch needs.

    A batch is a dict of bytes, lists of ints and uint8 NumPy arrays, so the
    only callables it names are NumPy's array and dtype constructors (and
    ``_codecs.encode`` in pickles written by Python 3). Any other global,
    such as ``os.system``, raises ``pickle.UnpicklingError`` before it is
    looked up, so no code named in the file runs.
    """

    def __init__(self, stream: BinaryIO, path: Path) -> None:
        super().__init__(stream, encoding="bytes")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self._path}: rejected global {module}.{name}; a CIFAR-10 batch "
                "contains only NumPy arrays, lists and bytes. The file is not a "
                "CIFAR-10 batch or has been tampered with."
            ) from None


def _entry(batch: dict[Any, Any], key: str) -> Any:
    if key.encode() in batch:
        return batch[key.encode()]
    return batch.get(key)


def read_cifar_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch in Python pickle format, without running code.

    Returns
    -------
    images : numpy.ndarray
        uint8, shape ``(N, 3, 32, 32)``.
    labels : numpy.ndarray
        int64, shape ``(N,)``.
    """
    path = Path(path)
    with open(path, "rb") as stream:
        batch = _CifarUnpickler(stream, path).load()
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data = _entry(batch, "data")
    labels = _entry(batch, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{path}: 'data' must be a 2-D uint8 array")
    if data.shape[1] != _CIFAR_RECORD - 1:
        raise ValueError(
            f"{path}: 'data' rows have {data.shape[1]} values, expected "
            f"{_CIFAR_RECORD - 1} (3 channels of 32x32)"
        )
    label_array = np.asarray(labels, dtype=np.int64)
    if label_array.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {label_array.size} labels for {data.shape[0]} images"
        )
    return data.reshape(-1, 3, 32, 32), label_array


def read_cifar_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch in binary format (3073-byte records).

    Returns
    -------
    images : numpy.ndarray
        uint8, shape ``(N, 3, 32, 32)``.
    labels : numpy.ndarray
        int64, shape ``(N,)``.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % _CIFAR_RECORD:
        raise ValueError(
            f"{path}: size {raw.size} bytes is not a multiple of the "
            f"{_CIFAR_RECORD}-byte CIFAR-10 record"
        )
    records = raw.reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_dataset(dataset: str, data_dir: str) -> ImageData:
    """Load the whole training set of ``dataset`` into memory."""
    if dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.images.reshape(-1, 1, 8, 8).astype(np.float64)
        return ImageData(images, digits.target.astype(np.int64), 16.0)
    paths = data_files(dataset, data_dir)
    logger.info("reading %s from %s", dataset, paths[0].parent)
    if dataset == "mnist":
        images, labels = read_mnist(paths[0], paths[1])
    else:
        reader = (
            read_cifar_binary_batch
            if paths[0].suffix == ".bin"
            else (read_cifar_python_batch)
        )
        parts = [reader(path) for path in paths]
        images = np.concatenate([part[0] for part in parts])
        labels = np.concatenate([part[1] for part in parts])
    expected = DATASETS[dataset]
    if images.shape[1:] != (expected.channels, expected.height, expected.width):
        raise ValueError(
            f"{dataset} images in {paths[0].parent} have shape {images.shape[1:]}, "
            f"expected {(expected.channels, expected.height, expected.width)}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= expected.classes):
        raise ValueError(
            f"{dataset} labels in {paths[0].parent} lie outside "
            f"0..{expected.classes - 1}"
        )
    return ImageData(images, labels, 255.0)


# --- samples ---------------------------------------------------------------


def channel_stats(data: ImageData) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean and standard deviation of each channel over all images.

    Both are in units of the [0, 1] scaled pixels, shape ``(channels,)``.
    uint8 images are summarised through a histogram of the 256 values, which
    is exact and needs no float copy of the data set.
    """
    channels = data.images.shape[1]
    mean = np.empty(channels)
    std = np.empty(channels)
    values = np.arange(256, dtype=np.float64)
    for c in range(channels):
        plane = data.images[:, c]
        if plane.dtype == np.uint8:
            counts = np.bincount(plane.ravel(), minlength=256).astype(np.float64)
            total = counts.sum()
            mu = counts @ values / total
            var = counts @ (values - mu) ** 2 / total
        else:
            mu = float(plane.mean())
            var = float(plane.var())
        mean[c] = mu / data.scale
        std[c] = np.sqrt(var) / data.scale
    return mean, std


def sample_order(labels: np.ndarray, seed: int, balanced: bool) -> np.ndarray:
    """Return a seeded permutation of the sample indices.

    The first n entries are the n samples of the matrix, so the samples of
    a smaller n are a prefix of those of a larger n with the same seed. With
    ``balanced``, the permutation cycles through the classes (in a random
    class order in each cycle), so every prefix has nearly equal class counts.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(labels.size)
    if not balanced:
        return order
    shuffled = labels[order]
    rank = np.empty(labels.size, dtype=np.int64)
    for label in np.unique(shuffled):
        members = np.flatnonzero(shuffled == label)
        rank[members] = np.arange(members.size)
    # A stable sort by rank within class keeps the random order inside each
    # cycle, which makes the class order of each cycle random.
    return order[np.argsort(rank, kind="stable")]


def select_samples(
    data: ImageData, n: int, seed: int, balanced: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Return the first ``n`` samples of the seeded order, normalised.

    Pixels are scaled to [0, 1], then each channel is shifted by its mean and
    divided by its standard deviation over the whole training set.

    Returns
    -------
    inputs : numpy.ndarray
        float64, shape ``(n, channels, height, width)``.
    labels : numpy.ndarray
        int64, shape ``(n,)``.
    """
    if n > data.labels.size:
        raise ValueError(f"n = {n} exceeds the {data.labels.size} samples available")
    index = sample_order(data.labels, seed, balanced)[:n]
    mean, std = channel_stats(data)
    inputs = data.images[index].astype(np.float64) / data.scale
    inputs -= mean[None, :, None, None]
    inputs /= np.where(std > 0, std, 1.0)[None, :, None, None]
    return inputs, data.labels[index]
