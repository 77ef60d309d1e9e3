"""Run a suite: form matrices, compute references, run cases, record results."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._api import Structure
from ._hooks import hookimpl
from ._metrics import cost, relative_error, tflops
from ._plugins import Registry
from ._process import JobOutcome, run_in_worker
from ._store import MatrixStore, source_key
from ._suite import Case, MatrixConfig, Suite, instantiate_solver, instantiate_source

logger = logging.getLogger(__name__)

RESULTS = "results.jsonl"
FAILED = ("error", "timeout", "crashed", "out-of-memory", "invalid", "not-installed")


@dataclass
class RunOptions:
    """Settings of one run that are not part of the suite.

    Attributes
    ----------
    timeout
        Per-case wall-clock limit in seconds, overriding the suite's.
    memory_limit
        Per-case resident-memory cap in bytes, overriding the suite's.
    resume
        Skip cases that already have a finished record in the run folder.
    retry_failed
        With ``resume``, run again the cases whose record failed (error,
        timeout, crash, out of memory, invalid, not installed).
    check
        Run the matrix checks (finiteness, symmetry) before each solve.
    registry
        Keyword arguments for the worker's :class:`Registry` (disabled plugins).
    log_level
        Logging level inside workers.
    """

    timeout: float | None = None
    memory_limit: int | None = None
    resume: bool = False
    retry_failed: bool = False
    check: bool = True
    registry: dict[str, Any] = field(default_factory=dict)
    log_level: str = "WARNING"


# Record fields that may contain an infinite or NaN float, such as the -inf
# log-det of a singular matrix.
FLOAT_FIELDS = ("logabsdet", "sign", "stderr", "interval", "reference_logdet",
                "rel_error")


def _encode(value: Any) -> Any:
    """Replace non-finite floats by the strings "inf", "-inf" and "nan", which
    strict JSON parsers accept, unlike the tokens Infinity and NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(record: dict[str, Any]) -> dict[str, Any]:
    """Turn the strings that :func:`_encode` wrote in FLOAT_FIELDS back into floats."""
    for key in FLOAT_FIELDS:
        value = record.get(key)
        if isinstance(value, str):
            record[key] = float(value)
        elif isinstance(value, list):
            record[key] = [float(v) if isinstance(v, str) else v for v in value]
    return record


