"""The ``dense`` solver: one LAPACK factorisation of the whole matrix in memory."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from ldbench import (
    Estimate,
    MatrixHandle,
    MatrixInfo,
    Param,
    SolveContext,
    Solver,
    SolverError,
    Structure,
    factorization_flops,
)

from ._factor import FactorResult, cholesky_logdet, ldl_logdet, lu_logdet

logger = logging.getLogger(__name__)

_FACTORS: dict[str, Callable[[np.ndarray], FactorResult]] = {
    "cholesky": cholesky_logdet,
    "ldl": ldl_logdet,
    "lu": lu_logdet,
}
_REQUIRED_STRUCTURE = {
    "cholesky": Structure.SPD,
    "ldl": Structure.SYMMETRIC,
    "lu": Structure.GENERAL,
}
_LABELS = {"cholesky": "Cholesky", "ldl": "LDL", "lu": "LU"}

# Elements per chunk of the finiteness check, so its boolean temporary stays at
# about 4 MB for a matrix of any order.
_CHECK_ELEMENTS = 1 << 22


class DenseSolver(Solver):
    """Exact log-determinant from a float64 LAPACK factorisation in memory.

    The whole matrix is read into memory (8 m^2 bytes) and factored in place
    by scipy's LAPACK wrappers. Cholesky of order above 16,384 is blocked
    around LAPACK (see :func:`ldbench.cholesky_diagonal`), because the threaded ``dpotrf`` of the OpenBLAS that SciPy 1.17 bundles
    crashed at every order tried from 22,900 to 30,000. At order 30,000 the
    blocked factorisation ran at 72.9 GFLOP/s, against 80 to 88 GFLOP/s for
    one ``dpotrf`` call at orders 16,000 to 22,600 (2-core Intel Xeon,
    24 GiB).

    ``logabsdet`` is the natural log of ``|det A|``, summed from the logs of
    the pivots. An exactly singular matrix (a zero pivot in LU or LDL) gives
    ``-inf`` with sign 0, while Cholesky raises :class:`ldbench.SolverError`
    on any pivot that is not positive.

    FLOPs, with a multiply-add counted as two: m^3/3 for Cholesky and LDL,
    2 m^3/3 for LU.
    """

    name: ClassVar[str] = "dense"
    version: ClassVar[str] = "1"
    parameters: ClassVar[dict[str, Param]] = {
        "method": Param(
            "lu",
            str,
            help="LAPACK factorisation: 'cholesky' (SPD), 'ldl' (symmetric, "
            "Bunch-Kaufman pivoting) or 'lu' (general, partial pivoting).",
            choices=("cholesky", "ldl", "lu"),
        ),
    }
    structures: ClassVar[frozenset[Structure]] = frozenset(Structure)
    requires: ClassVar[tuple[str, ...]] = ("scipy",)
    stochastic: ClassVar[bool] = False
    device: ClassVar[str] = "cpu"

    def required_structure(self) -> Structure:
        """Return SPD for Cholesky, symmetric for LDL and general for LU."""
        return _REQUIRED_STRUCTURE[self.params["method"]]

    def label(self) -> str:
        """Return the method name, such as ``"Cholesky"``."""
        return _LABELS[self.params["method"]]

    def flops(self, info: MatrixInfo) -> float:
        """Return m^3/3 (Cholesky, LDL) or 2 m^3/3 (LU) for ``m = info.order``."""
        return self._flop_count(info.order)

    def _flop_count(self, order: int) -> float:
        return factorization_flops(self.params["method"], order)

    def solve(self, matrix: MatrixHandle, context: SolveContext) -> Estimate:
        """Factor the readable block of ``matrix`` and return its log-determinant.

        Raises
        ------
        SolverError
            When the matrix has a NaN or infinite entry, or when Cholesky meets
            a pivot that is not positive.
        """
        method = self.params["method"]
        order = matrix.order
        logger.debug("dense %s: reading a matrix of order %d", method, order)
        array = matrix.read()
        _check_finite(array)
        if method != "lu":
            _check_symmetric(array, method)

        # For a C-ordered array the transpose is a Fortran-ordered view, so
        # LAPACK factors it in place. det(A^T) = det(A), and for the symmetric
        # methods A^T is A.
        fortran = np.asfortranarray(array.T)
        logabsdet, sign, details = _FACTORS[method](fortran)
        details = {"method": method, **details}
        logger.debug("dense %s: logabsdet=%r sign=%r", method, logabsdet, sign)
        return Estimate(
            logabsdet=logabsdet,
            sign=sign,
            flops=self._flop_count(order),
            read_order=order,
            details=details,
        )


SYMMETRY_RTOL = 1e-10


def _check_symmetric(array: np.ndarray, method: str) -> None:
    """Raise SolverError when ``array`` is not symmetric to ``SYMMETRY_RTOL``
    relative to its largest entry, because Cholesky and LDL read one triangle
    and would return the log-det of a different matrix."""
    asymmetry = np.abs(array - array.T)
    worst = int(np.argmax(asymmetry)) if asymmetry.size else 0
    value = float(asymmetry.flat[worst]) if asymmetry.size else 0.0
    scale = float(np.abs(array).max(initial=0.0))
    if value > SYMMETRY_RTOL * scale:
        row, col = np.unravel_index(worst, array.shape)
        raise SolverError(
            f"method {method!r} needs a symmetric matrix, but |A[{row},{col}] - "
            f"A[{col},{row}]| = {value:.3e} (largest entry {scale:.3e}). Use "
            "method 'lu' for a general matrix."
        )


def _check_finite(array: np.ndarray) -> None:
    """Raise SolverError naming the first NaN or infinite entry of ``array``."""
    order = array.shape[0]
    rows = max(1, _CHECK_ELEMENTS // max(order, 1))
    for start in range(0, order, rows):
        chunk = array[start : start + rows]
        bad = ~np.isfinite(chunk)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            value = chunk[row, col]
            raise SolverError(
                f"matrix entry ({start + row}, {col}) is {value}, but a "
                "log-determinant needs finite entries. Check how the matrix "
                "was formed."
            )
