"""TOML suites: parsing, validation, overrides and expansion into cases.

A suite has a ``[suite]`` table, an optional ``[pricing]`` table, and arrays
of tables ``[[matrix]]`` and ``[[solver]]``. A list value of a parameter whose
declared type is not ``list`` is a grid: every combination becomes its own
matrix or solver configuration.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._api import MatrixSource, Param, ParameterError, Solver
from ._plugins import Registry

logger = logging.getLogger(__name__)

SUITE_KEYS = {
    "name": str,
    "description": str,
    "repetitions": int,
    "warmup": int,
    "timeout": (str, int, float),
    "memory_limit": (str, int),
    "reference": (str, dict),
    "store": str,
    "seed": int,
    "data_dir": str,
    "statistics": bool,
}
PRICING_KEYS = {"cpu_per_hour": (int, float), "gpu_per_hour": (int, float), "date": str, "source": str}
DEFAULT_PRICING = {
    "cpu_per_hour": 0.2,
    "gpu_per_hour": 2.0,
    "date": "2025-05",
    "source": "H100-class GPU at $2/h and 8-core CPU at $0.2/h, as in Ameli et al., "
    "Determinant Estimation under Memory Constraints and Neural Scaling Laws "
    "(ICML 2025)",
}
TOP_KEYS = ("suite", "pricing", "matrix", "solver")
DEFAULT_TIMEOUT = 3600.0


class SuiteError(ValueError):
    """Invalid suite; the message names the file, the table and the key."""


@dataclass
class MatrixConfig:
    """One resolved matrix of a suite."""

    id: str
    source: str
    params: dict[str, Any]
    reference_matrix: str | None = None


@dataclass
class SolverConfig:
    """One resolved solver configuration of a suite."""

    name: str
    params: dict[str, Any]
    matrices: list[str] | None = None


@dataclass
class Case:
    """One matrix x one solver configuration x one repetition."""

    matrix: MatrixConfig
    solver: SolverConfig
    repetition: int
    seed: int
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = case_id(self.matrix, self.solver, self.repetition, self.seed)

    def to_dict(self) -> dict[str, Any]:
        """Return the case as a JSON-serialisable dictionary."""
        return {
            "case_id": self.id,
            "matrix_id": self.matrix.id,
            "source": {"name": self.matrix.source, "params": self.matrix.params},
            "solver": {"name": self.solver.name, "params": self.solver.params},
            "repetition": self.repetition,
            "seed": self.seed,
        }


@dataclass
class Suite:
    """A validated, expanded suite."""

    path: Path
    name: str
    settings: dict[str, Any]
    pricing: dict[str, Any]
    matrices: list[MatrixConfig]
    solvers: list[SolverConfig]
    reference: SolverConfig | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def timeout(self) -> float:
        """Per-case timeout in seconds."""
        return parse_duration(self.settings.get("timeout", DEFAULT_TIMEOUT))

    @property
    def memory_limit(self) -> int | None:
        """Per-case memory cap in bytes, or None."""
        value = self.settings.get("memory_limit")
        return None if value in (None, "", 0) else parse_bytes(value)

    def cases(self) -> list[Case]:
        """Expand to cases, in suite order: matrices outer, solvers inner."""
        repetitions = int(self.settings.get("repetitions", 1))
        base_seed = int(self.settings.get("seed", 0))
        cases = []
        for matrix in self.matrices:
            for solver in self.solvers:
                if solver.matrices is not None and matrix.id not in solver.matrices:
                    continue
                for rep in range(repetitions):
                    cases.append(Case(matrix, solver, rep, base_seed + rep))
        return cases


def case_id(
    matrix: MatrixConfig, solver: SolverConfig, repetition: int, seed: int = 0
) -> str:
    """Return a 12-hex-digit id of a resolved case, independent of key order."""
    payload = json.dumps(
        {
            "matrix_id": matrix.id,
            "source": matrix.source,
            "matrix": matrix.params,
            "solver": solver.name,
            "solver_params": solver.params,
            "repetition": repetition,
            "seed": seed,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | float | int) -> float:
    """Parse ``"90s"``, ``"10m"``, ``"3h"``, ``"1d"`` or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(
                f"invalid duration {value!r}; write a number with a unit, such as "
                "'90s', '10m', '3h' or '1d'"
            )
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be positive")
    return seconds


