"""Matrices with closed-form log-determinants for :mod:`ldbench.testing`.

Each builder returns a :class:`TestMatrix` in memory; :func:`write_matrix`
stores one as the dataset ``"matrix"`` of an HDF5 file, which is what a
:class:`ldbench.MatrixHandle` reads.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ._api import Structure

logger = logging.getLogger(__name__)

KMS_RHO = 0.5
IDENTITY_SCALE = 2.5
SPECTRUM_MAX_EIG = 1.0
SPECTRUM_MIN_EIG = 1e-2


@dataclass(frozen=True)
class TestMatrix:
    """An in-memory test matrix and its exact log-determinant.

    Attributes
    ----------
    label
        Name used in check messages, such as ``"kms m=64"``.
    array
        The ``m x m`` float64 matrix.
    structure
        Strongest structure the matrix has.
    logabsdet
        Exact natural log of ``|det A|``.
    sign
        Sign of ``det A``: -1 or 1.
    """

    __test__ = False  # not a pytest test class, despite the name

    label: str
    array: np.ndarray
    structure: Structure
    logabsdet: float
    sign: float

    @property
    def order(self) -> int:
        """Number of rows m."""
        return int(self.array.shape[0])


def identity(order: int, scale: float = IDENTITY_SCALE) -> TestMatrix:
    """Return ``scale * I`` with log-det ``m log(scale)``."""
    array = scale * np.eye(order)
    return TestMatrix(
        f"identity m={order}", array, Structure.SPD, order * math.log(scale), 1.0
    )


def kms(order: int, rho: float = KMS_RHO) -> TestMatrix:
    """Return the Kac-Murdock-Szego matrix ``rho**|i-j|``.

    Its log-det is ``(m - 1) log(1 - rho^2)``, and every leading block of
    order k is the KMS matrix of order k.
    """
    index = np.arange(order)
    array = rho ** np.abs(index[:, None] - index[None, :]).astype(np.float64)
    logdet = (order - 1) * math.log1p(-(rho**2))
    return TestMatrix(f"kms m={order}", array, Structure.SPD, logdet, 1.0)


def orthogonal(order: int, seed: int) -> np.ndarray:
    """Return a Haar-random orthogonal matrix drawn with ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((order, order)))
    return q * np.sign(np.diagonal(r))


def _rotated(eigenvalues: np.ndarray, seed: int) -> np.ndarray:
    q = orthogonal(eigenvalues.size, seed)
    array = (q * eigenvalues) @ q.T
    return 0.5 * (array + array.T)  # exactly symmetric despite rounding


def spectrum(
    order: int,
    seed: int = 0,
    max_eig: float = SPECTRUM_MAX_EIG,
    min_eig: float = SPECTRUM_MIN_EIG,
) -> TestMatrix:
    """Return ``Q diag(lambda) Q^T`` with a geometric spectrum from ``max_eig``
    down to ``min_eig`` and log-det ``sum(log(lambda))``."""
    eigenvalues = np.geomspace(max_eig, min_eig, order)
    logdet = float(np.sum(np.log(eigenvalues)))
    return TestMatrix(
        f"spectrum m={order}", _rotated(eigenvalues, seed), Structure.SPD, logdet, 1.0
    )


def indefinite(order: int, seed: int = 0) -> TestMatrix:
    """Return a symmetric matrix with one negative eigenvalue, -3, and the
    others evenly spaced in [0.5, 1]; its determinant is negative.

    The negative eigenvalue is the one of largest magnitude, so Lanczos and
    power iterations find it within a few steps.
    """
    eigenvalues = np.linspace(1.0, 0.5, order)
    eigenvalues[-1] = -3.0
    logdet = float(np.sum(np.log(np.abs(eigenvalues))))
    return TestMatrix(
        f"indefinite m={order}",
        _rotated(eigenvalues, seed),
        Structure.SYMMETRIC,
        logdet,
        -1.0,
    )


def nonsymmetric(order: int, seed: int = 0) -> TestMatrix:
    """Return ``D + u v^T``, a diagonal plus a non-symmetric rank-one matrix.

    By the matrix determinant lemma, ``det = det(D) (1 + v^T D^-1 u)``. The
    rank-one term is large enough that reading one triangle and assuming
    symmetry gives a different determinant.
    """
    rng = np.random.default_rng(seed)
    diagonal = np.linspace(1.0, 2.0, order)
    u = rng.standard_normal(order)
    v = rng.standard_normal(order)
    array = np.diag(diagonal) + np.outer(u, v)
    factor = 1.0 + float(np.sum(v * u / diagonal))
    logdet = float(np.sum(np.log(diagonal))) + math.log(abs(factor))
    sign = 1.0 if factor > 0 else -1.0
    return TestMatrix(
        f"nonsymmetric m={order}", array, Structure.GENERAL, logdet, sign
    )


def write_matrix(path: Path, array: np.ndarray, pad: int = 0) -> Path:
    """Store ``array`` as dataset ``"matrix"`` of an HDF5 file at ``path``.

    With ``pad > 0`` the dataset has order ``m + pad``: ``array`` is its
    leading block and the extra rows and columns are NaN, so a solver that
    reads past the leading block it was given sees non-finite entries.
    """
    order = array.shape[0]
    data = np.full((order + pad, order + pad), np.nan)
    data[:order, :order] = array
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", data=data)
    logger.debug("wrote a test matrix of order %d (+%d padding) to %s", order, pad, path)
    return Path(path)
