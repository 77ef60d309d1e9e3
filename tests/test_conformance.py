"""The conformance kit on every first-party solver, and on a wrong one."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from ldbench import Estimate, MatrixInfo, Param, Solver, SolverError, Structure
from ldbench._plugins import Registry
from ldbench.testing import (
    CHECKS,
    ConformanceError,
    SolverSpec,
    check_solver,
    run_check,
)

REGISTRY = Registry()


def spec(name: str, params: dict, rtol: float = 1e-10, block_size: int = 1) -> SolverSpec:
    return SolverSpec(REGISTRY.solver_class(name), params, rtol, block_size=block_size)


SPECS = [
    spec("dense", {"method": "cholesky"}),
    spec("dense", {"method": "ldl"}),
    spec("dense", {"method": "lu"}),
    spec("memdet", {"method": "cholesky", "num_blocks": 2}),
    spec("memdet", {"method": "ldl", "num_blocks": 3}),
    spec("memdet", {"method": "lu", "num_blocks": 3}),
    # n = 64 / 4 = 16 samples, so n_s = n takes the exact path.
    spec("flodance", {"n_s": 16}, block_size=4),
    spec("flodance", {"n_s": 16, "method": "ldl"}, block_size=4),
    spec("slq", {"lanczos_degree": 30, "samples": 20}, rtol=0.1),
]

# NOTE: these read one triangle and trust the declared structure, which the
# host checks before every solve (ldbench run without --no-check). Called
# directly on a non-symmetric matrix they return the log-det of its symmetric
# part; dense Cholesky and LDL check symmetry themselves.
SYMMETRY_TRUSTED = {"memdet-method=ldl,num_blocks=3",
                    "flodance-method=ldl,n_s=16"}


def cases():
    for solver in SPECS:
        for check in CHECKS:
            marks = []
            if check == "unsupported-structure" and solver.id in SYMMETRY_TRUSTED:
                marks.append(pytest.mark.xfail(
                    reason="reads one triangle of a non-symmetric matrix without "
                           "raising", strict=True, raises=ConformanceError))
            yield pytest.param(solver, check, id=f"{solver.id}-{check}", marks=marks)


@pytest.mark.parametrize("solver, check", list(cases()))
def test_first_party_solver(solver, check, tmp_path):
    solver.run(check, workdir=tmp_path)


class OffByFactor(Solver):
    """Dense Cholesky whose log-det is scaled by a wrong factor."""

    name = "off_by_factor"
    parameters: ClassVar[dict[str, Param]] = {
        "factor": Param(1.05, float, "Factor applied to the log-det."),
    }
    structures = frozenset({Structure.SPD})

    def flops(self, info: MatrixInfo) -> float:
        return info.order**3 / 3.0

    def solve(self, matrix, context):
        factor = np.linalg.cholesky(matrix.read())
        logdet = 2.0 * float(np.sum(np.log(np.diagonal(factor))))
        return Estimate(self.params["factor"] * logdet, 1.0,
                        self.flops(matrix.info), matrix.order)


def test_wrong_solver_fails_with_size_of_error(tmp_path):
    with pytest.raises(ConformanceError) as failure:
        check_solver(OffByFactor, {"factor": 1.05}, rtol=1e-3, workdir=tmp_path)
    message = str(failure.value)
    assert "FAILED  kms: kms m=64: log-det -19.0302 differs from the exact -18.124 " \
           "by 5% (tolerance 0.001)" in message
    assert "FAILED  identity: identity m=64:" in message
    assert "FAILED  spectrum: spectrum m=64:" in message
    assert "PASSED  metadata" in message
    assert "PASSED  flops" in message


def test_wrong_solver_passes_within_loose_tolerance(tmp_path):
    report = check_solver(OffByFactor, {"factor": 1.05}, rtol=0.06, workdir=tmp_path)
    assert report.ok
    assert [r.status for r in report.results].count("passed") == len(CHECKS)


class ReadsWholeDataset(Solver):
    """Reads the raw dataset instead of the readable leading block."""

    name = "reads_whole_dataset"
    structures = frozenset({Structure.SPD})

    def flops(self, info: MatrixInfo) -> float:
        return info.order**3 / 3.0

    def solve(self, matrix, context):
        with np.errstate(invalid="ignore"):
            sign, logdet = np.linalg.slogdet(matrix.dataset()[:, :])
        return Estimate(float(logdet), float(sign), self.flops(matrix.info), matrix.order)


def test_reading_past_leading_block_fails(tmp_path):
    result = check_solver(ReadsWholeDataset, rtol=1e-10, checks=["leading-block"],
                          workdir=tmp_path, raise_on_failure=False).results[0]
    assert result.status == "failed"
    assert "read past its leading block" in result.message


class SilentOnIndefinite(Solver):
    """Returns log|det| of an indefinite matrix as if it were SPD."""

    name = "silent_on_indefinite"
    structures = frozenset({Structure.SPD})

    def flops(self, info: MatrixInfo) -> float:
        return 2.0 * info.order**3 / 3.0

    def solve(self, matrix, context):
        _, logdet = np.linalg.slogdet(matrix.read())
        return Estimate(float(logdet), 1.0, self.flops(matrix.info), matrix.order)


def test_silent_answer_on_unsupported_structure_fails(tmp_path):
    result = check_solver(SilentOnIndefinite, checks=["unsupported-structure"],
                          workdir=tmp_path, raise_on_failure=False).results[0]
    assert result.status == "failed"
    assert "indefinite m=64 (symmetric, solver needs spd): returned log-det" in result.message
    assert "with sign 1.0 instead of raising" in result.message


class CrashesOnIndefinite(SilentOnIndefinite):
    """Raises a bare RuntimeError, not an ldbench error."""

    name = "crashes_on_indefinite"

    def solve(self, matrix, context):
        array = matrix.read()
        if np.linalg.eigvalsh(array)[0] <= 0:
            raise RuntimeError("boom")
        return super().solve(matrix, context)


def test_crash_on_unsupported_structure_fails(tmp_path):
    result = check_solver(CrashesOnIndefinite, checks=["unsupported-structure"],
                          workdir=tmp_path, raise_on_failure=False).results[0]
    assert result.status == "failed"
    assert "raised RuntimeError: boom; expected ldbench.SolverError" in result.message


class IgnoresSeed(Solver):
    """Stochastic solver that draws from a fixed seed."""

    name = "ignores_seed"
    structures = frozenset({Structure.SPD})
    stochastic = True

    def flops(self, info: MatrixInfo) -> float:
        return info.order**3 / 3.0

    def solve(self, matrix, context):
        _, logdet = np.linalg.slogdet(matrix.read())
        noise = np.random.default_rng(0).normal(scale=1e-3)
        return Estimate(float(logdet) + noise, 1.0, self.flops(matrix.info),
                        matrix.order, stderr=1e-3)


def test_stochastic_solver_ignoring_seed_fails(tmp_path):
    result = check_solver(IgnoresSeed, checks=["seed"], workdir=tmp_path,
                          raise_on_failure=False).results[0]
    assert result.status == "failed"
    assert "seeds 0 and 1 gave the same log-det" in result.message


class BadName(OffByFactor):
    """Has a name with a space."""

    name = "bad name"


class BadDefault(OffByFactor):
    """Declares a parameter whose default is below its own minimum."""

    name = "bad_default"
    parameters: ClassVar[dict[str, Param]] = {
        "factor": Param(-1.0, float, "Factor applied to the log-det.", minimum=0.0),
    }


class BadFlops(OffByFactor):
    """Reports a FLOP count of zero."""

    name = "bad_flops"

    def flops(self, info: MatrixInfo) -> float:
        return 0.0


def test_metadata_and_flops_failures(tmp_path):
    name = check_solver(BadName, checks=["metadata"], workdir=tmp_path,
                        raise_on_failure=False).results[0]
    assert name.status == "failed"
    assert "name 'bad name' must be a non-empty string without spaces" in name.message
    default = check_solver(BadDefault, checks=["metadata"], workdir=tmp_path,
                           raise_on_failure=False).results[0]
    assert default.status == "failed"
    assert "parameter 'factor': the default fails its own declaration" in default.message
    assert "below the minimum 0.0" in default.message
    flops = check_solver(BadFlops, checks=["flops"], workdir=tmp_path,
                         raise_on_failure=False).results[0]
    assert flops.status == "failed"
    assert "flops(m=64) returned 0.0" in flops.message


class NeedsMissingModule(OffByFactor):
    """Requires a module that is not installed."""

    name = "needs_missing"
    requires = ("ldbench_no_such_module",)


def test_missing_requirement_is_reported_and_skipped(tmp_path):
    report = check_solver(NeedsMissingModule, workdir=tmp_path, raise_on_failure=False)
    assert report.results[0].status == "passed"
    assert "ldbench_no_such_module: NOT installed" in report.results[0].message
    assert {r.status for r in report.results[1:]} == {"skipped"}


def test_solver_error_message_is_kept(tmp_path):
    class Refuses(OffByFactor):
        """Always raises SolverError."""

        name = "refuses"

        def solve(self, matrix, context):
            raise SolverError("refused on purpose")

    with pytest.raises(ConformanceError, match="kms: raised SolverError: refused on purpose"):
        run_check(Refuses, "kms", workdir=tmp_path)
