"""asv benchmarks generated from an ldbench suite file.

Every (matrix, solver configuration) of the suite gives one benchmark class
with three benchmarks:

- ``time_solve``: wall time of ``Solver.solve`` on the stored matrix, in s;
- ``peakmem_solve``: peak resident memory of the process during the solve;
- ``track_rel_error``: ``|estimate - reference| / |reference|`` of the natural
  log-det (unit "relative error"; lower is better, as for every asv result).

The suite is ``$LDBENCH_ASV_SUITE`` (a path relative to the folder asv runs
in, or absolute), by default ``suites/asv-small.toml``. Each class's asv
``version`` is the case's configuration hash plus the source and solver
versions, so asv starts a new series when the configuration changes, and its
``timeout`` is the suite's per-case timeout. Repetitions of the suite are not
expanded: asv repeats the measurement itself.

Matrices are formed once into an ldbench matrix store, ``$LDBENCH_ASV_STORE``
or ``ldbench-store`` in the asv environment folder (``.asv/store`` beside
asv.conf.json for the ``existing`` environment), and reused for every commit.
Solves run in the benchmark process through the public classes, not in
ldbench's worker processes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ldbench import MatrixHandle, SolveContext
from ldbench._metrics import relative_error
from ldbench._plugins import Registry
from ldbench._store import MatrixStore
from ldbench._suite import Case, Suite, instantiate_solver, instantiate_source, load_suite

logger = logging.getLogger(__name__)

SUITE_ENV = "LDBENCH_ASV_SUITE"
STORE_ENV = "LDBENCH_ASV_STORE"
REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_SUITE = REPOSITORY / "suites" / "asv-small.toml"


def suite_path() -> Path:
    """Return the suite file named by ``$LDBENCH_ASV_SUITE``, or the default."""
    value = os.environ.get(SUITE_ENV)
    if not value:
        return DEFAULT_SUITE
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(os.environ.get("ASV_CONF_DIR", os.getcwd())) / path
    return path


def store_path() -> Path:
    """Return the matrix store folder used by the benchmarks."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV]).expanduser()
    if os.environ.get("ASV_ENV_DIR"):
        return Path(os.environ["ASV_ENV_DIR"]) / "ldbench-store"
    return Path(os.environ.get("ASV_CONF_DIR", REPOSITORY)) / ".asv" / "store"


def unique_cases(suite: Suite) -> list[Case]:
    """Return the suite's cases of repetition 0, one per matrix and solver."""
    return [case for case in suite.cases() if case.repetition == 0]


def prepare(suite: Suite, registry: Registry, store: MatrixStore) -> dict[str, Any]:
    """Form every matrix the suite's cases read and find their references.

    Returns, per case id, the stored file, the order to read and the
    reference log-det, or the reason the case cannot run.
    """
    prepared: dict[str, Any] = {}
    for case in unique_cases(suite):
        source = instantiate_source(registry, case.matrix)
        solver = instantiate_solver(registry, case.solver)
        info = source.describe()
        required = solver.required_structure()
        if not info.structure.satisfies(required):
            prepared[case.id] = {"skip": f"needs a {required.value} matrix"}
            continue
        order = solver.leading_order(info)
        stored = store.ensure(source, order)
        prepared[case.id] = {
            "path": str(stored.path),
            "order": order,
            "reference": reference_logdet(suite, registry, store, source),
        }
    return prepared


def reference_logdet(suite: Suite, registry: Registry, store: MatrixStore,
                     source: Any) -> float | None:
    """Return the closed-form, cached or freshly computed reference log-det."""
    info = source.describe()
    if info.logdet is not None:
        return float(info.logdet)
    cached = store.reference(source)
    if cached is not None:
        return cached["logabsdet"]
    if suite.reference is None:
        return None
    solver = instantiate_solver(registry, suite.reference)
    stored = store.ensure(source)
    scratch = Path(tempfile.mkdtemp(prefix="ldbench-asv-ref-"))
    handle = MatrixHandle(stored.path, info)
    try:
        estimate = solver.solve(handle, SolveContext(scratch_dir=scratch))
    finally:
        handle.close()
        shutil.rmtree(scratch, ignore_errors=True)
    method = f"{suite.reference.name} ({solver.label()})"
    store.set_reference(source, estimate.logabsdet, estimate.sign, method)
    return float(estimate.logabsdet)


class _CaseBenchmark:
    """Benchmarks of one case; subclasses set ``case`` and the asv attributes."""

    case: Case

    def setup_cache(self) -> dict[str, Any]:
        # One function for every class, so asv runs it once per run.
        registry = Registry()
        suite = load_suite(suite_path(), registry)
        return prepare(suite, registry, MatrixStore(store_path()))

    def setup(self, prepared: dict[str, Any]) -> None:
        entry = prepared.get(self.case.id)
        if entry is None or "skip" in entry:
            # asv reports a benchmark whose setup raises NotImplementedError
            # as skipped.
            reason = entry["skip"] if entry else "not prepared"
            raise NotImplementedError(f"{self.case.id}: {reason}")
        registry = Registry()
        source = instantiate_source(registry, self.case.matrix)
        self.solver = instantiate_solver(registry, self.case.solver)
        self.reference = entry["reference"]
        self.handle = MatrixHandle(Path(entry["path"]), source.describe(), entry["order"])
        self.scratch = Path(tempfile.mkdtemp(prefix="ldbench-asv-"))
        self.context = SolveContext(scratch_dir=self.scratch, seed=self.case.seed,
                                    device=self.solver.device)

    def teardown(self, prepared: dict[str, Any]) -> None:
        self.handle.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def time_solve(self, prepared: dict[str, Any]) -> None:
        self.solver.solve(self.handle, self.context)

    def peakmem_solve(self, prepared: dict[str, Any]) -> None:
        self.solver.solve(self.handle, self.context)

    def track_rel_error(self, prepared: dict[str, Any]) -> float:
        estimate = self.solver.solve(self.handle, self.context)
        error = relative_error(estimate.logabsdet, self.reference)
        return float("nan") if error is None else error

    track_rel_error.unit = "relative error"  # type: ignore[attr-defined]


def _identifier(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_") or "x"


def _class_name(case: Case, label: str, taken: set[str]) -> str:
    name = _identifier(f"{case.matrix.id}__{case.solver.name}__{label}")
    if name in taken:
        name = f"{name}_{case.id[:8]}"
    taken.add(name)
    return name


def build_classes(path: Path) -> dict[str, type]:
    """Return one _CaseBenchmark subclass per case of the suite at ``path``."""
    registry = Registry()
    suite = load_suite(path, registry)
    timeout = suite.timeout
    _CaseBenchmark.setup_cache.timeout = timeout * max(1, len(suite.matrices))
    classes: dict[str, type] = {}
    taken: set[str] = set()
    for case in unique_cases(suite):
        source_cls = registry.source_class(case.matrix.source)
        solver = instantiate_solver(registry, case.solver)
        name = _class_name(case, solver.label(), taken)
        version = hashlib.sha256(
            f"{case.id}|{source_cls.version}|{type(solver).version}".encode()
        ).hexdigest()[:16]
        classes[name] = type(name, (_CaseBenchmark,), {
            "case": case,
            "timeout": timeout,
            "version": version,
            "__doc__": f"{case.matrix.id} / {case.solver.name} ({solver.label()})",
        })
    return classes


globals().update(build_classes(suite_path()))
