"""The ``slq`` solver: stochastic Lanczos quadrature with imate."""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

from ldbench import (
    Estimate,
    MatrixHandle,
    MatrixInfo,
    Param,
    SolveContext,
    Solver,
    SolverError,
    Structure,
)

from ._uncertainty import (
    INTERVAL_LEVEL,
    normal_interval,
    sample_summary,
    standard_error,
)

logger = logging.getLogger(__name__)

# imate takes a non-negative int64 seed and seeds from the clock on a negative
# one, so context seeds are reduced into [0, 2^63).
_SEED_MODULUS = 1 << 63


class SlqSolver(Solver):
    """Log-determinant estimate ``tr log A`` by stochastic Lanczos quadrature.

    imate draws ``s`` random probe vectors and runs ``l`` Lanczos steps on
    each. The estimate is the mean of the per-probe quadratures, in natural-log
    units. The whole matrix is read into memory (8 m^2 bytes). The matrix must
    be symmetric positive definite, so the sign is always +1.

    With too few Lanczos steps the estimate can be biased upwards on matrices with
    many tiny eigenvalues (NTKs, for example), and the reported standard error
    and interval, which come from the spread of the samples, do not include
    that bias.

    FLOPs, with a multiply-add counted as two: ``2 (m^2 l + m l^2) s``, the
    matrix-vector products plus the Lanczos orthogonalisation.
    """

    name: ClassVar[str] = "slq"
    version: ClassVar[str] = "1"
    parameters: ClassVar[dict[str, Param]] = {
        "lanczos_degree": Param(
            30, int, help="Lanczos steps per probe vector, l.", minimum=1
        ),
        "samples": Param(
            20,
            int,
            help="Random probe vectors, s (at least 2 for an error estimate).",
            minimum=2,
        ),
        "num_threads": Param(
            1,
            int,
            help="CPU threads for imate's probes, or 0 for all. With more than "
            "one, results depend on thread scheduling and a seed no longer "
            "reproduces them.",
            minimum=0,
        ),
    }
    structures: ClassVar[frozenset[Structure]] = frozenset({Structure.SPD})
    requires: ClassVar[tuple[str, ...]] = ("imate",)
    stochastic: ClassVar[bool] = True
    device: ClassVar[str] = "cpu"

    def label(self) -> str:
        """Return the Lanczos degree and sample count, such as ``"l=100, s=104"``."""
        text = f"l={self.params['lanczos_degree']}, s={self.params['samples']}"
        if self.params["num_threads"] != 1:
            text += f", threads={self.params['num_threads']}"
        return text

    def flops(self, info: MatrixInfo) -> float:
        """Return ``2 (m^2 l + m l^2) s`` for ``m = info.order``."""
        return self._flop_count(info.order)

    def _flop_count(self, order: int) -> float:
        m = float(order)
        degree = float(self.params["lanczos_degree"])
        samples = float(self.params["samples"])
        return 2.0 * (m * m * degree + m * degree * degree) * samples

    def solve(self, matrix: MatrixHandle, context: SolveContext) -> Estimate:
        """Estimate the log-determinant of the readable block of ``matrix``.

        The same ``context.seed`` gives the same estimate when ``num_threads``
        is 1.

        Raises
        ------
        SolverError
            When the estimate is NaN or infinite, which happens when the
            matrix is not positive definite.
        """
        import imate

        degree = self.params["lanczos_degree"]
        samples = self.params["samples"]
        seed = context.seed % _SEED_MODULUS
        order = matrix.order
        logger.debug("slq: order %d, l=%d, s=%d, seed=%d", order, degree, samples, seed)

        array = matrix.read()
        logabsdet, info = imate.logdet(
            array,
            method="slq",
            gram=False,
            lanczos_degree=degree,
            min_num_samples=samples,
            max_num_samples=samples,
            confidence_level=INTERVAL_LEVEL,
            seed=seed,
            num_threads=self.params["num_threads"],
            return_info=True,
        )
        logabsdet = float(logabsdet)
        if not math.isfinite(logabsdet):
            raise SolverError(
                f"SLQ estimate is {logabsdet}: the Lanczos quadrature met a "
                "non-positive Ritz value, so the matrix is not positive definite. "
                "Use the dense or memdet solver with method 'ldl' or 'lu'."
            )

        summary = sample_summary(info)
        stderr = standard_error(
            info["error"]["absolute_error"], info["error"]["confidence_level"]
        )
        details: dict[str, Any] = {
            "lanczos_degree": degree,
            "samples": samples,
            "seed": seed,
            "num_threads": self.params["num_threads"],
            **summary,
            "interval_level": INTERVAL_LEVEL,
        }
        logger.debug("slq: logabsdet=%r stderr=%r", logabsdet, stderr)
        return Estimate(
            logabsdet=logabsdet,
            sign=1.0,
            flops=self._flop_count(order),
            read_order=order,
            stderr=stderr,
            interval=normal_interval(logabsdet, stderr),
            details=details,
        )
