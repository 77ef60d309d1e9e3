"""Hook specifications of the ldbench plugin host.

Every hook is named ``ldbench_*``. Plugins mark their implementations with
:data:`hookimpl` and are found through the ``ldbench`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "ldbench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ldbench_register_sources(register: Callable[[type], None]) -> None:
    """Register matrix source classes.

    Called once when the plugin manager starts. Call ``register(cls)`` for each
    :class:`ldbench.MatrixSource` subclass; the host rejects a duplicate name
    or a class of the wrong base.
    """


@hookspec
def ldbench_register_solvers(register: Callable[[type], None]) -> None:
    """Register solver classes.

    Called once when the plugin manager starts. Call ``register(cls)`` for each
    :class:`ldbench.Solver` subclass.
    """


@hookspec
def ldbench_run_start(run_dir: str, suite: dict[str, Any]) -> None:
    """Called in the host process before the first case of a run."""


@hookspec
def ldbench_run_end(run_dir: str, records: list[dict[str, Any]]) -> None:
    """Called in the host process after the last case, with every record."""


@hookspec(firstresult=True)
def ldbench_case(case: dict[str, Any]) -> dict[str, Any] | None:
    """Run one case in the host process and return its record.

    The host implements this hook itself. A plugin wraps it with
    ``@hookimpl(wrapper=True)``: code before ``yield`` runs before the case,
    and ``record = yield`` receives the finished record, a dictionary the
    wrapper may add keys to before returning it.
    """


@hookspec(firstresult=True)
def ldbench_form_distributed(
    source: Any,
    order: int,
    client: Any,
    target: str,
    parts_dir: str,
    settings: dict[str, Any],
) -> dict[str, Any] | None:
    """Form the leading block of ``order`` of ``source`` on a Dask cluster.

    Called in the host process by ``ldbench run --executor dask`` before the
    cases run, once per matrix and order that is not stored yet. An
    implementation that can form ``source`` spreads the work over the
    workers of ``client`` (a ``distributed.Client``) and writes ``target``,
    an HDF5 file with the dataset ``"matrix"`` of shape ``(order, order)``.
    It may keep the pieces that dataset refers to in the folder
    ``parts_dir``. Both paths are in the store, which every worker can reach.
    ``settings`` has ``"threads"`` (threads per task, or None) and
    ``"assign_gpus"`` (True when worker k should use CUDA device k).

    Return ``{"formation": FormationRecord, "attributes": dict}``, with the
    summed device time of all workers in the record's ``seconds`` and extra
    HDF5 attributes for the stored matrix, or None to leave the source to
    the host, which forms it in a worker process as without Dask.
    """
