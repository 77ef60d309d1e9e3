"""A runner killed with SIGKILL resumes without rerunning finished cases, and a
killed formation leaves no complete matrix in the store."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from faulty_plugin import MARKER_ENV, cli_env, install, run_cli

SLEEP_SUITE = """
[suite]
name = "sleepy"
repetitions = 2

[[matrix]]
id = "small"
source = "synthetic"
kind = "kms"
n = 20
rho = 0.5

[[matrix]]
id = "large"
source = "synthetic"
kind = "kms"
n = 30
rho = 0.5

[[solver]]
name = "sleeper"
seconds = 1.0
"""

SLOW_SOURCE_SUITE = """
[[matrix]]
id = "slow"
source = "slow_kms"
n = 40
rho = 0.6
rows = 10
pause = 0.5

[[solver]]
name = "dense"
method = "cholesky"
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    return install(tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("site"))


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def start_runner(
    args: list[str], plugin_path: Path, cwd: Path, **env: str
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ldbench.cli", *args],
        cwd=cwd,
        env=cli_env(plugin_path, **env),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(condition, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the runner"
        time.sleep(0.05)


def kill_runner(runner: subprocess.Popen) -> None:
    # Only the runner: its workers live in their own sessions and must notice.
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()


def test_killed_run_resumes(tmp_path, plugin_path):
    suite = tmp_path / "sleepy.toml"
    suite.write_text(textwrap.dedent(SLEEP_SUITE))
    store = str(tmp_path / "store")

    full_dir = tmp_path / "full"
    out = run_cli(
        ["run", str(suite), "--out", str(full_dir), "--store", store],
        plugin_path,
        tmp_path,
        **{MARKER_ENV: str(tmp_path / "full.marker")},
    )
    assert out.returncode == 0, out.stderr
    full = [json.loads(line) for line in read_lines(full_dir / "results.jsonl")]
    assert len(full) == 4

    run_dir = tmp_path / "killed"
    marker = tmp_path / "killed.marker"
    runner = start_runner(
        ["run", str(suite), "--out", str(run_dir), "--store", store],
        plugin_path,
        tmp_path,
        **{MARKER_ENV: str(marker)},
    )
    wait_for(lambda: len(read_lines(run_dir / "results.jsonl")) >= 2)
    kill_runner(runner)
    # A worker that outlived the runner would finish its 1 s solve meanwhile.
    time.sleep(2.0)
    finished = [json.loads(line) for line in read_lines(run_dir / "results.jsonl")]
    assert 2 <= len(finished) < 4
    solved_before = read_lines(marker)
    assert len(solved_before) == len(finished)

    out = run_cli(
        ["run", "--resume", str(run_dir), "--store", store],
        plugin_path,
        tmp_path,
        **{MARKER_ENV: str(marker)},
    )
    assert out.returncode == 0, out.stderr
    resumed = [json.loads(line) for line in read_lines(run_dir / "results.jsonl")]
    assert [r["case_id"] for r in resumed] == [r["case_id"] for r in full]
    for got, want in zip(resumed, full):
        assert got["status"] == "ok"
        assert got["logabsdet"] == want["logabsdet"]
    exact = {20: 19 * math.log(0.75), 30: 29 * math.log(0.75)}
    for record in resumed:
        assert record["logabsdet"] == pytest.approx(exact[record["order"]], rel=1e-13)
    solved_after = read_lines(marker)[len(solved_before) :]
    assert len(solved_after) == 4 - len(finished)
    assert not set(solved_after) & set(solved_before)
    assert sorted(solved_before + solved_after) == sorted(
        read_lines(tmp_path / "full.marker")
    )


def test_killed_formation_is_not_served(tmp_path, plugin_path):
    suite = tmp_path / "slow.toml"
    suite.write_text(textwrap.dedent(SLOW_SOURCE_SUITE))
    store = tmp_path / "store"
    marker = tmp_path / "form.marker"
    runner = start_runner(
        ["run", str(suite), "--out", str(tmp_path / "killed"), "--store", str(store)],
        plugin_path,
        tmp_path,
        **{MARKER_ENV: str(marker)},
    )
    wait_for(lambda: list(store.glob("*.h5.partial")))
    time.sleep(0.6)
    kill_runner(runner)
    # The formation takes 2 s: an orphaned worker would finish and rename it.
    time.sleep(2.5)
    assert read_lines(marker) == ["form start"]
    assert list(store.glob("*.h5")) == []
    assert len(list(store.glob("*.h5.partial"))) == 1

    out = run_cli(
        ["run", str(suite), "--out", str(tmp_path / "again"), "--store", str(store)],
        plugin_path,
        tmp_path,
        **{MARKER_ENV: str(marker)},
    )
    assert out.returncode == 0, out.stderr
    assert read_lines(marker) == ["form start", "form start", "form done"]
    assert list(store.glob("*.h5.partial")) == []
    assert len(list(store.glob("*-m40.h5"))) == 1
    record = json.loads(read_lines(tmp_path / "again" / "results.jsonl")[0])
    assert record["status"] == "ok"
    assert record["logabsdet"] == pytest.approx(39 * math.log(1 - 0.6**2), rel=1e-13)
    assert record["formation_basis"] == "measured"
    assert record["formation_seconds"] >= 2.0
