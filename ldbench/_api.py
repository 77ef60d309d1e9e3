"""Public contracts between the ldbench host and its plugins.

A :class:`MatrixSource` forms a matrix into the store, a :class:`Solver` reads
it through a :class:`MatrixHandle` and returns an :class:`Estimate`. Every
log-determinant in ldbench is a natural logarithm of ``|det A|``.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    import h5py

logger = logging.getLogger(__name__)

__all__ = [
    "check_leading_order",
    "factorization_flops",
    "Estimate",
    "FormationRecord",
    "MatrixHandle",
    "MatrixInfo",
    "MatrixSource",
    "BlockWriter",
    "Param",
    "ParameterError",
    "SolveContext",
    "Solver",
    "SolverError",
    "Structure",
]


class Structure(str, enum.Enum):
    """Structure of a matrix, from the weakest to the strongest assumption."""

    GENERAL = "general"
    SYMMETRIC = "symmetric"
    SPD = "spd"

    def satisfies(self, required: Structure) -> bool:
        """Return True when a matrix of this structure also has ``required``."""
        rank = {Structure.GENERAL: 0, Structure.SYMMETRIC: 1, Structure.SPD: 2}
        return rank[self] >= rank[required]


class ParameterError(ValueError):
    """Invalid parameter of a source or a solver; the message names the fix."""


class SolverError(RuntimeError):
    """Solver failure that is a property of the input, such as a zero pivot."""


@dataclass(frozen=True)
class Param:
    """Declaration of one parameter of a source or a solver.

    Parameters
    ----------
    default
        Value used when the suite does not set the parameter, or sets it to
        ``None`` (possible from Python, not from TOML). ``None`` with
        ``required=True`` means the suite must set it.
    kind
        Python type the value must have: ``int``, ``float``, ``str``, ``bool``
        or ``list``. An ``int`` is accepted where ``float`` is declared.
    help
        One sentence with the unit, shown by ``ldbench info``.
    choices
        Allowed values, or ``None`` for any value of ``kind``.
    minimum
        Smallest allowed number (inclusive), or ``None``.
    required
        Whether the suite must give a value.
    """

    default: Any
    kind: type
    help: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    required: bool = False

    def check(self, owner: str, name: str, value: Any) -> Any:
        """Return ``value`` converted to ``kind``, or raise ParameterError.

        ``None`` for an optional parameter means its default.
        """
        if value is None and not self.required:
            return self.default
        kind_ok = isinstance(value, self.kind) and not (
            self.kind in (int, float) and isinstance(value, bool)
        )
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            kind_ok = True
        if not kind_ok:
            raise ParameterError(
                f"{owner}: parameter {name!r} must be of type {self.kind.__name__}, "
                f"got {value!r} ({type(value).__name__})"
            )
        if self.choices is not None and value not in self.choices:
            raise ParameterError(
                f"{owner}: parameter {name!r} = {value!r} is not one of "
                f"{list(self.choices)}"
            )
        if self.minimum is not None and value < self.minimum:
            raise ParameterError(
                f"{owner}: parameter {name!r} = {value!r} is below the minimum "
                f"{self.minimum}"
            )
        return value


def resolve_params(
    owner: str, declared: dict[str, Param], given: dict[str, Any]
) -> dict[str, Any]:
    """Check ``given`` against ``declared`` and fill in defaults.

    Raises
    ------
    ParameterError
        On an unknown name (with the nearest declared name), a missing required
        value, or a value of the wrong type or range.
    """
    import difflib

    resolved: dict[str, Any] = {}
    for name, value in given.items():
        if name not in declared:
            near = difflib.get_close_matches(name, list(declared), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            valid = ", ".join(sorted(declared)) or "none"
            raise ParameterError(
                f"{owner}: unknown parameter {name!r}{hint} (valid: {valid})"
            )
        resolved[name] = declared[name].check(owner, name, value)
    for name, param in declared.items():
        if name not in resolved:
            if param.required:
                raise ParameterError(f"{owner}: parameter {name!r} is required")
            resolved[name] = param.default
    return resolved


@dataclass
class MatrixInfo:
    """Description of a square matrix, or of one of its leading blocks.

    Attributes
    ----------
    order
        Number of rows m (the matrix is m x m).
    structure
        Strongest structure the source guarantees.
    block_size
        Outputs per sample d for NTK-like matrices, so ``order = samples * d``
        with rows ordered sample-major; 1 for matrices without that structure.
    logdet
        Exact natural log of ``|det A|`` from a closed form, or ``None``.
    sign
        Sign of ``det A`` when ``logdet`` is given: -1, 0 or 1.
    dtype
        NumPy dtype name of the stored matrix.
    description
        Short human-readable label used in tables, such as ``"ntk mlp digits
        m=3000"``.
    """

    order: int
    structure: Structure
    block_size: int = 1
    logdet: float | None = None
    sign: float | None = None
    dtype: str = "float64"
    description: str = ""

    @property
    def samples(self) -> int:
        """Number of samples n = order / block_size."""
        return self.order // self.block_size


@dataclass
class FormationRecord:
    """Cost of forming a matrix, stored with it.

    Attributes
    ----------
    seconds
        Wall time of the formation, in seconds.
    flops
        Analytic floating-point operation count (multiply-add = 2).
    device
        ``"cpu"`` or ``"gpu"``; selects the price per hour.
    phases
        Optional per-phase figures, such as ``{"jacobian": {"seconds": 1.2}}``.
    """

    seconds: float
    flops: float
    device: str = "cpu"
    phases: dict[str, dict[str, float]] = field(default_factory=dict)


class BlockWriter(Protocol):
    """Destination a source writes its matrix into, one block at a time."""

    order: int

    def write(self, row: int, col: int, block: np.ndarray) -> None:
        """Store ``block`` with its top-left corner at (``row``, ``col``)."""

    def add_phase(self, name: str, seconds: float, flops: float = 0.0) -> None:
        """Add time (s) and FLOPs to a named formation phase."""

    def is_done(self, tag: str) -> bool:
        """Return True when a step with this tag finished in an earlier,
        interrupted formation of the same matrix, so its blocks are stored."""

    def mark_done(self, tag: str) -> None:
        """Record durably that the blocks of step ``tag`` are written.

        A source that calls this after each step (a block pair of an NTK, for
        example) lets a killed formation resume without redoing those steps.
        """


class MatrixSource:
    """Base class of every matrix source plugin.

    Subclasses set ``name``, ``version`` and ``parameters`` and implement
    :meth:`describe` and :meth:`form`. A source must be able to form any
    leading ``order x order`` block without forming the rest, and it writes
    blocks through a :class:`BlockWriter` so the matrix never has to fit in
    memory as one array.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    parameters: ClassVar[dict[str, Param]] = {}
    requires: ClassVar[tuple[str, ...]] = ()
    device: ClassVar[str] = "cpu"

    def __init__(self, **params: Any) -> None:
        self.params = resolve_params(f"source {self.name!r}", self.parameters, params)
        self.validate()

    def validate(self) -> None:
        """Check parameter combinations; raise ParameterError on a bad one."""

    def describe(self, order: int | None = None) -> MatrixInfo:
        """Describe the matrix, or its leading ``order x order`` block."""
        raise NotImplementedError

    def form(self, order: int, out: BlockWriter) -> None:
        """Write the leading ``order x order`` block into ``out``."""
        raise NotImplementedError

    def formation_flops(self, order: int) -> float:
        """Analytic FLOP count of forming the leading block of ``order``."""
        return 0.0

    def fingerprint(self) -> str:
        """Return a token that changes when the source's input data change.

        It joins the name, version and parameters in the store key, so a
        source that reads a user's file can return the file's size and
        modification time, and a stale stored matrix is not served.
        """
        return ""

    def check_available(self) -> None:
        """Raise FileNotFoundError or ParameterError before any work when the
        inputs the source needs (data files, for example) are missing."""


