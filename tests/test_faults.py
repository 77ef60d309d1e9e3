"""Faulty solvers become case statuses while the rest of the suite finishes."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import psutil
import pytest

from faulty_plugin import install, run_cli

KMS_LOGDET = 29 * math.log(1 - 0.5**2)
IDENTITY_LOGDET = 20 * math.log(3.0)

FAULT_SUITE = """
[suite]
name = "faults"
timeout = "6s"
memory_limit = "300MB"

[[matrix]]
id = "kms"
source = "synthetic"
kind = "kms"
n = 30
rho = 0.5

[[matrix]]
id = "identity"
source = "synthetic"
kind = "identity"
n = 20
scale = 3.0

[[solver]]
name = "fault"
mode = {modes}
pidfile = "{pidfile}"
matrices = ["kms"]

[[solver]]
name = "dense"
method = "cholesky"
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    return install(tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("site"))


def run_suite(
    tmp_path: Path, plugin_path: Path, modes: list[str], **env: str
) -> list[dict]:
    suite = tmp_path / "faults.toml"
    suite.write_text(
        textwrap.dedent(
            FAULT_SUITE.format(modes=json.dumps(modes), pidfile=tmp_path / "child.pid")
        )
    )
    out = run_cli(
        [
            "run",
            str(suite),
            "--out",
            str(tmp_path / "run"),
            "--store",
            str(tmp_path / "store"),
        ],
        plugin_path,
        tmp_path,
        **env,
    )
    assert out.returncode == 1, out.stderr
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def check_dense_cases(records: list[dict]) -> None:
    dense = {r["matrix_id"]: r for r in records if r["method"] == "dense"}
    assert dense["kms"]["status"] == "ok", dense["kms"].get("error")
    assert dense["kms"]["logabsdet"] == pytest.approx(KMS_LOGDET, rel=1e-13)
    assert dense["identity"]["status"] == "ok", dense["identity"].get("error")
    assert dense["identity"]["logabsdet"] == pytest.approx(IDENTITY_LOGDET, rel=1e-13)


def test_faults_become_statuses(tmp_path, plugin_path):
    records = run_suite(tmp_path, plugin_path, ["segfault", "hang", "oom", "raise"])
    assert len(records) == 6
    faults = {
        r["solver"]["params"]["mode"]: r for r in records if r["method"] == "fault"
    }

    segfault = faults["segfault"]
    assert segfault["status"] == "crashed"
    assert segfault["signal"] == "SIGSEGV"
    assert "signal SIGSEGV" in segfault["error"]
    # faulthandler's dump in the case log names the solver's frame.
    assert "Segmentation fault" in segfault["traceback"]
    assert "in solve" in segfault["traceback"]

    hang = faults["hang"]
    assert hang["status"] == "timeout"
    assert "timed out after 6 s" in hang["error"]
    child = int((tmp_path / "child.pid").read_text())
    if psutil.pid_exists(child):
        assert psutil.Process(child).status() == psutil.STATUS_ZOMBIE

    oom = faults["oom"]
    assert oom["status"] == "out-of-memory"
    assert "cap of 286 MiB" in oom["error"]

    raised = faults["raise"]
    assert raised["status"] == "error"
    assert raised["error"] == "RuntimeError: deliberate failure in FaultSolver.solve"
    assert "ldbench_faulty/__init__.py" in raised["traceback"]
    assert "in solve" in raised["traceback"]

    check_dense_cases(records)


def test_full_scratch_disk_is_an_error(tmp_path, plugin_path):
    # Files over 1 MiB fail with EFBIG; the solver writes 16 MiB of scratch.
    records = run_suite(
        tmp_path, plugin_path, ["fill_scratch"], LDBENCH_FILE_SIZE_LIMIT=str(2**20)
    )
    assert [r["method"] for r in records] == ["fault", "dense", "dense"]
    full = records[0]
    assert full["status"] == "error"
    assert full["error"].startswith("OSError: [Errno 27] File too large")
    assert "removed 1 partial scratch files (1.0 MiB)" in full["error"]
    assert not (tmp_path / "run" / "scratch" / full["case_id"]).exists()
    check_dense_cases(records)
