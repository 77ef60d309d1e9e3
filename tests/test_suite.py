"""Suite parsing, validation errors, overrides and case ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from ldbench._plugins import Registry
from ldbench._suite import SuiteError, load_suite, parse_bytes, parse_duration

BASE = """
[suite]
name = "t"
timeout = "90s"

[[matrix]]
id = "kms"
source = "synthetic"
kind = "kms"
n = 50
rho = 0.5

[[solver]]
name = "dense"
method = ["cholesky", "lu"]
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def test_grid_expands_to_cases(tmp_path, registry):
    suite = load_suite(write(tmp_path, BASE), registry)
    cases = suite.cases()
    assert [c.solver.params["method"] for c in cases] == ["cholesky", "lu"]
    assert suite.timeout == 90.0
    assert len({c.id for c in cases}) == 2


def test_case_id_ignores_key_order(tmp_path, registry):
    reordered = BASE.replace('kind = "kms"\nn = 50\nrho = 0.5', 'rho = 0.5\nn = 50\nkind = "kms"')
    assert reordered != BASE
    first = [c.id for c in load_suite(write(tmp_path, BASE), registry).cases()]
    second = [c.id for c in load_suite(write(tmp_path, reordered), registry).cases()]
    assert first == second


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('name = "dense"', 'name = "dens"', ["[[solver]] #1", "'dens'", "did you mean 'dense'"]),
        ('source = "synthetic"', 'source = "synthetc"', ["[[matrix]] 'kms'", "did you mean 'synthetic'"]),
        ("rho = 0.5", "rhoo = 0.5", ["[[matrix]] 'kms'", "'rhoo'", "did you mean 'rho'"]),
        ("n = 50", 'n = "fifty"', ["[[matrix]] 'kms'", "'n'", "int"]),
        ('timeout = "90s"', 'timout = "90s"', ["[suite]", "'timout'", "did you mean 'timeout'"]),
        ('timeout = "90s"', 'timeout = "ninety"', ["[suite]", "'timeout'", "90s"]),
        ("[suite]", "[suit]", ["[suit]", "did you mean 'suite'"]),
    ],
)
def test_validation_names_file_table_key(tmp_path, registry, old, new, expected):
    text = BASE.replace(old, new, 1)
    assert text != BASE
    path = write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path, registry)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message


def test_override_matrix_and_solver(tmp_path, registry):
    suite = load_suite(write(tmp_path, BASE), registry,
                       ["matrix.n=20", "solver.dense.method=ldl", "suite.repetitions=2"])
    cases = suite.cases()
    assert {c.matrix.params["n"] for c in cases} == {20}
    assert {c.solver.params["method"] for c in cases} == {"ldl"}
    assert [c.repetition for c in cases] == [0, 1]


@pytest.mark.parametrize("reference", ['"dense"', '{ name = "dense", method = "lu" }'])
def test_override_reference_solver_param(tmp_path, registry, reference):
    text = BASE.replace('timeout = "90s"', f'timeout = "90s"\nreference = {reference}')
    suite = load_suite(write(tmp_path, text), registry,
                       ["suite.reference.method=ldl"])
    assert suite.reference.name == "dense"
    assert suite.reference.params["method"] == "ldl"


@pytest.mark.parametrize("reference", ["5", '["dense"]'])
def test_override_reference_of_wrong_type(tmp_path, registry, reference):
    text = BASE.replace('timeout = "90s"', f'timeout = "90s"\nreference = {reference}')
    with pytest.raises(SuiteError, match="must be a solver name or a table"):
        load_suite(write(tmp_path, text), registry, ["suite.reference.method=ldl"])


def test_override_reference_without_one(tmp_path, registry):
    with pytest.raises(SuiteError, match="has no \\[suite\\] reference"):
        load_suite(write(tmp_path, BASE), registry, ["suite.reference.method=ldl"])


def test_override_unknown_matrix_id(tmp_path, registry):
    with pytest.raises(SuiteError, match="did you mean 'kms'"):
        load_suite(write(tmp_path, BASE), registry, ["matrix.kmz.n=20"])


def test_missing_suite_file(tmp_path, registry):
    with pytest.raises(SuiteError, match="not found"):
        load_suite(tmp_path / "nope.toml", registry)


def test_parse_duration_and_bytes():
    assert parse_duration("90s") == 90.0
    assert parse_duration("10m") == 600.0
    assert parse_duration("3h") == 10800.0
    assert parse_duration(5) == 5.0
    assert parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes("4GiB") == 4 * 2**30
    with pytest.raises(ValueError, match="'3 parsecs'"):
        parse_duration("3 parsecs")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[[solver]]\nname = "flodance"\nn_s = 500\n',
         ["[[solver]] 'flodance' on [[matrix]] 'kms'", "500"]),
        ('[[solver]]\nname = "dense"\nmethod = ["cholesky", "lu"]\n', ["appears twice"]),
        ('[[solver]]\nname = "slq"\nmatrices = []\n', ["'matrices' is empty"]),
        ('[[solver]]\nname = "slq"\nsamples = []\n', ["'samples' is an empty list"]),
    ],
)
def test_suite_rejects_before_work(tmp_path, registry, extra, expected):
    text = BASE.replace("n = 50", "n = 50\nblock_size = 5") + "\n" + extra
    with pytest.raises(SuiteError) as info:
        load_suite(write(tmp_path, text), registry)
    for part in expected:
        assert part in str(info.value)


def test_solver_override_targets_declaring_solvers(tmp_path, registry):
    text = BASE + '\n[[solver]]\nname = "flodance"\nn_s = 5\n'
    text = text.replace("n = 50", "n = 50\nblock_size = 5")
    suite = load_suite(write(tmp_path, text), registry, ["solver.n_s=4"])
    flodance = [s for s in suite.solvers if s.name == "flodance"]
    assert [s.params["n_s"] for s in flodance] == [4]
    with pytest.raises(SuiteError, match="no \\[\\[solver\\]\\] .* declares parameter 'nope'"):
        load_suite(write(tmp_path, text), registry, ["solver.nope=4"])


def test_suite_path_must_be_file(tmp_path, registry):
    with pytest.raises(SuiteError, match="is not a file"):
        load_suite(tmp_path, registry)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SuiteError, match="binary.toml: not a UTF-8 text file"):
        load_suite(binary, registry)


def test_none_for_optional_param_gives_default():
    from ldbench_ooc import OocSolver

    solver = OocSolver(io=None, method=None)
    assert solver.params["io"] == "auto"
    assert solver.params["method"] == "lu"


def test_none_for_required_param_is_rejected():
    from ldbench import Param, ParameterError
    from ldbench._api import resolve_params

    declared = {"n": Param(None, int, "order", minimum=1, required=True)}
    with pytest.raises(ParameterError, match="'n' must be of type int, got None"):
        resolve_params("source 'x'", declared, {"n": None})


SUITES = sorted((Path(__file__).resolve().parents[1] / "suites").glob("*.toml"))


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suite_loads(path, registry):
    suite = load_suite(path, registry)
    assert suite.cases()


def test_missing_matrix_file_is_suite_error(tmp_path, registry):
    missing = tmp_path / "absent" / "x.npy"
    text = f"""
[suite]
name = "missing-file"

[[matrix]]
id = "m"
source = "file"
path = "{missing}"

[[solver]]
name = "dense"
"""
    with pytest.raises(SuiteError, match=r"\[\[matrix\]\] 'm': .*not found"):
        load_suite(write(tmp_path, text), registry)
