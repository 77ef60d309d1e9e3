"""asv discovers the suite benchmarks and records time, memory and error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
ASV = shutil.which("asv", path=str(Path(sys.executable).parent)) or shutil.which("asv")

SUITE = """
[suite]
name = "asv-test"
timeout = "2m"

[[matrix]]
id = "kms"
source = "synthetic"
kind = "kms"
n = {n}
rho = 0.5
block_size = 4

[[solver]]
name = "dense"
method = "cholesky"

[[solver]]
name = "flodance"
fraction = 0.5

[[solver]]
name = "slq"
lanczos_degree = 20
samples = 4
"""


def suite_cases():
    """Import benchmarks/suite_cases.py of this repository."""
    sys.path.insert(0, str(REPOSITORY))
    try:
        from benchmarks import suite_cases
    finally:
        sys.path.remove(str(REPOSITORY))
    return suite_cases


def write_suite(path: Path, n: int = 120) -> Path:
    path.write_text(textwrap.dedent(SUITE.format(n=n)))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git repository with the asv configuration and benchmarks of ldbench."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPOSITORY / "asv.conf.json", root)
    shutil.copytree(REPOSITORY / "benchmarks", root / "benchmarks",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "suites").mkdir()
    shutil.copy(REPOSITORY / "suites" / "asv-small.toml", root / "suites")
    git = ["git", "-c", "user.name=ldbench", "-c", "user.email=ldbench@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run([*git, "add", "."], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "benchmarks"], cwd=root, check=True)
    return root


def asv(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    out = subprocess.run([ASV, *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"asv {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.mark.slow
def test_asv_run_records_results(project, tmp_path):
    assert ASV is not None, "asv is missing: pip install -e '.[test]' installs it"
    suite = write_suite(tmp_path / "suite.toml")
    env = {**os.environ, "HOME": str(tmp_path / "home"), "LDBENCH_ASV_SUITE": str(suite),
           "LDBENCH_ASV_STORE": str(tmp_path / "store")}
    (tmp_path / "home").mkdir()
    asv(["machine", "--yes", "--machine", "testbox"], project, env)
    check = asv(["check", "--python=same"], project, env)
    assert "No problems found" in check.stdout

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, check=True,
                            capture_output=True, text=True).stdout.strip()
    asv(["run", "--python=same", "--quick", "--machine", "testbox",
         "--set-commit-hash", commit], project, env)
    files = list((project / ".asv" / "results" / "testbox").glob(f"{commit[:8]}-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    columns = data["result_columns"]
    results = {name: dict(zip(columns, row)) for name, row in data["results"].items()}

    classes = suite_cases().build_classes(suite)
    assert sorted(classes) == ["kms_dense_Cholesky", "kms_flodance_fraction_0_5_q_0",
                               "kms_slq_l_20_s_4"]
    for name, cls in classes.items():
        prefix = f"suite_cases.{name}."
        time_result = results[prefix + "time_solve"]
        assert 0 < time_result["result"][0] < 60
        assert time_result["version"] == cls.version
        assert results[prefix + "peakmem_solve"]["result"][0] > 10e6  # bytes
        assert results[prefix + "track_rel_error"]["version"] == cls.version
    errors = {name: results[f"suite_cases.{name}.track_rel_error"]["result"][0]
              for name in classes}
    assert errors["kms_dense_Cholesky"] < 1e-12
    assert errors["kms_flodance_fraction_0_5_q_0"] < 1e-6
    assert 0 < errors["kms_slq_l_20_s_4"] < 0.5
    # Formed once into the store named by LDBENCH_ASV_STORE.
    assert list((tmp_path / "store").glob("*-m120.h5"))

    asv(["publish"], project, env)
    assert (project / ".asv" / "html" / "index.html").exists()


def test_version_follows_configuration(tmp_path):
    build_classes = suite_cases().build_classes
    first = build_classes(write_suite(tmp_path / "a.toml", n=120))
    same = build_classes(write_suite(tmp_path / "b.toml", n=120))
    changed = build_classes(write_suite(tmp_path / "c.toml", n=160))
    for name in first:
        assert first[name].version == same[name].version
        assert first[name].version != changed[name].version
        assert first[name].timeout == 120.0


def test_default_suite_builds_every_case():
    module = suite_cases()
    classes = module.build_classes(module.DEFAULT_SUITE)
    assert len(classes) == 11
    methods = {"time_solve", "peakmem_solve", "track_rel_error"}
    for cls in classes.values():
        assert methods <= set(dir(cls))
        assert cls.timeout == 300.0