_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


def parse_bytes(value: str | int) -> int:
    """Parse ``"512MB"``, ``"4GiB"`` or a number of bytes (kB = 1000 B, KiB = 1024 B)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _BYTES.match(str(value))
    if not match:
        raise ValueError(f"invalid size {value!r}; write a number with a unit, such as '4GB'")
    unit = (match[2] or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0]]
    return int(float(match[1]) * base**power)


def load_suite(
    path: Path | str,
    registry: Registry,
    overrides: list[str] | None = None,
) -> Suite:
    """Read, override, validate and expand a suite file.

    Parameters
    ----------
    path
        TOML file.
    registry
        Plugins whose parameter declarations validate the suite.
    overrides
        ``KEY=VALUE`` strings; see :func:`apply_override`.

    Raises
    ------
    SuiteError
        Before any work, on the first invalid table, key or value.
    """
    path = Path(path)
    if not path.exists():
        raise SuiteError(f"suite file {str(path)!r} not found")
    if not path.is_file():
        raise SuiteError(f"suite {str(path)!r} is not a file; give a TOML suite file "
                         "such as suites/quickstart.toml")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{path}: not a UTF-8 text file ({exc}); give a TOML suite") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: invalid TOML: {exc}") from exc
    for item in overrides or []:
        apply_override(raw, item, path, registry)
    return validate(raw, path, registry)


def _declares(registry: Registry | None, entry: dict[str, Any], param: str) -> bool:
    if registry is None:
        return True
    try:
        return param in registry.solver_class(str(entry.get("name", ""))).parameters
    except KeyError:
        return False


def apply_override(
    raw: dict[str, Any], item: str, path: Path, registry: Registry | None = None
) -> None:
    """Apply one command-line override to the raw suite.

    Forms: ``suite.KEY=V``, ``suite.reference.PARAM=V`` (a parameter of
    the reference solver), ``pricing.KEY=V``, ``matrix.PARAM=V`` (every
    matrix), ``matrix.ID.PARAM=V`` (the matrix with that id),
    ``solver.PARAM=V`` (every solver that declares PARAM) and
    ``solver.NAME.PARAM=V``. ``V`` is a TOML value; a bare word is a string.
    """
    if "=" not in item:
        raise SuiteError(f"override {item!r} must have the form KEY=VALUE, such as matrix.n=100")
    key, text = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    parts = key.strip().split(".")
    table = parts[0]
    if table in ("suite", "pricing") and len(parts) == 2:
        raw.setdefault(table, {})[parts[1]] = value
        return
    if parts[:2] == ["suite", "reference"] and len(parts) == 3:
        reference = raw.get("suite", {}).get("reference")
        if reference is None:
            raise SuiteError(
                f"override {item!r}: {path} has no [suite] reference. Set one with "
                "--set suite.reference=NAME first"
            )
        if isinstance(reference, str):
            reference = {"name": reference}
        if not isinstance(reference, dict):
            raise SuiteError(
                f"override {item!r}: [suite] key 'reference' in {path} is "
                f"{reference!r}; it must be a solver name or a table such as "
                '{ name = "memdet", num_blocks = 4 }'
            )
        reference[parts[2]] = value
        raw["suite"]["reference"] = reference
        return
    if table not in ("matrix", "solver") or len(parts) not in (2, 3):
        raise SuiteError(
            f"override {item!r}: key must be suite.KEY, suite.reference.PARAM, "
            "pricing.KEY, matrix[.ID].PARAM or solver[.NAME].PARAM"
        )
    entries = raw.get(table, [])
    if len(parts) == 2:
        param = parts[1]
        targets = entries
        if table == "solver":
            targets = [e for e in entries if param in e or _declares(registry, e, param)]
            if not targets:
                raise SuiteError(
                    f"override {item!r}: no [[solver]] in {path} declares parameter "
                    f"{param!r}; run 'ldbench info SOLVER' to list a solver's parameters"
                )
    else:
        selector, param = parts[1], parts[2]
        field_name = "id" if table == "matrix" else "name"
        targets = [e for e in entries if _entry_name(e, table) == selector]
        if not targets:
            names = sorted({_entry_name(e, table) for e in entries})
            near = difflib.get_close_matches(selector, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise SuiteError(
                f"override {item!r}: {path} has no [[{table}]] with {field_name} "
                f"{selector!r}{hint} (have: {', '.join(names)})"
            )
    for entry in targets:
        entry[param] = copy.deepcopy(value)


def _entry_name(entry: dict[str, Any], table: str) -> str:
    if table == "matrix":
        return str(entry.get("id", entry.get("source", "")))
    return str(entry.get("name", ""))


def _check_keys(
    table: dict[str, Any], allowed: dict[str, Any], where: str
) -> None:
    for key, value in table.items():
        if key not in allowed:
            near = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise SuiteError(
                f"{where}: unknown key {key!r}{hint} (valid: {', '.join(sorted(allowed))})"
            )
        if not isinstance(value, allowed[key]) or isinstance(value, bool) and allowed[key] is not bool:
            kinds = allowed[key] if isinstance(allowed[key], tuple) else (allowed[key],)
            raise SuiteError(
                f"{where}: key {key!r} must be {' or '.join(k.__name__ for k in kinds)}, "
                f"got {value!r}"
            )


def validate(raw: dict[str, Any], path: Path, registry: Registry) -> Suite:
    """Validate a parsed suite and expand its grids; see :func:`load_suite`."""
    for key in raw:
        if key not in TOP_KEYS:
            near = difflib.get_close_matches(key, TOP_KEYS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise SuiteError(
                f"{path}: unknown table [{key}]{hint} (valid: {', '.join(TOP_KEYS)})"
            )
    settings = raw.get("suite", {})
    _check_keys(settings, SUITE_KEYS, f"{path}: [suite]")
    for key, parser in (("timeout", parse_duration), ("memory_limit", parse_bytes)):
        if key in settings:
            try:
                parser(settings[key])
            except ValueError as exc:
                raise SuiteError(f"{path}: [suite] key {key!r}: {exc}") from exc
    for key, minimum in (("repetitions", 1), ("warmup", 0)):
        if key in settings and settings[key] < minimum:
            raise SuiteError(
                f"{path}: [suite] key {key!r} must be at least {minimum}, "
                f"got {settings[key]}"
            )
    if "memory_limit" in settings and parse_bytes(settings["memory_limit"]) <= 0:
        raise SuiteError(
            f"{path}: [suite] key 'memory_limit' must be positive, got "
            f"{settings['memory_limit']!r}; leave the key out for no limit"
        )
    pricing = dict(DEFAULT_PRICING)
    _check_keys(raw.get("pricing", {}), PRICING_KEYS, f"{path}: [pricing]")
    pricing.update(raw.get("pricing", {}))
    for key in ("cpu_per_hour", "gpu_per_hour"):
        if pricing[key] < 0:
            raise SuiteError(f"{path}: [pricing] key {key!r} must not be negative")

    matrices = _expand_matrices(raw.get("matrix", []), path, registry, settings)
    solvers = []
    for index, entry in enumerate(_array(raw, "solver", path)):
        solvers.extend(_expand_solver(entry, f"{path}: [[solver]] #{index + 1}", registry))
    ids = {m.id for m in matrices}
    base_ids = {m.id.split("[")[0] for m in matrices}
    for solver in solvers:
        if solver.matrices is not None:
            for mid in solver.matrices:
                if mid not in base_ids:
                    near = difflib.get_close_matches(mid, sorted(base_ids), n=1)
                    hint = f"; did you mean {near[0]!r}?" if near else ""
                    raise SuiteError(
                        f"{path}: [[solver]] {solver.name!r}: key 'matrices' names "
                        f"unknown matrix {mid!r}{hint} (matrix ids: "
                        f"{', '.join(sorted(base_ids))})"
                    )
            solver.matrices = [m for m in ids if m.split("[")[0] in solver.matrices]
    reference = None
    if "reference" in settings:
        ref = settings["reference"]
        entry = {"name": ref} if isinstance(ref, str) else dict(ref)
        expanded = _expand_solver(entry, f"{path}: [suite] key 'reference'", registry)
        if len(expanded) != 1:
            raise SuiteError(f"{path}: [suite] key 'reference' must not be a grid")
        reference = expanded[0]
    if not matrices:
        raise SuiteError(f"{path}: no [[matrix]] table; add at least one matrix")
    if not solvers:
        raise SuiteError(f"{path}: no [[solver]] table; add at least one solver")
    _check_duplicate_solvers(solvers, path)
    _check_pairs(matrices, solvers, path, registry)
    return Suite(
        path=path,
        name=str(settings.get("name", path.stem)),
        settings=settings,
        pricing=pricing,
        matrices=matrices,
        solvers=solvers,
        reference=reference,
        raw=raw,
    )


def _check_duplicate_solvers(solvers: list[SolverConfig], path: Path) -> None:
    seen: set[str] = set()
    for solver in solvers:
        key = json.dumps([solver.name, solver.params, solver.matrices], sort_keys=True,
                         default=str)
        if key in seen:
            raise SuiteError(
                f"{path}: [[solver]] {solver.name!r} with parameters {solver.params} "
                "appears twice; remove the duplicate or raise [suite] repetitions"
            )
        seen.add(key)


def _check_pairs(
    matrices: list[MatrixConfig], solvers: list[SolverConfig], path: Path,
    registry: Registry,
) -> None:
    """Check each solver against each matrix it runs on, such as FLODANCE's
    n_s against the matrix's sample count, before any work."""
    for solver in solvers:
        matrix_ids = solver.matrices
        if matrix_ids is not None and not matrix_ids:
            raise SuiteError(
                f"{path}: [[solver]] {solver.name!r}: key 'matrices' is empty, so the "
                "solver would run on nothing; list matrix ids or remove the key"
            )
        instance = instantiate_solver(registry, solver)
        for matrix in matrices:
            if matrix_ids is not None and matrix.id not in matrix_ids:
                continue
            try:
                info = instantiate_source(registry, matrix).describe()
            except FileNotFoundError as exc:
                raise SuiteError(f"{path}: [[matrix]] {matrix.id!r}: {exc}") from exc
            try:
                instance.leading_order(info)
            except (ParameterError, ValueError) as exc:
                raise SuiteError(
                    f"{path}: [[solver]] {solver.name!r} on [[matrix]] {matrix.id!r}: "
                    f"{exc}; restrict the solver with 'matrices = [...]' or change "
                    "the parameter"
                ) from exc


