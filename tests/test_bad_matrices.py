"""Hard matrices from .npy files through the runner, with exact expectations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ldbench import Structure
from ldbench._checks import MatrixCheckError, check_matrix
from ldbench._runner import read_records
from ldbench.cli import main

# id -> (array, structure, extra source keys)
MATRICES = {
    "nan": (np.array([[2.0, 0, 0], [0, 2, np.nan], [0, 0, 2]]), "general", ""),
    "rank2": (
        np.array([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]]),
        "symmetric",
        "logdet = -inf\nsign = 0.0",
    ),
    "rank2_spd": (np.array([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]]), "spd", ""),
    "tiny": (2e-6 * np.eye(512), "spd", f"logdet = {512 * math.log(2e-6)!r}"),
    "huge": (1e3 * np.eye(1000), "spd", f"logdet = {1000 * math.log(1e3)!r}"),
    "asymmetric": (np.array([[1.0, 2], [3, 1]]), "symmetric", ""),
    "indefinite": (np.array([[1.0, 2], [2, 1]]), "spd", ""),
    "negative": (
        np.array([[1.0, 2], [3, 4]]),
        "general",
        f"logdet = {math.log(2.0)!r}\nsign = -1.0",
    ),
}
SOLVERS = {
    "lu": ["nan", "rank2", "huge", "negative"],
    "ldl": ["rank2", "rank2_spd", "asymmetric"],
    "cholesky": ["rank2_spd", "tiny", "huge", "indefinite"],
}


def write_suite(tmp_path: Path) -> Path:
    parts = []
    for mid, (array, structure, extra) in MATRICES.items():
        np.save(tmp_path / f"{mid}.npy", array)
        parts.append(
            f'[[matrix]]\nid = "{mid}"\nsource = "file"\n'
            f'path = "{tmp_path / (mid + ".npy")}"\nstructure = "{structure}"\n'
            f"{extra}\n"
        )
    for method, ids in SOLVERS.items():
        parts.append(
            f'[[solver]]\nname = "dense"\nmethod = "{method}"\n'
            f"matrices = {json.dumps(ids)}\n"
        )
    path = tmp_path / "bad.toml"
    path.write_text("\n".join(parts))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict[tuple[str, str], dict]]:
    tmp_path = tmp_path_factory.mktemp("bad")
    run_dir = tmp_path / "run"
    code = main(
        [
            "run",
            str(write_suite(tmp_path)),
            "--out",
            str(run_dir),
            "--store",
            str(tmp_path / "store"),
        ]
    )
    assert code == 1
    by_case = {
        (r["matrix_id"], r["solver"]["params"]["method"]): r
        for r in read_records(run_dir)
    }
    return run_dir, by_case


def test_records_are_strict_json(run):
    run_dir, by_case = run

    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    lines = (run_dir / "results.jsonl").read_text().splitlines()
    assert len(lines) == 11
    for line in lines:
        json.loads(line, parse_constant=reject)
    rank2 = by_case[("rank2", "lu")]
    assert rank2["logabsdet"] == -math.inf
    assert rank2["reference_logdet"] == -math.inf


def test_nan_entry_stops_formation(run):
    record = run[1][("nan", "lu")]
    assert record["status"] == "error"
    assert record["error"].startswith("forming the matrix failed: ValueError")
    assert "entry (1, 2)" in record["error"]
    assert "is nan" in record["error"]


def test_nan_entry_check_names_position(handle_factory):
    handle = handle_factory(MATRICES["nan"][0])
    with pytest.raises(MatrixCheckError, match=r"nan at row 1, column 2"):
        check_matrix(handle, Structure.GENERAL)


@pytest.mark.parametrize("method", ["lu", "ldl"])
def test_singular_symmetric_is_ok(run, method):
    record = run[1][("rank2", method)]
    assert record["status"] == "ok", record.get("error")
    assert record["logabsdet"] == -math.inf
    assert record["sign"] == 0.0
    assert record["rel_error"] == 0.0
    assert record["details"]["zero_pivot_index"] == 1


def test_singular_declared_spd(run):
    ldl = run[1][("rank2_spd", "ldl")]
    assert ldl["status"] == "invalid"
    assert ldl["logabsdet"] == -math.inf
    assert "the matrix is singular, so at most positive semi-definite" in ldl["error"]
    cholesky = run[1][("rank2_spd", "cholesky")]
    assert cholesky["status"] == "error"
    assert "pivot index 1 (0-based)" in cholesky["error"]


def test_underflowing_determinant(run):
    record = run[1][("tiny", "cholesky")]
    assert record["status"] == "ok", record.get("error")
    assert record["logabsdet"] == pytest.approx(-6718.65005, abs=1e-5)
    assert record["logabsdet"] == pytest.approx(512 * math.log(2e-6), rel=1e-14)
    assert record["sign"] == 1.0
    assert record["rel_error"] < 1e-14


@pytest.mark.parametrize("method", ["lu", "cholesky"])
def test_overflowing_determinant(run, method):
    record = run[1][("huge", method)]
    assert record["status"] == "ok", record.get("error")
    assert record["logabsdet"] == pytest.approx(1000 * math.log(1000.0), rel=1e-14)
    assert record["sign"] == 1.0


def test_asymmetric_declared_symmetric(run):
    record = run[1][("asymmetric", "ldl")]
    assert record["status"] == "error"
    assert "largest asymmetry |A[0,1] - A[1,0]| = 1.000e+00" in record["error"]


def test_indefinite_cholesky_names_pivot(run):
    record = run[1][("indefinite", "cholesky")]
    assert record["status"] == "error"
    assert "pivot index 1 (0-based)" in record["error"]


def test_negative_determinant_lu(run):
    record = run[1][("negative", "lu")]
    assert record["status"] == "ok", record.get("error")
    assert record["sign"] == -1.0
    assert record["logabsdet"] == pytest.approx(math.log(2.0), rel=1e-14)
    assert record["rel_error"] < 1e-14
