"""A throwaway plugin distribution, installed with pip, seen by the host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TOY_SOLVER = '''
"""Toy solver: log-det from symmetric eigenvalues (numpy.linalg.eigvalsh)."""
import numpy as np
from ldbench import Estimate, Solver, Structure, hookimpl


class EigSolver(Solver):
    name = "toy_eig"
    structures = frozenset({Structure.SYMMETRIC, Structure.SPD})

    def flops(self, info):
        return 9.0 * info.order**3

    def solve(self, matrix, context):
        values = np.linalg.eigvalsh(matrix.read())
        sign = float(np.prod(np.sign(values)))
        return Estimate(float(np.sum(np.log(np.abs(values)))), sign,
                        self.flops(matrix.info), matrix.order)


@hookimpl
def ldbench_register_solvers(register):
    register(EigSolver)
'''


def make_distribution(root: Path, name: str, module: str, body: str) -> Path:
    folder = root / name
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(body)
    (folder / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "0.0.1"

        [project.entry-points.ldbench]
        {name} = "{module}"

        [tool.setuptools]
        packages = ["{module}"]
    """))
    return folder


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """Install a working and a broken plugin distribution into a target folder."""
    root = tmp_path_factory.mktemp("dists")
    target = tmp_path_factory.mktemp("site")
    good = make_distribution(root, "ldbench-toy", "ldbench_toy", TOY_SOLVER)
    bad = make_distribution(root, "ldbench-broken", "ldbench_broken",
                            "raise ImportError('toy plugin failed on purpose')\n")
    for folder in (good, bad):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--no-build-isolation", "--target", str(target), str(folder)],
            check=True,
        )
    return target


def ldbench(args: list[str], plugin_path: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(plugin_path)}
    return subprocess.run([sys.executable, "-m", "ldbench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_plugins_lists_installed_and_broken(plugin_path, tmp_path):
    out = ldbench(["plugins"], plugin_path, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = {line.split("|")[1].strip(): line for line in out.stdout.splitlines()
             if line.startswith("|")}
    assert "ldbench-toy" in lines
    assert "solver:toy_eig" in lines["ldbench-toy"]
    assert "ok" in lines["ldbench-toy"]
    assert "broken" in lines["ldbench-broken"]
    assert "toy plugin failed on purpose" in lines["ldbench-broken"]
    assert "solver:dense" in lines["dense"]


def test_strict_mode_stops_on_broken_plugin(plugin_path, tmp_path):
    out = ldbench(["--strict", "plugins"], plugin_path, tmp_path)
    assert out.returncode != 0
    assert "toy plugin failed on purpose" in out.stderr


def test_suite_runs_third_party_solver(plugin_path, tmp_path):
    suite = tmp_path / "toy.toml"
    suite.write_text(textwrap.dedent("""
        [suite]
        name = "toy"

        [[matrix]]
        id = "kms"
        source = "synthetic"
        kind = "kms"
        n = 60
        rho = 0.6

        [[solver]]
        name = "toy_eig"

        [[solver]]
        name = "dense"
        method = "cholesky"
    """))
    out = ldbench(["run", str(suite), "--out", str(tmp_path / "run"),
                   "--store", str(tmp_path / "store")], plugin_path, tmp_path)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in
               (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in records] == ["toy_eig", "dense"]
    exact = 59 * __import__("math").log(1 - 0.6**2)
    for record in records:
        assert record["status"] == "ok"
        assert record["reference_logdet"] == pytest.approx(exact, rel=1e-14)
        assert record["logabsdet"] == pytest.approx(exact, rel=1e-10)
        assert record["rel_error"] < 1e-10
    assert records[0]["flops"] == 9.0 * 60**3
