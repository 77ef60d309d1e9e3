"""Conformance kit for solver plugins.

A plugin author checks a :class:`ldbench.Solver` subclass against matrices
whose log-determinant is known in closed form, and against the contract the
host relies on (metadata, FLOP count, leading-block reads, seeding, clean
failures)::

    from ldbench.testing import check_solver

    report = check_solver(MySolver, params={"degree": 80}, rtol=1e-2)

:func:`check_solver` raises :class:`ConformanceError` with the whole report
when a check fails. In pytest, one test per check reads better::

    import pytest
    from ldbench.testing import CHECKS, run_check

    @pytest.mark.parametrize("check", CHECKS)
    def test_conformance(check, tmp_path):
        run_check(MySolver, check, params={"degree": 80}, rtol=1e-2, workdir=tmp_path)

Every matrix is built in memory and written through h5py to a temporary
folder (or ``workdir``), because a :class:`ldbench.MatrixHandle` reads the
dataset ``"matrix"`` of an HDF5 file.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _testmatrices as matrices
from ._api import (
    Estimate,
    MatrixHandle,
    MatrixInfo,
    Param,
    ParameterError,
    SolveContext,
    Solver,
    SolverError,
    Structure,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKS",
    "CheckResult",
    "ConformanceError",
    "ConformanceReport",
    "SolverSpec",
    "check_solver",
    "run_check",
]

#: Names of the checks, in the order :func:`check_solver` runs them.
CHECKS: tuple[str, ...] = (
    "metadata",
    "flops",
    "identity",
    "kms",
    "spectrum",
    "leading-block",
    "seed",
    "unsupported-structure",
)

#: Exceptions that count as a clean failure on an unsupported matrix.
#: ParameterError and numpy.linalg.LinAlgError are ValueError subclasses.
CLEAN_ERRORS = (SolverError, ValueError)

_PARAM_KINDS = (int, float, str, bool, list)
_REPEAT_RTOL = 1e-12
_FLOPS_RTOL = 1e-9


class ConformanceError(AssertionError):
    """A solver failed a conformance check; the message is the report."""


@dataclass
class CheckResult:
    """Outcome of one check.

    Attributes
    ----------
    check
        Check name, one of :data:`CHECKS`.
    status
        ``"passed"``, ``"failed"`` or ``"skipped"``.
    message
        What was compared and by how much it differed, or why it was skipped.
    """

    check: str
    status: str
    message: str = ""


@dataclass
class ConformanceReport:
    """Results of every check run on one solver configuration."""

    solver: str
    params: dict[str, Any]
    results: list[CheckResult] = field(default_factory=list)

    @property
    def failures(self) -> list[CheckResult]:
        """Checks with status ``"failed"``."""
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        """True when no check failed (skipped checks do not count)."""
        return not self.failures

    def format(self) -> str:
        """Return the report as text, one line per check."""
        params = json.dumps(self.params, sort_keys=True, default=str)
        lines = [f"conformance of solver {self.solver!r} with params {params}:"]
        for result in self.results:
            lines.append(f"  {result.status.upper():7} {result.check}: {result.message}")
        failed = len(self.failures)
        lines.append(f"{failed} of {len(self.results)} checks failed")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def raise_on_failure(self) -> None:
        """Raise :class:`ConformanceError` with the report when a check failed."""
        if not self.ok:
            raise ConformanceError(self.format())


@dataclass
class SolverSpec:
    """One solver configuration to check, for ``pytest.mark.parametrize``.

    Attributes
    ----------
    cls
        Solver class.
    params
        Parameters the solver is built with.
    rtol
        Relative tolerance of the log-det against the closed form.
    order
        Order m of the test matrices; a multiple of ``block_size``.
    block_size
        Outputs per sample d written into each matrix's MatrixInfo.
    """

    cls: type[Solver]
    params: dict[str, Any] = field(default_factory=dict)
    rtol: float = 1e-10
    order: int = 64
    block_size: int = 1

    @property
    def id(self) -> str:
        """Test id such as ``"dense-method=ldl"``."""
        settings = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.cls.name}-{settings}" if settings else self.cls.name

    def run(self, check: str, workdir: Path | None = None, seed: int = 0) -> CheckResult:
        """Run one check; see :func:`run_check`."""
        return run_check(self.cls, check, self.params, self.rtol, order=self.order,
                         block_size=self.block_size, seed=seed, workdir=workdir)


class _Failed(Exception):
    """A check found a problem; the message names it and its size."""


class _Skipped(Exception):
    """A check does not apply, or cannot run here."""


def check_solver(
    cls: type[Solver],
    params: dict[str, Any] | None = None,
    rtol: float = 1e-10,
    *,
    checks: Iterable[str] = CHECKS,
    order: int = 64,
    block_size: int = 1,
    seed: int = 0,
    workdir: Path | str | None = None,
    raise_on_failure: bool = True,
) -> ConformanceReport:
    """Run conformance checks on a solver class and return the report.

    Parameters
    ----------
    cls
        The :class:`ldbench.Solver` subclass.
    params
        Parameters to build it with, as a suite would give them.
    rtol
        Relative tolerance ``|estimate - exact| / |exact|`` of the natural
        log-det on the closed-form matrices; loosen it for stochastic solvers.
    checks
        Subset of :data:`CHECKS` to run.
    order
        Order m of the test matrices (a multiple of ``block_size``).
    block_size
        Outputs per sample d given in each matrix's :class:`ldbench.MatrixInfo`,
        for solvers that work on whole samples.
    seed
        Seed in the :class:`ldbench.SolveContext`; also seeds the random
        orthogonal factors of the test matrices.
    workdir
        Folder for the HDF5 files and scratch folders; a temporary folder that
        is removed afterwards by default.
    raise_on_failure
        Raise :class:`ConformanceError` when a check fails.

    Raises
    ------
    ConformanceError
        With the report, when a check failed and ``raise_on_failure`` is set.
    ValueError
        On an unknown check name or an order that is not a multiple of
        ``block_size``.
    """
    params = dict(params or {})
    report = ConformanceReport(str(getattr(cls, "name", cls.__name__)), params)
    with _workdir(workdir) as folder:
        kit = _Kit(cls, params, rtol, order, block_size, seed, folder)
        for check in checks:
            report.results.append(kit.run(check))
    if raise_on_failure:
        report.raise_on_failure()
    return report


def run_check(
    cls: type[Solver],
    check: str,
    params: dict[str, Any] | None = None,
    rtol: float = 1e-10,
    *,
    order: int = 64,
    block_size: int = 1,
    seed: int = 0,
    workdir: Path | str | None = None,
) -> CheckResult:
    """Run one check and return its result; raise when it fails.

    A skipped check calls ``pytest.skip`` when pytest is running, so it shows
    as skipped there. Arguments are those of :func:`check_solver`.

    Raises
    ------
    ConformanceError
        When the check fails, with a message that names the check.
    """
    report = check_solver(cls, params, rtol, checks=[check], order=order,
                          block_size=block_size, seed=seed, workdir=workdir,
                          raise_on_failure=True)
    result = report.results[0]
    if result.status == "skipped":
        import sys

        if "pytest" in sys.modules:
            import pytest

            pytest.skip(f"{check}: {result.message}")
    return result


class _workdir:
    """Context manager: the given folder, or a temporary one removed on exit."""

    def __init__(self, folder: Path | str | None) -> None:
        self.folder = folder
        self._temp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Path:
        if self.folder is not None:
            path = Path(self.folder)
            path.mkdir(parents=True, exist_ok=True)
            return path
        self._temp = tempfile.TemporaryDirectory(prefix="ldbench-conformance-")
        return Path(self._temp.name)

    def __exit__(self, *exc: object) -> None:
        if self._temp is not None:
            self._temp.cleanup()


class _RecordingHandle(MatrixHandle):
    """MatrixHandle that records the largest row and column index read."""

    def __init__(self, path: Path, info: MatrixInfo, order: int | None = None) -> None:
        super().__init__(path, info, order)
        self.max_row = 0
        self.max_col = 0

    def block(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        self.max_row = max(self.max_row, row1)
        self.max_col = max(self.max_col, col1)
        return super().block(row0, row1, col0, col1)


class _Kit:
    """State shared by the checks of one solver configuration."""

    def __init__(
        self,
        cls: type[Solver],
        params: dict[str, Any],
        rtol: float,
        order: int,
        block_size: int,
        seed: int,
        folder: Path,
    ) -> None:
        if order % block_size:
            raise ValueError(
                f"order {order} is not a multiple of block_size {block_size}; "
                "choose an order of whole samples"
            )
        self.cls = cls
        self.params = params
        self.rtol = rtol
        self.order = order
        self.block_size = block_size
        self.seed = seed
        self.folder = folder
        self._files = 0

    def run(self, check: str) -> CheckResult:
        if check not in CHECKS:
            raise ValueError(f"unknown check {check!r}; valid: {', '.join(CHECKS)}")
        method = getattr(self, "check_" + check.replace("-", "_"))
        try:
            if check != "metadata":
                self._require_modules()
            message = method()
        except _Failed as exc:
            return CheckResult(check, "failed", str(exc))
        except _Skipped as exc:
            return CheckResult(check, "skipped", str(exc))
        except Exception as exc:  # a crash of the solver is a failed check
            logger.debug("check %s raised", check, exc_info=True)
            return CheckResult(check, "failed", f"raised {type(exc).__name__}: {exc}")
        return CheckResult(check, "passed", message)

    # Helpers ------------------------------------------------------------------

    def _missing_modules(self) -> list[str]:
        requires = getattr(self.cls, "requires", ())
        return [n for n in requires if importlib.util.find_spec(n) is None]

    def _require_modules(self) -> None:
        missing = self._missing_modules()
        if missing:
            raise _Skipped(
                f"solver requires {', '.join(missing)}, which is not installed"
            )

    def _solver(self) -> Solver:
        return self.cls(**self.params)

    def _info(self, matrix: matrices.TestMatrix) -> MatrixInfo:
        return MatrixInfo(
            order=matrix.order,
            structure=matrix.structure,
            block_size=self.block_size,
            logdet=matrix.logabsdet,
            sign=matrix.sign,
            description=matrix.label,
        )

    def _solve(
        self, matrix: matrices.TestMatrix, seed: int | None = None, pad: int = 0
    ) -> tuple[Estimate, _RecordingHandle, Solver]:
        """Write ``matrix`` (plus ``pad`` NaN rows and columns) and solve it."""
        self._files += 1
        path = self.folder / f"matrix-{self._files}.h5"
        matrices.write_matrix(path, matrix.array, pad=pad)
        solver = self._solver()
        info = self._info(matrix)
        handle = _RecordingHandle(path, info, solver.leading_order(info))
        scratch = self.folder / f"scratch-{self._files}"
        scratch.mkdir()
        context = SolveContext(scratch_dir=scratch,
                               seed=self.seed if seed is None else seed,
                               device=solver.device)
        try:
            estimate = solver.solve(handle, context)
        finally:
            handle.close()
        if not isinstance(estimate, Estimate):
            raise _Failed(
                f"{matrix.label}: solve returned {type(estimate).__name__}, "
                "expected an ldbench.Estimate"
            )
        return estimate, handle, solver

    def _check_estimate(self, matrix: matrices.TestMatrix, estimate: Estimate) -> None:
        label = matrix.label
        if not math.isfinite(estimate.logabsdet):
            raise _Failed(f"{label}: log-det is {estimate.logabsdet}, expected "
                          f"the finite exact {matrix.logabsdet:.6g}")
        if matrix.structure is Structure.SPD and estimate.sign != 1.0:
            raise _Failed(f"{label}: sign is {estimate.sign}, expected 1 for an "
                          "SPD matrix")
        if estimate.stderr is not None and not (
            math.isfinite(estimate.stderr) and estimate.stderr >= 0
        ):
            raise _Failed(f"{label}: stderr is {estimate.stderr}, expected a "
                          "finite value >= 0 or None")
        if estimate.interval is not None and not (
            estimate.interval[0] <= estimate.interval[1]
        ):
            raise _Failed(f"{label}: interval {estimate.interval} has low > high")
        try:
            json.dumps(estimate.to_dict(), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _Failed(f"{label}: Estimate.to_dict() is not JSON-serialisable "
                          f"({exc}); keep details to numbers, strings, lists and "
                          "dicts") from exc

    def _compare(self, matrix: matrices.TestMatrix, estimate: Estimate) -> str:
        exact = matrix.logabsdet
        error = abs(estimate.logabsdet - exact) / abs(exact)
        text = (f"{matrix.label}: log-det {estimate.logabsdet:.6g} differs from the "
                f"exact {exact:.6g} by {_percent(error)} (tolerance {self.rtol:g})")
        if estimate.stderr is not None:
            text += f", stderr {estimate.stderr:.3g}"
        if not error <= self.rtol:
            raise _Failed(text)
        return text

    # Checks -------------------------------------------------------------------

    def check_metadata(self) -> str:
        cls = self.cls
        if not (isinstance(cls, type) and issubclass(cls, Solver)):
            raise _Failed(f"{cls!r} is not a subclass of ldbench.Solver")
        name = getattr(cls, "name", "")
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise _Failed(f"name {name!r} must be a non-empty string without spaces")
        if not isinstance(cls.version, str) or not cls.version:
            raise _Failed(f"version {cls.version!r} must be a non-empty string")
        if not (cls.__doc__ or "").strip():
            raise _Failed("the class has no docstring; 'ldbench info' shows its "
                          "first line")

        self._check_parameters(cls.parameters)
        structures = cls.structures
        if not structures or not all(isinstance(s, Structure) for s in structures):
            raise _Failed(f"structures {structures!r} must be a non-empty set of "
                          "ldbench.Structure members")
        if cls.device not in ("cpu", "gpu"):
            raise _Failed(f"device {cls.device!r} must be 'cpu' or 'gpu'")
        if not isinstance(cls.stochastic, bool):
            raise _Failed(f"stochastic {cls.stochastic!r} must be a bool")
        if not isinstance(cls.requires, tuple) or not all(
            isinstance(n, str) for n in cls.requires
        ):
            raise _Failed(f"requires {cls.requires!r} must be a tuple of module names")

        try:
            solver = self._solver()
        except ParameterError as exc:
            raise _Failed(f"building the solver with {self.params} raised "
                          f"ParameterError: {exc}") from exc
        required = solver.required_structure()
        if required not in Structure:
            raise _Failed(f"required_structure() returned {required!r}, expected an "
                          "ldbench.Structure")
        if not isinstance(solver.label(), str):
            raise _Failed(f"label() returned {solver.label()!r}, expected a string")
        missing = self._missing_modules()
        if missing:
            installed = f"requires {', '.join(missing)}: NOT installed"
        elif cls.requires:
            installed = f"requires {', '.join(cls.requires)}: installed"
        else:
            installed = "requires nothing"
        return (f"{name} {cls.version}, {len(cls.parameters)} parameters, "
                f"structures {sorted(s.value for s in structures)}, "
                f"needs {required.value}, {installed}")

    def _check_parameters(self, parameters: Any) -> None:
        if not isinstance(parameters, dict):
            raise _Failed(f"parameters must be a dict of ldbench.Param, got "
                          f"{type(parameters).__name__}")
        for key, param in parameters.items():
            if not isinstance(param, Param):
                raise _Failed(f"parameter {key!r} is declared as "
                              f"{type(param).__name__}, expected ldbench.Param")
            if param.kind not in _PARAM_KINDS:
                raise _Failed(f"parameter {key!r} has kind {param.kind!r}; use one "
                              "of int, float, str, bool, list")
            if not param.help.strip():
                raise _Failed(f"parameter {key!r} has no help text; 'ldbench info' "
                              "shows it, with the unit")
            if param.required or param.default is None:
                continue
            try:
                param.check(f"solver {self.cls.name!r}", key, param.default)
            except ParameterError as exc:
                raise _Failed(f"parameter {key!r}: the default fails its own "
                              f"declaration: {exc}") from exc

    def check_flops(self) -> str:
        solver = self._solver()
        m = self.order
        counts = []
        for order in (m, 2 * m):
            info = MatrixInfo(order=order, structure=Structure.SPD,
                              block_size=self.block_size)
            value = solver.flops(info)
            if not isinstance(value, (int, float, np.floating, np.integer)) or not (
                math.isfinite(value) and value > 0
            ):
                raise _Failed(f"flops(m={order}) returned {value!r}; expected a "
                              "positive finite number (multiply-add = 2)")
            counts.append(float(value))
        if not counts[1] > counts[0]:
            raise _Failed(f"flops(m={2 * m}) = {counts[1]:.4g} is not larger than "
                          f"flops(m={m}) = {counts[0]:.4g}")
        matrix = matrices.kms(m)
        estimate, _, _ = self._solve(matrix)
        if not (math.isfinite(estimate.flops) and estimate.flops > 0):
            raise _Failed(f"{matrix.label}: Estimate.flops is {estimate.flops!r}; "
                          "expected a positive finite number")
        planned = counts[0]
        difference = abs(estimate.flops - planned) / planned
        if difference > _FLOPS_RTOL:
            raise _Failed(f"{matrix.label}: Estimate.flops {estimate.flops:.6g} "
                          f"differs from flops(info) {planned:.6g} by "
                          f"{_percent(difference)}")
        return (f"flops(m={m}) = {counts[0]:.4g}, flops(m={2 * m}) = "
                f"{counts[1]:.4g} (ratio {counts[1] / counts[0]:.3g})")

    def _closed_form(self, matrix: matrices.TestMatrix) -> str:
        estimate, _, _ = self._solve(matrix)
        self._check_estimate(matrix, estimate)
        return self._compare(matrix, estimate)

    def check_identity(self) -> str:
        return self._closed_form(matrices.identity(self.order))

    def check_kms(self) -> str:
        return self._closed_form(matrices.kms(self.order))

    def check_spectrum(self) -> str:
        return self._closed_form(matrices.spectrum(self.order, seed=self.seed))

    def check_leading_block(self) -> str:
        matrix = matrices.kms(self.order)
        pad = 2 * self.block_size if self.block_size > 1 else 16
        estimate, handle, solver = self._solve(matrix, pad=pad)
        expected = solver.leading_order(self._info(matrix))
        stored = self.order + pad
        if estimate.read_order != expected:
            raise _Failed(f"{matrix.label} in a dataset of order {stored}: "
                          f"read_order is {estimate.read_order}, expected "
                          f"leading_order() = {expected}")
        if max(handle.max_row, handle.max_col) > expected:
            raise _Failed(f"{matrix.label}: read up to row {handle.max_row}, column "
                          f"{handle.max_col}, past the leading block of order "
                          f"{expected}")
        if not math.isfinite(estimate.logabsdet):
            raise _Failed(f"{matrix.label} in a dataset of order {stored} whose "
                          f"entries past row {self.order} are NaN: log-det is "
                          f"{estimate.logabsdet}, so the solver read past its "
                          "leading block (read through MatrixHandle.block or "
                          "read, never the raw dataset)")
        if expected < self.order:
            return (f"{matrix.label}: read the leading block of order {expected} "
                    f"of a dataset of order {stored}; extrapolated log-det "
                    f"{estimate.logabsdet:.6g}")
        text = self._compare(matrix, estimate)
        return f"{text}; dataset of order {stored}, read_order {estimate.read_order}"

    def check_seed(self) -> str:
        matrix = matrices.spectrum(self.order, seed=self.seed)
        first, _, _ = self._solve(matrix, seed=self.seed)
        again, _, _ = self._solve(matrix, seed=self.seed)
        difference = _relative(first.logabsdet, again.logabsdet)
        if not difference <= _REPEAT_RTOL:
            raise _Failed(f"{matrix.label}: two solves with seed {self.seed} gave "
                          f"{first.logabsdet!r} and {again.logabsdet!r}; the same "
                          "SolveContext.seed must give the same estimate")
        if not self.cls.stochastic:
            return f"{matrix.label}: two solves gave the same log-det"
        other, _, _ = self._solve(matrix, seed=self.seed + 1)
        if other.logabsdet == first.logabsdet:
            raise _Failed(f"{matrix.label}: seeds {self.seed} and {self.seed + 1} "
                          f"gave the same log-det {first.logabsdet!r}; a "
                          "stochastic solver must draw its random numbers from "
                          "SolveContext.seed, so repetitions differ")
        return (f"{matrix.label}: seed {self.seed} repeats exactly; seed "
                f"{self.seed + 1} differs by "
                f"{_percent(_relative(first.logabsdet, other.logabsdet))}")

    def check_unsupported_structure(self) -> str:
        required = self._solver().required_structure()
        weaker = []
        if not Structure.SYMMETRIC.satisfies(required):
            weaker.append(matrices.indefinite(self.order, seed=self.seed))
        if not Structure.GENERAL.satisfies(required):
            weaker.append(matrices.nonsymmetric(self.order, seed=self.seed))
        if not weaker:
            raise _Skipped("the solver accepts general matrices")
        outcomes = [self._unsupported(matrix, required) for matrix in weaker]
        return "; ".join(outcomes)

    def _unsupported(self, matrix: matrices.TestMatrix, required: Structure) -> str:
        where = f"{matrix.label} ({matrix.structure.value}, solver needs {required.value})"
        try:
            estimate, _, _ = self._solve(matrix)
        except CLEAN_ERRORS as exc:
            if not str(exc).strip():
                raise _Failed(f"{where}: raised {type(exc).__name__} without a "
                              "message") from exc
            return f"{where}: raised {type(exc).__name__}: {_first_line(exc)}"
        except Exception as exc:
            raise _Failed(f"{where}: raised {type(exc).__name__}: {_first_line(exc)}; "
                          "expected ldbench.SolverError, ParameterError or "
                          "ValueError") from exc
        error = _relative(estimate.logabsdet, matrix.logabsdet)
        if estimate.sign == matrix.sign and error <= self.rtol:
            return f"{where}: returned the exact log-det (error {_percent(error)})"
        raise _Failed(f"{where}: returned log-det {estimate.logabsdet:.6g} with sign "
                      f"{estimate.sign} instead of raising; the exact value is "
                      f"{matrix.logabsdet:.6g} with sign {matrix.sign} "
                      f"(error {_percent(error)}, tolerance {self.rtol:g})")


def _relative(value: float, exact: float) -> float:
    if value == exact:
        return 0.0
    if not (math.isfinite(value) and math.isfinite(exact)):
        return math.inf
    return abs(value - exact) / max(abs(exact), 1e-300)


def _percent(fraction: float) -> str:
    return f"{100.0 * fraction:.3g}%"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
