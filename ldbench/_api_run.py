"""Python entry point: run a suite and get the results as a DataFrame."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._machine import machine_metadata
from ._plugins import Registry
from ._report import results_frame, write_outputs
from ._runner import Runner, RunOptions
from ._store import MatrixStore
from ._suite import Suite, load_suite

if TYPE_CHECKING:
    from ._executor import DaskSettings

logger = logging.getLogger(__name__)


def new_run_dir(suite: Suite, root: Path | str = "runs") -> Path:
    """Return a fresh run folder ``ROOT/<suite>-<YYYYmmdd-HHMMSS>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{suite.name}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path(root) / f"{suite.name}-{stamp}-{suffix}"
    return path


def suite_store(suite: Suite, store: Path | str | None) -> MatrixStore:
    """Return the store named on the command line, in the suite, or the default."""
    if store is not None:
        return MatrixStore(store)
    if "store" in suite.settings:
        return MatrixStore((suite.path.parent / suite.settings["store"]).expanduser())
    return MatrixStore()


def execute_suite(
    suite: Suite,
    registry: Registry,
    run_dir: Path,
    store: MatrixStore,
    options: RunOptions,
    executor: DaskSettings | None = None,
) -> list[dict[str, Any]]:
    """Write the run folder's metadata, run the pending cases and the tables.

    With ``executor`` the jobs run on a Dask cluster (see
    :mod:`ldbench._executor`), else one after another on this machine.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "suite.toml").exists():
        shutil.copyfile(suite.path, run_dir / "suite.toml")
    resolved = {
        "name": suite.name,
        "settings": suite.settings,
        "pricing": suite.pricing,
        "matrices": [asdict(m) for m in suite.matrices],
        "solvers": [asdict(s) for s in suite.solvers],
        "reference": asdict(suite.reference) if suite.reference else None,
        "store": str(store.root),
        "cases": [c.to_dict() for c in suite.cases()],
    }
    (run_dir / "suite.json").write_text(json.dumps(resolved, indent=2, default=str))
    plugins = [asdict(p) for p in registry.plugins.values()]
    meta = machine_metadata(suite.path.parent, plugins)
    (run_dir / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    if executor is None:
        records = Runner(suite, registry, run_dir, store, options).run()
    else:
        from ._executor import run_on_dask

        records = run_on_dask(suite, registry, run_dir, store, options, executor)
    write_outputs(run_dir, records, suite.pricing)
    _write_figures(run_dir, records)
    return records


def _write_figures(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Draw the run's figures; a failure is logged, because the results stand."""
    try:
        from ._figures import write_figures

        write_figures(run_dir, records)
    except Exception as exc:  # noqa: BLE001 - any plotting failure
        logger.warning("figures of %s not written (%s: %s); retry with "
                       "'ldbench plot %s'", run_dir, type(exc).__name__, exc, run_dir)


def run(
    suite: Path | str,
    overrides: list[str] | None = None,
    run_dir: Path | str | None = None,
    store: Path | str | None = None,
    executor: DaskSettings | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Run a suite file and return one row per case as a DataFrame.

    Parameters
    ----------
    suite
        Path of the TOML suite.
    overrides
        ``KEY=VALUE`` overrides, as ``ldbench run --set``.
    run_dir
        Output folder; a new one under ``./runs`` by default.
    store
        Matrix store folder; the suite's or ``$LDBENCH_STORE`` by default.
    executor
        Run on a Dask cluster with these settings; ``None`` runs locally.
    **options
        Fields of :class:`ldbench._runner.RunOptions`: timeout (seconds or a
        duration such as ``"10m"``), memory_limit (bytes or a size such as
        ``"4GB"``), resume, check.
    """
    from ._suite import parse_bytes, parse_duration

    import dataclasses

    valid = {f.name for f in dataclasses.fields(RunOptions)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise TypeError(
            f"ldbench.run() got unknown keyword arguments {unknown}; valid: suite, "
            f"overrides, run_dir, store, executor, {', '.join(sorted(valid))}"
        )
    registry = Registry()
    loaded = load_suite(suite, registry, overrides)
    # Durations and sizes may be given as the CLI writes them ("10m", "4GB").
    if options.get("timeout") is not None:
        options["timeout"] = parse_duration(options["timeout"])
    if options.get("memory_limit") is not None:
        options["memory_limit"] = parse_bytes(options["memory_limit"])
        if options["memory_limit"] <= 0:
            raise ValueError(f"memory_limit={options['memory_limit']!r} must be positive")
    folder = Path(run_dir) if run_dir is not None else new_run_dir(loaded)
    folder.mkdir(parents=True, exist_ok=True)
    stored = suite_store(loaded, store)
    (folder / "run.json").write_text(json.dumps(
        {"suite": str(Path(suite).resolve()), "overrides": list(overrides or []),
         "store": str(stored.root.resolve()), "options": options}, indent=2, default=str))
    records = execute_suite(loaded, registry, folder, stored, RunOptions(**options),
                            executor)
    return results_frame(records)
