"""The ``synthetic`` matrix source."""

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

from ._kinds import (
    SPECTRA,
    form_identity,
    form_kms,
    form_spectrum,
    random_orthogonal,
    spectrum_eigenvalues,
)

logger = logging.getLogger(__name__)

KINDS = ("spectrum", "identity", "kms")


class SyntheticSource(MatrixSource):
    """SPD test matrices with a closed-form natural log-determinant.

    Notes
    -----
    The kinds are:

    ``"spectrum"``
        ``A = Q diag(lambda) Q^T`` with ``Q`` a seeded Haar-random orthogonal
        matrix and ``lambda`` from :func:`spectrum_eigenvalues`. The exact
        log-det ``sum(log(lambda))`` is known for the whole matrix only; a
        proper leading block ``Q[:k] diag(lambda) Q[:k]^T`` has none.
    ``"identity"``
        ``A = scale * I``; every leading block of order k has log-det
        ``k * log(scale)``.
    ``"kms"``
        Kac-Murdock-Szego matrix ``A_ij = rho**|i-j|`` with ``-1 < rho < 1``;
        every leading block of order k has log-det ``(k-1) * log(1 - rho**2)``.

    ``block_size`` d labels the matrix as NTK-like with d outputs per sample
    and does not change the entries. ``n`` and every requested order must be
    multiples of d.

    Attributes
    ----------
    block_bytes
        Memory budget, in bytes, of the working arrays of one row strip
        during :meth:`form`. The ``"spectrum"`` kind also keeps its ``n x n``
        orthogonal factor, outside this budget.
    """

    name: ClassVar[str] = "synthetic"
    version: ClassVar[str] = "1"
    parameters: ClassVar[dict[str, Param]] = {
        "kind": Param("spectrum", str, "matrix family", choices=KINDS),
        "n": Param(None, int, "order m of the matrix (rows)", minimum=1, required=True),
        "spectrum": Param(
            "geometric", str, "eigenvalue profile of kind 'spectrum'", choices=SPECTRA
        ),
        "max_eig": Param(1.0, float, "largest eigenvalue of kind 'spectrum'"),
        "min_eig": Param(
            1e-3, float, "smallest eigenvalue of the geometric and linear spectra"
        ),
        "power": Param(1.0, float, "decay exponent of the power spectrum", minimum=0.0),
        "seed": Param(0, int, "seed of the random orthogonal factor", minimum=0),
        "scale": Param(1.0, float, "diagonal value c of kind 'identity'"),
        "rho": Param(0.5, float, "correlation of kind 'kms', -1 < rho < 1"),
        "block_size": Param(
            1, int, "outputs per sample d; n must be a multiple of it", minimum=1
        ),
    }

    block_bytes: int = 256 * 2**20

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._q: np.ndarray | None = None

    def validate(self) -> None:
        """Raise ParameterError on a parameter combination with no SPD matrix."""
        p = self.params
        owner = "source 'synthetic'"
        if p["n"] % p["block_size"] != 0:
            raise ParameterError(
                f"{owner}: n = {p['n']} is not a multiple of block_size = "
                f"{p['block_size']}; set n to a multiple of block_size"
            )
        if p["kind"] == "spectrum":
            if not p["max_eig"] > 0:
                raise ParameterError(
                    f"{owner}: max_eig = {p['max_eig']!r} must be positive for an "
                    f"SPD matrix; set max_eig > 0"
                )
            if p["spectrum"] != "power":
                if not p["min_eig"] > 0:
                    raise ParameterError(
                        f"{owner}: min_eig = {p['min_eig']!r} must be positive for "
                        f"an SPD matrix; set min_eig > 0"
                    )
                if p["min_eig"] > p["max_eig"]:
                    raise ParameterError(
                        f"{owner}: min_eig = {p['min_eig']!r} is larger than "
                        f"max_eig = {p['max_eig']!r}; swap them"
                    )
        elif p["kind"] == "identity":
            if not p["scale"] > 0:
                raise ParameterError(
                    f"{owner}: scale = {p['scale']!r} must be positive for an SPD "
                    f"matrix; set scale > 0"
                )
        elif not -1.0 < p["rho"] < 1.0:
            raise ParameterError(
                f"{owner}: rho = {p['rho']!r} is outside (-1, 1), where the KMS "
                f"matrix is positive definite; set -1 < rho < 1"
            )

    def eigenvalues(self) -> np.ndarray:
        """Return the eigenvalues of the whole matrix, in decreasing order."""
        p = self.params
        n = p["n"]
        if p["kind"] == "spectrum":
            return spectrum_eigenvalues(
                p["spectrum"], n, p["max_eig"], p["min_eig"], p["power"]
            )
        if p["kind"] == "identity":
            return np.full(n, p["scale"])
        # Eigenvalues of a KMS matrix have no elementary closed form.
        raise NotImplementedError("eigenvalues() supports kinds 'spectrum', 'identity'")

    def _logdet(self, order: int) -> float | None:
        p = self.params
        if p["kind"] == "identity":
            return order * math.log(p["scale"])
        if p["kind"] == "kms":
            return (order - 1) * math.log1p(-(p["rho"] ** 2))
        if order == p["n"]:
            return float(np.sum(np.log(self.eigenvalues())))
        return None

    def describe(self, order: int | None = None) -> MatrixInfo:
        """Describe the matrix or its leading ``order x order`` block.

        ``logdet`` is the exact natural log-determinant where the kind gives
        one for this order, and ``sign`` is then 1.
        """
        order = check_leading_order(order, self.params["n"], self.params["block_size"])
        p = self.params
        logdet = self._logdet(order)
        label = p["kind"] if p["kind"] != "spectrum" else f"spectrum {p['spectrum']}"
        return MatrixInfo(
            order=order,
            structure=Structure.SPD,
            block_size=p["block_size"],
            logdet=logdet,
            sign=None if logdet is None else 1.0,
            description=f"synthetic {label} m={order}",
        )

    def _orthogonal(self) -> np.ndarray:
        if self._q is None:
            # NOTE: the n x n orthogonal factor is held in memory (8 n^2 bytes,
            # as much as the whole matrix), which limits kind 'spectrum' to
            # orders whose factor fits in memory.
            self._q = random_orthogonal(self.params["n"], self.params["seed"])
        return self._q

    def form(self, order: int, out: BlockWriter) -> None:
        """Write the leading ``order x order`` block into ``out`` in row strips."""
        order = check_leading_order(order, self.params["n"], self.params["block_size"])
        p = self.params
        logger.debug("forming synthetic %s, order %d", p["kind"], order)
        if p["kind"] == "identity":
            form_identity(order, p["scale"], out, self.block_bytes)
        elif p["kind"] == "kms":
            form_kms(order, p["rho"], out, self.block_bytes)
        else:
            form_spectrum(
                order, self._orthogonal(), self.eigenvalues(), out, self.block_bytes
            )

    def formation_flops(self, order: int) -> float:
        """Return the analytic FLOP count of forming the leading block.

        For kind ``"spectrum"`` with ``k = order``: ``8 n^3 / 3`` for the
        Householder QR of the ``n x n`` Gaussian matrix and the explicit Q
        factor, ``n k`` to scale ``Q[:k]``, and ``n k (k + 1)`` for the upper
        triangle of ``Q[:k] diag(lambda) Q[:k]^T`` (multiply-add = 2). Kind
        ``"kms"`` counts its ``k`` powers of rho, and ``"identity"`` counts 0.
        """
        k = float(order)
        kind = self.params["kind"]
        if kind == "identity":
            return 0.0
        if kind == "kms":
            return k
        n = float(self.params["n"])
        return 8.0 * n**3 / 3.0 + n * k + n * k * (k + 1.0)
