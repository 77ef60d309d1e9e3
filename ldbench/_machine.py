"""Machine and package metadata recorded with every run."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PACKAGES = ("ldbench", "numpy", "scipy", "h5py", "torch", "detkit", "imate", "pluggy",
            "pandas", "scikit-learn")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _blas() -> list[dict[str, Any]]:
    try:
        import numpy  # noqa: F401  (loads the BLAS threadpoolctl inspects)
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "version", "num_threads", "architecture", "filepath")
    return [{k: i.get(k) for k in keys} for i in threadpool_info()]


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def machine_metadata(suite_folder: Path | None = None, plugins: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Collect CPU, memory, BLAS, GPU, Python and package versions."""
    import psutil

    env_keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": sys.version.split()[0],
        "packages": {name: _version(name) for name in PACKAGES},
        "plugins": plugins or [],
        "blas": _blas(),
        "thread_env": {k: os.environ.get(k) for k in env_keys if k in os.environ},
        "gpus": _gpus(),
        "suite_git_commit": _git_commit(suite_folder) if suite_folder else None,
    }