def _array(raw: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise SuiteError(f"{path}: '{key}' must be an array of tables, written [[{key}]]")
    return value


def _expand_matrices(
    entries: Any, path: Path, registry: Registry, settings: dict[str, Any]
) -> list[MatrixConfig]:
    if not isinstance(entries, list):
        raise SuiteError(f"{path}: 'matrix' must be an array of tables, written [[matrix]]")
    out: list[MatrixConfig] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{path}: [[matrix]] #{index + 1}"
        entry = dict(entry)
        if "source" not in entry:
            raise SuiteError(f"{where}: missing key 'source' (the matrix source name)")
        name = entry.pop("source")
        reference_matrix = entry.pop("reference_matrix", None)
        mid = entry.pop("id", name)
        if not isinstance(mid, str) or not mid:
            raise SuiteError(f"{where}: key 'id' must be a non-empty string, got {mid!r}")
        where = f"{path}: [[matrix]] {mid!r}"
        if mid in seen:
            raise SuiteError(f"{where}: id {mid!r} is used twice; give each matrix its own id")
        seen.add(mid)
        try:
            cls = registry.source_class(name)
        except KeyError as exc:
            raise SuiteError(f"{where}: key 'source': {exc.args[0]}") from exc
        if "data_dir" in settings and "data_dir" in cls.parameters and "data_dir" not in entry:
            entry["data_dir"] = settings["data_dir"]
        try:
            grid = _grid(entry, cls.parameters)
        except ParameterError as exc:
            raise SuiteError(f"{where}: {exc}") from exc
        for params in grid:
            try:
                source = cls(**params)
            except ParameterError as exc:
                raise SuiteError(f"{where}: {exc}") from exc
            label = mid if len(grid) == 1 else f"{mid}[{_grid_label(entry, params, cls.parameters)}]"
            out.append(MatrixConfig(label, name, source.params, reference_matrix))
    ids = {m.id for m in out}
    for config in out:
        ref = config.reference_matrix
        if ref is None:
            continue
        if not isinstance(ref, str) or ref not in ids or ref == config.id:
            near = difflib.get_close_matches(str(ref), sorted(ids), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise SuiteError(
                f"{path}: [[matrix]] {config.id!r}: key 'reference_matrix' = {ref!r} "
                f"must name another matrix of the suite{hint} (ids: "
                f"{', '.join(sorted(ids))})"
            )
    return out


def _expand_solver(entry: dict[str, Any], where: str, registry: Registry) -> list[SolverConfig]:
    entry = dict(entry)
    if "name" not in entry:
        raise SuiteError(f"{where}: missing key 'name' (the solver name)")
    name = entry.pop("name")
    matrices = entry.pop("matrices", None)
    if matrices is not None and (
        not isinstance(matrices, list) or not all(isinstance(m, str) for m in matrices)
    ):
        raise SuiteError(f"{where}: key 'matrices' must be a list of matrix ids")
    try:
        cls = registry.solver_class(name)
    except KeyError as exc:
        raise SuiteError(f"{where}: key 'name': {exc.args[0]}") from exc
    out = []
    try:
        grid = _grid(entry, cls.parameters)
    except ParameterError as exc:
        raise SuiteError(f"{where} ({name}): {exc}") from exc
    for params in grid:
        try:
            solver = cls(**params)
        except ParameterError as exc:
            raise SuiteError(f"{where} ({name}): {exc}") from exc
        out.append(SolverConfig(name, solver.params, matrices))
    return out


def _grid(entry: dict[str, Any], declared: dict[str, Param]) -> list[dict[str, Any]]:
    keys = list(entry)
    axes = []
    for key in keys:
        value = entry[key]
        is_grid = isinstance(value, list) and not (
            key in declared and declared[key].kind is list
        )
        if is_grid and not value:
            raise ParameterError(
                f"parameter {key!r} is an empty list, which makes an empty grid; "
                "give at least one value"
            )
        axes.append(value if is_grid else [value])
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def _grid_label(entry: dict[str, Any], params: dict[str, Any], declared: dict[str, Param]) -> str:
    parts = []
    for key, value in entry.items():
        if isinstance(value, list) and not (key in declared and declared[key].kind is list):
            parts.append(f"{key}={params[key]}")
    return ",".join(parts)


def instantiate_source(registry: Registry, config: MatrixConfig) -> MatrixSource:
    """Build the source object of a resolved matrix configuration."""
    return registry.source_class(config.source)(**config.params)


def instantiate_solver(registry: Registry, config: SolverConfig) -> Solver:
    """Build the solver object of a resolved solver configuration."""
    return registry.solver_class(config.name)(**config.params)