def _append(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and force it to disk, so a kill keeps it."""
    line = json.dumps(_encode(record), default=str, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that a kill left without its newline, so the next
    append starts on a line of its own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping an incomplete last record (%d bytes)", path,
                       len(data) - keep)
        with open(path, "r+b") as f:
            f.truncate(keep)


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Read every complete record of a run; a torn last line is ignored."""
    path = Path(run_dir) / RESULTS
    records = []
    if not path.exists():
        return records
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(_decode(json.loads(line)))
        except json.JSONDecodeError:
            logger.warning("%s line %d is incomplete and was ignored", path, number)
    # A case retried with --retry-failed has several records: the last one wins,
    # in the position of the first.
    latest = {r.get("case_id"): r for r in records}
    ordered: dict[Any, dict[str, Any]] = {}
    for record in records:
        ordered.setdefault(record.get("case_id"), latest[record.get("case_id")])
    return list(ordered.values())


class Runner:
    """Runs the cases of a suite into a run folder.

    Parameters
    ----------
    suite
        Validated suite.
    registry
        Plugins of the host process.
    run_dir
        Output folder; created when missing.
    store
        Matrix store shared across runs.
    options
        Run settings.
    """

    def __init__(
        self,
        suite: Suite,
        registry: Registry,
        run_dir: Path,
        store: MatrixStore,
        options: RunOptions | None = None,
    ) -> None:
        self.suite = suite
        self.registry = registry
        self.run_dir = Path(run_dir)
        self.store = store
        self.options = options or RunOptions()
        self.timeout = self.options.timeout or suite.timeout
        self.memory_limit = self.options.memory_limit or suite.memory_limit
        self.results_path = self.run_dir / RESULTS
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        drop_torn_tail(self.results_path)
        for stale in (self.run_dir / "logs").glob("ldbench-job-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if not self.registry.pm.has_plugin(_HOST_PLUGIN):
            self.registry.pm.register(_HostPlugin(), name=_HOST_PLUGIN)
        self._formation_errors: dict[tuple[str, int], dict[str, Any]] = {}
        self._references: dict[str, dict[str, Any] | None] = {}

    def _job(self, kind: str, config: MatrixConfig, **extra: Any) -> dict[str, Any]:
        return {
            "kind": kind,
            "source": {"name": config.source, "params": config.params},
            "store": str(self.store.root),
            "registry": self.options.registry,
            "log_level": self.options.log_level,
            "check": self.options.check,
            **extra,
        }

    def pending(self) -> list[Case]:
        """Cases without a finished record (all of them unless resuming)."""
        cases = self.suite.cases()
        if not self.options.resume:
            return cases
        done = {r["case_id"] for r in read_records(self.run_dir)
                if not (self.options.retry_failed and r.get("status") in FAILED)}
        return [c for c in cases if c.id not in done]

    def run(self) -> list[dict[str, Any]]:
        """Run every pending case and return all records of the run folder."""
        cases = self.pending()
        hook = self.registry.pm.hook
        hook.ldbench_run_start(run_dir=str(self.run_dir), suite=self.suite.raw)
        self._form_all(cases)
        self._reference_all(cases)
        self._run_cases(cases)
        records = read_records(self.run_dir)
        hook.ldbench_run_end(run_dir=str(self.run_dir), records=records)
        return records

    def _run_cases(self, cases: list[Case]) -> None:
        """Run the cases one after another, appending each record as it ends."""
        from tqdm import tqdm

        hook = self.registry.pm.hook
        bar = tqdm(cases, desc="cases", unit="case", disable=None, leave=False)
        for case in bar:
            bar.set_postfix_str(f"{case.matrix.id} / {case.solver.name}")
            record = hook.ldbench_case(case=self._case_context(case))
            _append(self.results_path, record)
            logger.info("case %s: %s", case.id, record["status"])

    def _run_job(self, job: dict[str, Any], log_path: Path) -> JobOutcome:
        """Run a formation, reference or case job in a worker process with the
        run's timeout and memory cap. The Dask executor overrides this."""
        return run_in_worker(job, self.timeout, self.memory_limit, log_path=log_path)

    def _case_context(self, case: Case) -> dict[str, Any]:
        return {"case": case, "runner": self, **case.to_dict()}

    # Formation -----------------------------------------------------------------

    def _orders(self, cases: list[Case]) -> dict[str, tuple[MatrixConfig, set[int]]]:
        needed: dict[str, tuple[MatrixConfig, set[int]]] = {}
        for case in cases:
            try:
                source = instantiate_source(self.registry, case.matrix)
                solver = instantiate_solver(self.registry, case.solver)
                order = solver.leading_order(source.describe())
            except Exception as exc:  # reported per case by the solve job
                logger.debug("cannot plan %s: %s", case.id, exc)
                continue
            entry = needed.setdefault(case.matrix.id, (case.matrix, set()))
            entry[1].add(int(order))
            if self._needs_reference(case.matrix):
                entry[1].add(source.describe().order)
            referenced = self._referenced(case.matrix)
            if referenced is not None and self._needs_reference(referenced):
                full = instantiate_source(self.registry, referenced).describe().order
                needed.setdefault(referenced.id, (referenced, set()))[1].add(full)
        return needed

    def _referenced(self, config: MatrixConfig) -> MatrixConfig | None:
        """Return the matrix whose log-det is ``config``'s reference, when the
        suite names one with ``reference_matrix``."""
        if config.reference_matrix is None:
            return None
        return next(m for m in self.suite.matrices if m.id == config.reference_matrix)

    def _form_all(self, cases: list[Case]) -> None:
        """Form each needed leading block on its own, smallest first, so each
        case's formation time is measured, not pro-rated."""
        for config, orders in self._orders(cases).values():
            source = instantiate_source(self.registry, config)
            try:
                source.check_available()
            except (FileNotFoundError, ValueError) as exc:
                for order in orders:
                    self._formation_errors[(config.id, order)] = {
                        "status": "error", "error": f"{type(exc).__name__}: {exc}"}
                continue
            for order in sorted(orders):
                path = self.store.lookup(source, order)
                if path is not None and path.name.endswith(f"-m{order}.h5"):
                    continue
                logger.info("forming %s at order %d", config.id, order)
                log = self.run_dir / "logs" / f"form-{source_key(source)}-m{order}.log"
                outcome = self._run_job(self._job("form", config, order=order), log)
                if outcome.status != "ok":
                    error = dict(outcome.result)
                    error["status"] = outcome.status
                    error["error"] = "forming the matrix failed: " + str(error.get("error"))
                    self._formation_errors[(config.id, order)] = error

    # Reference -----------------------------------------------------------------

    def _needs_reference(self, config: MatrixConfig) -> bool:
        source = instantiate_source(self.registry, config)
        if source.describe().logdet is not None:
            return False
        return (self.suite.reference is not None
                and self.store.reference(source, self._reference_method()) is None)

    def _reference_method(self) -> str | None:
        """Label of the suite's reference solver, such as ``dense (Cholesky)``."""
        ref = self.suite.reference
        if ref is None:
            return None
        return f"{ref.name} ({instantiate_solver(self.registry, ref).label()})"

    def _reference_all(self, cases: list[Case]) -> None:
        seen: set[str] = set()
        for case in cases:
            config = case.matrix
            if config.id in seen:
                continue
            seen.add(config.id)
            referenced = self._referenced(config)
            if referenced is None:
                self._references[config.id] = self._reference(config)
                continue
            # A perturbed matrix (a low-precision kernel, say) is measured
            # against the log-det of the matrix it approximates.
            reference = dict(self._reference(referenced) or {})
            if reference:
                reference["method"] = f"{reference.get('method')} of {referenced.id}"
            self._references[config.id] = reference

    def _reference(self, config: MatrixConfig) -> dict[str, Any] | None:
        source = instantiate_source(self.registry, config)
        info = source.describe()
        if info.logdet is not None:
            return {"logabsdet": info.logdet, "sign": info.sign, "method": "closed form"}
        method = self._reference_method()
        cached = self.store.reference(source, method)
        if cached is not None or self.suite.reference is None:
            return cached
        ref = self.suite.reference
        logger.info("computing the reference log-det of %s with %s", config.id, method)
        outcome = self._run_job(
            self._job("solve", config, solver={"name": ref.name, "params": ref.params},
                      scratch_dir=str(self.run_dir / "scratch" / f"ref-{config.id}"), seed=0),
            self.run_dir / "logs" / f"reference-{source_key(source)}.log",
        )
        shutil.rmtree(self.run_dir / "scratch" / f"ref-{config.id}", ignore_errors=True)
        if outcome.status != "ok":
            logger.warning("reference for %s failed (%s): %s", config.id,
                           outcome.status, outcome.result.get("error"))
            return {"logabsdet": None, "sign": None, "method": method,
                    "error": f"{outcome.status}: {outcome.result.get('error')}"}
        estimate = outcome.result["estimate"]
        self.store.set_reference(source, float(estimate["logabsdet"]),
                                 float(estimate["sign"]), method)
        return self.store.reference(source, method)

    # Cases ---------------------------------------------------------------------

    def execute(self, case: Case) -> dict[str, Any]:
        """Run one case in a worker and return its finished record."""
        record = self._base_record(case)
        try:
            source = instantiate_source(self.registry, case.matrix)
            solver = instantiate_solver(self.registry, case.solver)
            info = source.describe()
            order = solver.leading_order(info)
        except Exception as exc:  # one bad configuration must not stop the run
            logger.warning("case %s not run: %s: %s", case.id, type(exc).__name__, exc)
            return {**record, "status": "error", "error": f"{type(exc).__name__}: {exc}",
                    "finished_at": time.time()}
        record.update(settings=solver.label(), matrix=info.description or case.matrix.id,
                      order=info.order)
        missing = _missing_modules(type(solver).requires + type(source).requires)
        if missing:
            return {**record, "status": "not-installed",
                    "error": f"missing Python modules {missing}; install the extra that "
                             "provides them, e.g. pip install 'ldbench[all]'"}
        required = solver.required_structure()
        if not info.structure.satisfies(required):
            return {**record, "status": "skipped",
                    "error": f"solver needs a {required.value} matrix but "
                             f"{case.matrix.id!r} is {info.structure.value}"}
        if (case.matrix.id, order) in self._formation_errors:
            return {**record, **self._formation_errors[(case.matrix.id, order)]}
        scratch = self.run_dir / "scratch" / case.id
        outcome = self._run_job(
            self._job("solve", case.matrix, solver={"name": case.solver.name,
                                                    "params": case.solver.params},
                      scratch_dir=str(scratch), seed=case.seed,
                      warmup=int(self.suite.settings.get("warmup", 0))),
            self.run_dir / "logs" / f"case-{case.id}.log",
        )
        shutil.rmtree(scratch, ignore_errors=True)
        return self._finish(record, outcome.status, outcome.result, case, info.structure)

    def _base_record(self, case: Case) -> dict[str, Any]:
        return {
            **case.to_dict(),
            "method": case.solver.name,
            "settings": "",
            "matrix": case.matrix.id,
            "status": "error",
            "started_at": time.time(),
        }

    def _finish(
        self,
        record: dict[str, Any],
        status: str,
        result: dict[str, Any],
        case: Case,
        structure: Structure,
    ) -> dict[str, Any]:
        record["status"] = status
        for key in ("error", "traceback", "signal", "peak_rss_mb"):
            if key in result:
                record[key] = result[key]
        record["finished_at"] = time.time()
        if status != "ok":
            return record
        estimate = result["estimate"]
        formation = result["formation"]
        logabsdet = _float(estimate["logabsdet"])
        sign = _float(estimate["sign"])
        # An SPD matrix has det > 0 and a finite log-det. A singular PSD matrix
        # declared SPD gets "invalid", because the declaration is wrong, while the
        # same matrix declared symmetric gets "ok" with -inf and sign 0.
        if structure is Structure.SPD and not (sign == 1.0 and math.isfinite(logabsdet)):
            record["status"] = "invalid"
            record["error"] = (f"matrix is declared SPD but the solver returned sign={sign}, "
                               f"log|det|={logabsdet}: {_spd_hint(sign, logabsdet)}")
        reference = self._references.get(case.matrix.id) or {}
        ref_value = reference.get("logabsdet")
        ref_sign = reference.get("sign")
        if (record["status"] == "ok" and ref_sign is not None
                and case.matrix.reference_matrix is None
                and result["read_order"] == result["order"]
                and sign in (-1.0, 0.0, 1.0) and float(ref_sign) in (-1.0, 0.0, 1.0)
                and sign != float(ref_sign)):
            record["status"] = "invalid"
            record["error"] = (f"the solver's sign of det A is {sign:+g} but the reference "
                               f"({reference.get('method')}) has {float(ref_sign):+g}; one "
                               "of them is wrong")
        wall = formation["seconds"] + result["solve_seconds"]
        record.update(
            settings=result["solver_label"],
            matrix=result["description"] or case.matrix.id,
            order=result["order"],
            read_order=result["read_order"],
            block_size=result["block_size"],
            logabsdet=logabsdet,
            sign=sign,
            stderr=estimate["stderr"],
            interval=estimate["interval"],
            reference_logdet=ref_value,
            reference_method=reference.get("method"),
            reference_error=reference.get("error"),
            reference_sign=ref_sign,
            rel_error=relative_error(logabsdet, ref_value),
            flops=estimate["flops"],
            tflops=tflops(estimate["flops"]),
            formation_seconds=formation["seconds"],
            formation_basis=formation["basis"],
            formation_device=formation["device"],
            formation_phases=formation["phases"],
            solve_seconds=result["solve_seconds"],
            cpu_seconds=result["cpu_seconds"],
            bytes_read=result.get("bytes_read"),
            bytes_written=result.get("bytes_written"),
            peak_gpu_memory_mb=result.get("peak_gpu_memory_mb"),
            wall_seconds=wall,
            cost_usd=cost(self.suite.pricing, formation["seconds"], formation["device"],
                          result["solve_seconds"], result["solver_device"]),
            stochastic=result["stochastic"],
            details=estimate["details"],
        )
        return record


_HOST_PLUGIN = "ldbench.host"


class _HostPlugin:
    """The host's own implementation of the case hook: run it in a worker."""

    @hookimpl
    def ldbench_case(self, case: dict[str, Any]) -> dict[str, Any]:
        return case["runner"].execute(case["case"])


def _spd_hint(sign: float, logabsdet: float) -> str:
    if sign == 0.0 or logabsdet == -math.inf:
        return ("the matrix is singular, so at most positive semi-definite; declare "
                "it 'symmetric' or add a positive shift to the diagonal")
    if sign == -1.0:
        return "the matrix is indefinite; declare it 'symmetric' or 'general'"
    return "the estimate is not finite; check the solver's log for overflow"


def _float(value: Any) -> float:
    return float(value) if value is not None else float("nan")


def _missing_modules(names: tuple[str, ...]) -> list[str]:
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]
