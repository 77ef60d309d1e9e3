"""The example plugin distribution examples/ldbench-hutchpp, installed with pip."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ldbench-hutchpp"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Install the example distribution into a target folder, without deps."""
    target = tmp_path_factory.mktemp("site")
    # A copy keeps setuptools' build/ and .egg-info/ out of the source tree.
    source = tmp_path_factory.mktemp("dist") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(source)],
        check=True,
    )
    return target


def run(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_installed_plugin_is_listed(site, tmp_path):
    out = run(["-m", "ldbench.cli", "plugins"], site, tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines()
            if line.startswith("|")}
    assert "hutchpp" in rows
    assert "ldbench-hutchpp" in rows["hutchpp"]
    assert "0.1.0" in rows["hutchpp"]
    assert "| ok" in rows["hutchpp"]
    assert "solver:hutchpp" in rows["hutchpp"]


def test_info_shows_parameters(site, tmp_path):
    out = run(["-m", "ldbench.cli", "info", "hutchpp"], site, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "solver 'hutchpp' from plugin 'hutchpp' (ldbench-hutchpp 0.1.0)" in out.stdout
    assert "stochastic: True" in out.stdout
    for name in ("degree", "samples", "lanczos_steps", "min_eig", "max_eig"):
        assert f"    {name}: " in out.stdout


def test_disabled_plugin_is_not_loaded(site, tmp_path):
    out = run(["-m", "ldbench.cli", "-p", "no:hutchpp", "plugins"], site, tmp_path)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("| hutchpp"))
    assert "disabled" in row
    assert "solver:hutchpp" not in row
    out = run(["-m", "ldbench.cli", "-p", "no:hutchpp", "info", "hutchpp"], site, tmp_path)
    assert out.returncode == 2
    assert "no solver or source named 'hutchpp'" in out.stderr


def test_suite_runs_hutchpp_beside_dense(site, tmp_path):
    suite = tmp_path / "hutchpp.toml"
    suite.write_text(textwrap.dedent("""
        [suite]
        name = "hutchpp"
        repetitions = 2

        [[matrix]]
        id = "kms"
        source = "synthetic"
        kind = "kms"
        n = 120
        rho = 0.5

        [[solver]]
        name = "hutchpp"
        samples = 60

        [[solver]]
        name = "dense"
        method = "cholesky"
    """))
    out = run(["-m", "ldbench.cli", "run", str(suite), "--out", str(tmp_path / "run"),
               "--store", str(tmp_path / "store")], site, tmp_path)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in
               (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in records] == ["hutchpp", "hutchpp", "dense", "dense"]
    exact = 119 * math.log(1 - 0.5**2)
    for record in records:
        assert record["status"] == "ok", record.get("error")
        assert record["reference_logdet"] == pytest.approx(exact, rel=1e-14)
    hutchpp = records[:2]
    assert hutchpp[0]["logabsdet"] != hutchpp[1]["logabsdet"]  # seeds differ
    for record in hutchpp:
        assert record["rel_error"] < 0.1
        assert record["stderr"] > 0
        assert record["stochastic"] is True
        assert record["settings"] == "deg=60, s=60"
    assert records[2]["rel_error"] < 1e-12


def test_conformance_of_installed_plugin(site, tmp_path):
    script = textwrap.dedent("""
        from ldbench.testing import check_solver
        from ldbench_hutchpp import HutchppSolver
        import ldbench_hutchpp
        print(ldbench_hutchpp.__file__)
        print(check_solver(HutchppSolver, {"samples": 60}, rtol=0.05))
    """)
    out = run(["-c", script], site, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[0].startswith(str(site))
    assert "0 of 8 checks failed" in out.stdout


def test_example_own_tests_pass(site, tmp_path):
    out = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
              site, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