@dataclass
class Estimate:
    """Result of one solver call.

    Attributes
    ----------
    logabsdet
        Natural log of ``|det A|``; ``-inf`` for a singular matrix.
    sign
        Sign of ``det A``: -1, 0 or 1 (NaN when the solver cannot tell).
    flops
        Analytic FLOP count of the solve (multiply-add = 2).
    read_order
        Order of the leading block the solver read (``m`` for the whole).
    stderr
        Standard error of ``logabsdet`` for estimators, else ``None``.
    interval
        Confidence interval ``(low, high)`` of ``logabsdet``, or ``None``.
    details
        Solver-specific figures, JSON-serialisable.
    """

    logabsdet: float
    sign: float
    flops: float
    read_order: int
    stderr: float | None = None
    interval: tuple[float, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the estimate as a JSON-serialisable dictionary."""
        return {
            "logabsdet": _json_float(self.logabsdet),
            "sign": _json_float(self.sign),
            "flops": float(self.flops),
            "read_order": int(self.read_order),
            "stderr": None if self.stderr is None else float(self.stderr),
            "interval": None if self.interval is None else [float(v) for v in self.interval],
            "details": self.details,
        }


def check_leading_order(
    order: int | None, full: int, block_size: int = 1, block_name: str = "block_size"
) -> int:
    """Return the leading order a source is asked for, ``full`` when None.

    Raises
    ------
    ValueError
        When ``order`` is outside ``1..full`` or is not a multiple of
        ``block_size`` (a leading block holds whole samples); ``block_name``
        is the parameter named in the message.
    """
    order = full if order is None else int(order)
    if not 1 <= order <= full:
        raise ValueError(
            f"order {order} is outside 1..{full}; request 1 <= order <= {full}"
        )
    if order % block_size != 0:
        raise ValueError(
            f"order {order} is not a multiple of {block_name} = {block_size}; request "
            "a whole number of samples"
        )
    return order


def factorization_flops(method: str, order: int) -> float:
    """Return the FLOP count of a dense factorisation (multiply-add = 2).

    ``order**3 / 3`` for ``"cholesky"`` and ``"ldl"``, ``2 * order**3 / 3``
    for ``"lu"``, the leading terms of the LAPACK counts.
    """
    cube = float(order) ** 3
    if method == "lu":
        return 2.0 * cube / 3.0
    if method in ("cholesky", "ldl"):
        return cube / 3.0
    raise ValueError(f"unknown factorisation {method!r}; use 'cholesky', 'ldl' or 'lu'")


def _json_float(value: float) -> float | str:
    value = float(value)
    if math.isfinite(value):
        return value
    return str(value)


@dataclass
class SolveContext:
    """Per-case settings the runner gives a solver.

    Attributes
    ----------
    scratch_dir
        Folder for scratch files; the runner removes it after the case.
    seed
        Seed for stochastic solvers; repetitions get different seeds.
    device
        ``"cpu"`` or ``"gpu"``.
    """

    scratch_dir: Path
    seed: int = 0
    device: str = "cpu"


class MatrixHandle:
    """Read access to a stored matrix, limited to the leading block a solver
    declared through :meth:`Solver.leading_order`.

    Parameters
    ----------
    path
        HDF5 file that contains the dataset ``"matrix"``; the dataset may be
        larger than ``order`` when a full matrix serves a leading block.
    info
        Description of the whole matrix (``info.order`` is the full m).
    order
        Order of the readable leading block (``order <= info.order``).
    """

    def __init__(self, path: Path, info: MatrixInfo, order: int | None = None) -> None:
        self.path = Path(path)
        self.info = info
        self.order = info.order if order is None else int(order)
        self._file: h5py.File | None = None

    def dataset(self) -> h5py.Dataset:
        """Return the open h5py dataset (it may be larger than :attr:`order`)."""
        import h5py

        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file["matrix"]

    def read(self) -> np.ndarray:
        """Read the whole readable block into memory as a float64 array."""
        return self.block(0, self.order, 0, self.order)

    def block(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Read rows ``row0:row1`` and columns ``col0:col1`` as float64."""
        for name, value in (("row1", row1), ("col1", col1)):
            if value > self.order:
                raise IndexError(
                    f"{name}={value} is outside the readable leading block of order "
                    f"{self.order}; declare a larger leading_order in the solver"
                )
        return np.asarray(self.dataset()[row0:row1, col0:col1], dtype=np.float64)

    def close(self) -> None:
        """Close the underlying file."""
        if self._file is not None:
            self._file.close()
            self._file = None


class Solver:
    """Base class of every log-determinant solver plugin.

    Subclasses set the class attributes and implement :meth:`flops` and
    :meth:`solve`. FLOPs count a multiply-add as two operations.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    parameters: ClassVar[dict[str, Param]] = {}
    structures: ClassVar[frozenset[Structure]] = frozenset(Structure)
    requires: ClassVar[tuple[str, ...]] = ()
    stochastic: ClassVar[bool] = False
    device: ClassVar[str] = "cpu"

    def __init__(self, **params: Any) -> None:
        self.params = resolve_params(f"solver {self.name!r}", self.parameters, params)
        self.validate()

    def validate(self) -> None:
        """Check parameter combinations; raise ParameterError on a bad one."""

    def required_structure(self) -> Structure:
        """Weakest structure this configuration accepts."""
        return min(self.structures, key=lambda s: [*Structure].index(s))

    def label(self) -> str:
        """Short settings string for tables, such as ``"LDL, n_b=4"``."""
        return ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))

    def leading_order(self, info: MatrixInfo) -> int:
        """Order of the leading block this solver reads (default: all of it)."""
        return info.order

    def prepare(self) -> None:
        """Do one-time set-up outside the timed solve.

        The runner calls this before it starts the clock. The default imports
        the modules named in ``requires``, so an import that takes seconds
        (detkit, imate, torch) is not counted as solve time.
        """
        import importlib

        for module in self.requires:
            importlib.import_module(module)

    def flops(self, info: MatrixInfo) -> float:
        """Analytic FLOP count for a matrix described by ``info``."""
        raise NotImplementedError

    def solve(self, matrix: MatrixHandle, context: SolveContext) -> Estimate:
        """Estimate the log-determinant of the matrix behind ``matrix``."""
        raise NotImplementedError
