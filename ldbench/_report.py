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
    "peak_gpu_memory_mb", "bytes_read", "bytes_written",
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


def _error_bar(record: dict[str, Any]) -> str:
    """Return the solver's own relative error estimate, ``"±1.2% (95%)"``.

    It is the half-width of the reported confidence interval divided by
    ``|logabsdet|``, at the level the solver states in its details (95% when
    it states none), so it sits next to the true relative error.
    """
    interval = record.get("interval")
    value = record.get("logabsdet")
    if not interval or value is None or not math.isfinite(value) or value == 0:
        return ""
    low, high = (float(v) for v in interval)
    if not (math.isfinite(low) and math.isfinite(high)) or high == low:
        return ""
    details = record.get("details") or {}
    level = details.get("level", details.get("interval_level", 0.95))
    half_width = (high - low) / 2.0 / abs(value)
    return f"±{_percent(half_width)} ({float(level) * 100:g}%)"


def paper_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Return the comparison table: method, settings, matrix, TFLOPs, relative
    error, the solver's own error bar, estimated cost, wall time (formation +
    solve) and status."""
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
        if ok and (r.get("details") or {}).get("pseudo_determinant"):
            status = "ok (pseudo-determinant)"
        rows.append({
            "method": r.get("method", ""),
            "settings": r.get("settings", ""),
            "matrix": r.get("matrix_id", ""),
            "rep": r.get("repetition", 0),
            "TFLOPs": _tflops(r.get("tflops")) if ok else "",
            "rel. error": _percent(r.get("rel_error")) if ok else "",
            "error bar": _error_bar(r) if ok else "",
            "cost": _cost(r.get("cost_usd")) if ok else "",
            "wall (form + solve)": wall,
            "status": status,
        })
    frame = pd.DataFrame(rows)
    if not frame.empty and frame["rep"].max() == 0:
        frame = frame.drop(columns="rep")
    return frame


#: Output formats of :func:`render` and the tabulate format of each.
FORMATS = {"github": "github", "plain": "plain", "latex": "latex_booktabs"}


def pricing_footnote(pricing: dict[str, Any] | None) -> str:
    """Return the sentence that states the price table and its source."""
    if not pricing:
        return ""
    return (f"Cost uses ${pricing['cpu_per_hour']}/h per CPU and "
            f"${pricing['gpu_per_hour']}/h per GPU (prices of {pricing['date']}: "
            f"{pricing['source']}).")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$",
                  "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    """Escape LaTeX's special characters, one character at a time."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def render(records: list[dict[str, Any]], fmt: str = "github",
           pricing: dict[str, Any] | None = None) -> str:
    """Render the comparison table as ``github`` Markdown, ``plain`` text or
    a ``latex`` table float.

    With ``pricing`` (a suite's ``[pricing]`` table) the price table and its
    source follow the table: as a paragraph in github and plain, as a note
    under the tabular in LaTeX. The LaTeX output uses booktabs rules and
    scales a table wider than the line down to its width, so the document
    needs ``\\usepackage{booktabs}`` and ``\\usepackage{graphicx}``.
    """
    from tabulate import tabulate

    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; use one of {sorted(FORMATS)}")
    frame = paper_table(records)
    table = tabulate(frame, headers="keys", tablefmt=FORMATS[fmt], showindex=False,
                     disable_numparse=True)
    footnote = pricing_footnote(pricing)
    if fmt != "latex":
        return table + (f"\n\n{footnote}" if footnote else "")
    # tabulate's latex formats escape the cells. "±" needs a Unicode-aware
    # input encoding, so it becomes the math symbol.
    table = table.replace("±", r"$\pm$")
    # A table wider than the text (long settings, many columns) is scaled
    # down to the line width. A narrower table keeps its size.
    lines = [r"% needs \usepackage{booktabs} and \usepackage{graphicx}",
             r"\begin{table}[ht]", r"\centering", r"\small",
             r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
             table + "%", "}"]
    if footnote:
        lines.append(r"\par\smallskip{\footnotesize " + _latex_escape(footnote) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines)


def write_outputs(run_dir: Path, records: list[dict[str, Any]], pricing: dict[str, Any]) -> None:
    """Write results.csv, results.md and statistics.json into the run folder."""
    from ._stats import render_statistics, write_statistics

    run_dir = Path(run_dir)
    results_frame(records).to_csv(run_dir / "results.csv", index=False)
    footnote = "\n" + pricing_footnote(pricing) + "\n"
    statistics = ("\n## Repetition statistics\n\n"
                  + render_statistics(write_statistics(run_dir, records)) + "\n")
    (run_dir / "results.md").write_text(render(records, "github") + "\n" + footnote
                                        + statistics)
