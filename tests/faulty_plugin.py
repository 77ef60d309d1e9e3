"""A throwaway plugin distribution with misbehaving solvers and a slow source.

Tests install it with pip into a target folder and run the ``ldbench`` CLI
with that folder on PYTHONPATH, as a third-party plugin would be used.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# Environment variables read by the plugin below.
MARKER_ENV = "LDBENCH_TEST_MARKER"
EXTRA_DELAY_ENV = "LDBENCH_TEST_EXTRA_DELAY"

PLUGIN = '''
"""Solvers that crash, hang, leak memory, raise or fill the scratch disk,
a solver that sleeps, and a matrix source that forms slowly."""
import ctypes
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
from ldbench import (Estimate, MatrixInfo, MatrixSource, Param, Solver, Structure,
                     hookimpl)


def mark(line):
    path = os.environ.get("LDBENCH_TEST_MARKER")
    if path:
        with open(path, "a") as f:
            f.write(line + "\\n")


def exact(matrix):
    sign, logabsdet = np.linalg.slogdet(matrix.read())
    return Estimate(float(logabsdet), float(sign), 0.0, matrix.order)


class FaultSolver(Solver):
    name = "fault"
    parameters = {
        "mode": Param("raise", str, "how to fail",
                      choices=("segfault", "hang", "oom", "raise", "fill_scratch")),
        "pidfile": Param("", str, "file for the pid of the child the hang mode starts"),
    }

    def flops(self, info):
        return 0.0

    def solve(self, matrix, context):
        mode = self.params["mode"]
        if mode == "segfault":
            ctypes.string_at(0)
        elif mode == "hang":
            child = subprocess.Popen([sys.executable, "-c",
                                      "import signal, time; "
                                      "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                      "time.sleep(120)"])
            with open(self.params["pidfile"], "w") as f:
                f.write(str(child.pid))
            import detkit  # noqa: F401  (detkit ignores SIGTERM once imported)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(120)
        elif mode == "oom":
            blocks = []
            for _ in range(200):
                blocks.append(np.ones(50 * 2**20 // 8))
                time.sleep(0.02)
        elif mode == "fill_scratch":
            chunk = b"x" * 2**18
            with open(context.scratch_dir / "fill.bin", "wb") as f:
                for _ in range(64):
                    f.write(chunk)
                    f.flush()
        else:
            raise RuntimeError("deliberate failure in FaultSolver.solve")
        return exact(matrix)


class Sleeper(Solver):
    name = "sleeper"
    parameters = {"seconds": Param(1.0, float, "sleep per solve, s")}

    def flops(self, info):
        return 0.0

    def solve(self, matrix, context):
        extra = float(os.environ.get("LDBENCH_TEST_EXTRA_DELAY", "0"))
        time.sleep(self.params["seconds"] + extra)
        estimate = exact(matrix)
        mark(f"solve {matrix.order} {context.seed}")
        return estimate


class SlowKms(MatrixSource):
    name = "slow_kms"
    parameters = {
        "n": Param(40, int, "order"),
        "rho": Param(0.5, float, "correlation"),
        "rows": Param(10, int, "rows per strip"),
        "pause": Param(0.5, float, "sleep per strip, s"),
    }

    def describe(self, order=None):
        order = self.params["n"] if order is None else order
        rho = self.params["rho"]
        return MatrixInfo(order, Structure.SPD, logdet=(order - 1) * math.log(1 - rho**2),
                          sign=1.0, description=f"slow kms m={order}")

    def form(self, order, out):
        mark("form start")
        rho, rows = self.params["rho"], self.params["rows"]
        index = np.arange(order)
        for r0 in range(0, order, rows):
            r1 = min(order, r0 + rows)
            out.write(r0, 0, rho ** np.abs(index[r0:r1, None] - index[None, :]))
            time.sleep(self.params["pause"])
        mark("form done")


@hookimpl
def ldbench_register_solvers(register):
    register(FaultSolver)
    register(Sleeper)


@hookimpl
def ldbench_register_sources(register):
    register(SlowKms)
'''


def install(root: Path, target: Path) -> Path:
    """Build the ``ldbench-faulty`` distribution under ``root`` and pip-install
    it into ``target``; return ``target``."""
    folder = root / "ldbench-faulty"
    (folder / "ldbench_faulty").mkdir(parents=True)
    (folder / "ldbench_faulty" / "__init__.py").write_text(PLUGIN)
    (folder / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "ldbench-faulty"
        version = "0.0.1"

        [project.entry-points.ldbench]
        faulty = "ldbench_faulty"

        [tool.setuptools]
        packages = ["ldbench_faulty"]
    """)
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(folder),
        ],
        check=True,
    )
    return target


def cli_env(plugin_path: Path, **extra: str) -> dict[str, str]:
    """Return the environment for a CLI subprocess that can import the plugin."""
    return {**os.environ, "PYTHONPATH": str(plugin_path), **extra}


def run_cli(
    args: list[str], plugin_path: Path, cwd: Path, **extra: str
) -> subprocess.CompletedProcess:
    """Run ``python -m ldbench.cli ARGS`` with the plugin installed."""
    return subprocess.run(
        [sys.executable, "-m", "ldbench.cli", *args],
        cwd=cwd,
        env=cli_env(plugin_path, **extra),
        capture_output=True,
        text=True,
        timeout=300,
    )
