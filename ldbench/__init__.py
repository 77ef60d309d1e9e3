"""ldbench: benchmark log-determinant methods on large dense matrices.

The public API for plugin authors is what this module exports; modules whose
names start with an underscore are private.
"""

from __future__ import annotations

from ._api import (
    BlockWriter,
    Estimate,
    FormationRecord,
    MatrixHandle,
    MatrixInfo,
    MatrixSource,
    Param,
    ParameterError,
    SolveContext,
    Solver,
    SolverError,
    Structure,
    check_leading_order,
    factorization_flops,
)
from ._hooks import hookimpl, hookspec
from ._linalg import cholesky_diagonal

__version__ = "0.1.0"



def __getattr__(name: str):
    # The runner pulls in pandas; load it only when ``ldbench.run`` is used.
    if name == "run":
        from ._api_run import run

        return run
    raise AttributeError(f"module 'ldbench' has no attribute {name!r}")


__all__ = [
    "BlockWriter",
    "Estimate",
    "FormationRecord",
    "MatrixHandle",
    "MatrixInfo",
    "MatrixSource",
    "Param",
    "ParameterError",
    "SolveContext",
    "Solver",
    "SolverError",
    "Structure",
    "__version__",
    "check_leading_order",
    "cholesky_diagonal",
    "factorization_flops",
    "hookimpl",
    "hookspec",
    "run",
]
