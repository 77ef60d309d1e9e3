"""Result tables: pandas DataFrame, CSV, Markdown and terminal output."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)

COLUMNS = [
    "case_id", "matrix_id", "matrix", "order", "read_order", "method", "settings",
    "repetition", "status", "logabsdet", "sign", "stderr", "reference_logdet",
    "reference_method", "rel_error", "flops", "tflops", "formation_seconds",
    "formation_basis", "solve_seconds", "wall_seconds", "cpu_seconds", "peak_rss_mb",
    "cost_usd", "error",
]


def results_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Return one row per record with the columns of :data:`COLUMNS`."""
    rows = [{c: r.get(c) for c in COLUMNS} for r in records]
    return pd.DataFrame(rows, columns=COLUMNS)


def format_seconds(seconds: float | None) -> str:
    """Format a duration in seconds as ``12.5 ms``, ``0.42 s``, ``3.1 min``, ``2.5 h`` or days."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return ""
    if seconds < 0.1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _percent(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if value == 0:
        return "0%"
    if value < 1e-6:
        return f"{value * 100:.1e}%"
    return f"{value * 100:.3g}%"


def _tflops(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.3g}"


def _cost(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"${value:.2g}" if value < 0.01 else f"${value:.2f}"


def paper_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Return the comparison table: method, settings, matrix, TFLOPs, relative
    error, estimated cost, wall time (formation + solve) and status."""
    rows = []
    for r in records:
        ok = r.get("status") == "ok"
        wall = ""
        if ok:
            wall = (f"{format_seconds(r['wall_seconds'])} "
                    f"({format_seconds(r['formation_seconds'])} + "
                    f"{format_seconds(r['solve_seconds'])})")
        status = r.get("status", "")
        if not ok and r.get("error"):
            status = f"{status}: {str(r['error']).splitlines()[0][:60]}"
        rows.append({
            "method": r.get("method", ""),
            "settings": r.get("settings", ""),
            "matrix": r.get("matrix_id", ""),
            "rep": r.get("repetition", 0),
            "TFLOPs": _tflops(r.get("tflops")) if ok else "",
            "rel. error": _percent(r.get("rel_error")) if ok else "",
            "cost": _cost(r.get("cost_usd")) if ok else "",
            "wall (form + solve)": wall,
            "status": status,
        })
    frame = pd.DataFrame(rows)
    if not frame.empty and frame["rep"].max() == 0:
        frame = frame.drop(columns="rep")
    return frame


def render(records: list[dict[str, Any]], fmt: str = "github") -> str:
    """Render the comparison table with tabulate (``github``, ``plain``, ``latex``)."""
    from tabulate import tabulate

    frame = paper_table(records)
    return tabulate(frame, headers="keys", tablefmt=fmt, showindex=False,
                    disable_numparse=True)


def write_outputs(run_dir: Path, records: list[dict[str, Any]], pricing: dict[str, Any]) -> None:
    """Write results.csv and results.md into the run folder."""
    run_dir = Path(run_dir)
    results_frame(records).to_csv(run_dir / "results.csv", index=False)
    footnote = (f"\nCost uses ${pricing['cpu_per_hour']}/h per CPU and "
                f"${pricing['gpu_per_hour']}/h per GPU (prices of {pricing['date']}: "
                f"{pricing['source']}).\n")
    (run_dir / "results.md").write_text(render(records, "github") + "\n" + footnote)
