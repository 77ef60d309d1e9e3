"""The ``matern`` matrix source."""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import numpy as np

from ldbench import (
    BlockWriter,
    MatrixInfo,
    MatrixSource,
    Param,
    ParameterError,
    Structure,
    check_leading_order,
)

from ._kernel import matern_correlation
from ._model import (
    DESIGNS,
    coregionalization_matrix,
    design_points,
    exponential_logdet_1d,
)

logger = logging.getLogger(__name__)

# Nominal FLOPs of one kernel evaluation after the distance, used by
# formation_flops: an exp or a Bessel function counts as a fixed number.
_KERNEL_FLOPS = {0.5: 2.0, 1.5: 5.0, 2.5: 8.0, math.inf: 3.0}
_BESSEL_KERNEL_FLOPS = 40.0


class MaternSource(MatrixSource):
    """Matern covariance matrix of seeded points in the unit cube.

    The n points of ``[0, 1)**dim`` come from :func:`design_points`: by
    default independent uniform draws (``design = "random"``), or a
    scrambled Halton or Sobol' sequence, or a farthest-point (``maximin``)
    or largest-conditional-variance (``maxvar``) order of ``candidates * n``
    scrambled Halton points. The kernel is

        k(x, y) = variance * matern_correlation(|x - y| / length_scale, nu)

    with Euclidean distance. With d = ``outputs`` > 1 the matrix is the linear
    model of coregionalization ``kron(k(X, X), B)``, B from
    :func:`coregionalization_matrix`, so rows are ordered sample-major (all d
    outputs of point 1, then of point 2, ...) and the order is ``m = n d``.
    ``nugget`` is added to the whole diagonal. A leading block of order
    ``k d`` is the matrix of the first k points.

    The exact log-det is known when ``dim = 1``, ``nu = 0.5`` and
    ``nugget = 0``: the kernel is then an Ornstein-Uhlenbeck covariance (see
    :func:`exponential_logdet_1d`), and
    ``log det kron(K, B) = d log det K + k log det B``.

    The design sets how regularly the leading log-determinants grow with k,
    which is what FLODANCE extrapolates: see ``docs/flodance.md``. ``maxvar``
    ranks candidates by the noise-free correlation (the nugget is ignored).

    Attributes
    ----------
    block_bytes
        Memory budget, in bytes, of the working arrays of one strip of
        samples during :meth:`form`.
    design_bytes
        Largest Cholesky factor of the candidates, ``8 * candidates * n**2``
        bytes, that the ``maxvar`` design may allocate.
    """

    name: ClassVar[str] = "matern"
    version: ClassVar[str] = "1"
    parameters: ClassVar[dict[str, Param]] = {
        "n": Param(None, int, "number of points n", minimum=1, required=True),
        "dim": Param(2, int, "dimension of the unit cube the points fill", minimum=1),
        "nu": Param(
            1.5, float, "Matern smoothness nu > 0; inf for squared exponential"
        ),
        "length_scale": Param(0.1, float, "length scale, in units of the cube side"),
        "variance": Param(1.0, float, "kernel variance k(x, x), without the nugget"),
        "outputs": Param(1, int, "outputs per point d; the order is n * d", minimum=1),
        "nugget": Param(
            0.0,
            float,
            "value added to the diagonal; 0 keeps the exact kernel, which is "
            "numerically singular for smooth kernels on many points",
            minimum=0.0,
        ),
        "seed": Param(0, int, "seed of the points and of B", minimum=0),
        "sort_points": Param(
            False, bool, "sort the points in increasing order (dim = 1 only)"
        ),
        "design": Param(
            "random",
            str,
            "point design: independent uniform draws, a scrambled Halton or "
            "Sobol' sequence, or a farthest-point (maximin) or "
            "largest-conditional-variance (maxvar) order of candidate points",
            choices=DESIGNS,
        ),
        "candidates": Param(
            8,
            int,
            "candidate points per point of the maximin and maxvar designs",
            minimum=1,
        ),
    }

    block_bytes: int = 256 * 2**20
    design_bytes: int = 4 * 2**30

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._points: np.ndarray | None = None

    def validate(self) -> None:
        """Raise ParameterError on a parameter that gives no valid kernel."""
        p = self.params
        owner = "source 'matern'"
        for key in ("nu", "length_scale", "variance"):
            if not p[key] > 0:
                raise ParameterError(
                    f"{owner}: {key} = {p[key]!r} must be positive; set {key} > 0"
                )
        if p["sort_points"] and p["dim"] != 1:
            raise ParameterError(
                f"{owner}: sort_points = True needs dim = 1, got dim = {p['dim']}; "
                f"set dim = 1 or sort_points = false"
            )
        if p["sort_points"] and p["design"] != "random":
            raise ParameterError(
                f"{owner}: sort_points = True would discard the order of design "
                f"= {p['design']!r}; set design = 'random' or sort_points = false"
            )
        if p["design"] == "maxvar":
            needed = 8 * p["candidates"] * p["n"] ** 2
            if needed > self.design_bytes:
                raise ParameterError(
                    f"{owner}: design = 'maxvar' with n = {p['n']} and candidates "
                    f"= {p['candidates']} needs {needed / 2**30:.3g} GiB for the "
                    f"Cholesky factor of its candidates, more than the "
                    f"{self.design_bytes / 2**30:.3g} GiB allowed; lower candidates "
                    f"or use design = 'maximin'"
                )
        if p["design"] == "maximin":
            # The candidate points and their distances to the chosen set.
            needed = 8 * p["candidates"] * p["n"] * (p["dim"] + 1)
            if needed > self.design_bytes:
                raise ParameterError(
                    f"{owner}: design = 'maximin' with n = {p['n']} and candidates "
                    f"= {p['candidates']} needs {needed / 2**30:.3g} GiB for its "
                    f"candidate points, more than the "
                    f"{self.design_bytes / 2**30:.3g} GiB allowed; lower candidates"
                )

    @property
    def points(self) -> np.ndarray:
        """The n points, an array of shape ``(n, dim)``."""
        if self._points is None:
            p = self.params
            # NOTE: every process that forms a block computes the design again,
            # so the formation time of each leading block includes its cost.
            points = design_points(
                p["n"],
                p["dim"],
                p["seed"],
                p["design"],
                p["candidates"],
                self._correlation,
            )
            if p["sort_points"]:
                points = np.sort(points, axis=0)
            self._points = points
        return self._points

    def _correlation(self, distances: np.ndarray) -> np.ndarray:
        """Return the Matern correlation at Euclidean ``distances``."""
        p = self.params
        return matern_correlation(distances / p["length_scale"], p["nu"])

    def coregionalization(self) -> np.ndarray:
        """Return the ``d x d`` coregionalization matrix B."""
        return coregionalization_matrix(self.params["outputs"], self.params["seed"])

    def _exact_logdet(self, samples: int) -> tuple[float, float] | None:
        p = self.params
        if not (p["dim"] == 1 and p["nu"] == 0.5 and p["nugget"] == 0.0):
            return None
        sign, logdet = exponential_logdet_1d(
            self.points[:samples], p["length_scale"], p["variance"]
        )
        d = p["outputs"]
        if d > 1:
            _, logdet_b = np.linalg.slogdet(self.coregionalization())
            logdet = d * logdet + samples * float(logdet_b)
        return sign, logdet

    def describe(self, order: int | None = None) -> MatrixInfo:
        """Describe the matrix or its leading ``order x order`` block.

        ``logdet`` is the natural log-determinant in the 1-D exponential case
        (for every leading order), and ``None`` otherwise.
        """
        outputs = self.params["outputs"]
        full = self.params["n"] * outputs
        order = check_leading_order(order, full, outputs, "outputs")
        p = self.params
        d = p["outputs"]
        exact = self._exact_logdet(order // d)
        return MatrixInfo(
            order=order,
            structure=Structure.SPD,
            block_size=d,
            logdet=None if exact is None else exact[1],
            sign=None if exact is None else exact[0],
            description=(
                f"matern nu={p['nu']:g} dim={p['dim']} d={d} m={order}"
                + ("" if p["design"] == "random" else f" design={p['design']}")
            ),
        )

    def form(self, order: int, out: BlockWriter) -> None:
        """Write the leading ``order x order`` block into ``out`` in row strips.

        Each strip contains all d outputs of a range of points and only the
        columns from its own diagonal onwards. The part right of the diagonal
        square is also written transposed below it, so the matrix is exactly
        symmetric and about half of the kernel values are computed.
        """
        outputs = self.params["outputs"]
        full = self.params["n"] * outputs
        order = check_leading_order(order, full, outputs, "outputs")
        p = self.params
        d = p["outputs"]
        samples = order // d
        points = self.points[:samples]
        b = self.coregionalization()
        # Distances, kernel values and temporaries per point, then the kron.
        bytes_per_sample = 8 * samples * (8 + 2 * d * d)
        step = max(1, min(samples, self.block_bytes // bytes_per_sample))
        logger.debug("forming matern, order %d, %d points per strip", order, step)
        for s0 in range(0, samples, step):
            s1 = min(samples, s0 + step)
            width = s1 - s0
            squared = np.zeros((width, samples - s0))
            for axis in range(p["dim"]):
                squared += (
                    np.subtract.outer(points[s0:s1, axis], points[s0:, axis]) ** 2
                )
            scaled = np.sqrt(squared) / p["length_scale"]
            kernel = p["variance"] * matern_correlation(scaled, p["nu"])
            square = kernel[:, :width]
            kernel[:, :width] = np.triu(square) + np.triu(square, 1).T
            strip = np.kron(kernel, b) if d > 1 else kernel
            if p["nugget"]:
                index = np.arange(width * d)
                strip[index, index] += p["nugget"]
            out.write(s0 * d, s0 * d, strip)
            if s1 < samples:
                lower = np.ascontiguousarray(strip[:, width * d :].T)
                out.write(s1 * d, s0 * d, lower)

    def formation_flops(self, order: int) -> float:
        """Return an analytic FLOP estimate of forming the leading block.

        Each of the ``k (k + 1) / 2`` pairs ``i <= j`` of the k = order / d
        points counts ``3 dim + 2`` for the scaled distance, a nominal count
        for the kernel (2 for nu = 1/2, 5 for 3/2, 8 for 5/2, 3 for inf, 40
        for a Bessel-function evaluation), and ``d**2`` multiplications for
        the Kronecker product with B when d > 1.
        """
        p = self.params
        d = p["outputs"]
        samples = float(order // d)
        pairs = samples * (samples + 1.0) / 2.0
        kernel = _KERNEL_FLOPS.get(p["nu"], _BESSEL_KERNEL_FLOPS)
        return pairs * (3.0 * p["dim"] + 2.0 + kernel + (d * d if d > 1 else 0.0))
