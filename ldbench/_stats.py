"""Repetition statistics: timing spread per configuration and error over seeds.

A group is one matrix with one solver configuration, so its records differ
only in the repetition and, for stochastic solvers, in the seed. The suite
gives repetition r the seed ``seed + r`` in every configuration, so the
errors of two stochastic configurations are paired seed by seed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Timing fields of a record and the short names used in column headers.
TIMINGS = {"wall_seconds": "wall", "solve_seconds": "solve"}
# A timing is unstable when its interquartile range exceeds this share of
# its median.
UNSTABLE_SPREAD = 0.10
# Minimum number of successful repetitions when the suite sets
# ``statistics = true``.
MIN_SAMPLES = 5
STATISTICS_FILE = "statistics.json"


def summarize(values: list[float]) -> dict[str, float] | None:
    """Return the median, interquartile range, minimum and count of ``values``.

    Quartiles use NumPy's default linear interpolation. Returns None for an
    empty list.
    """
    if not values:
        return None
    array = np.asarray(values, dtype=float)
    q25, median, q75 = np.percentile(array, [25, 50, 75])
    return {
        "median": float(median),
        "iqr": float(q75 - q25),
        "min": float(array.min()),
        "count": int(array.size),
    }


def group_key(record: dict[str, Any]) -> tuple[str, str, str]:
    """Return (matrix id, solver name, solver parameters as sorted JSON)."""
    params = (record.get("solver") or {}).get("params", {})
    return (
        str(record.get("matrix_id", "")),
        str(record.get("method", "")),
        json.dumps(params, sort_keys=True, default=str),
    )


def aggregate(
    records: list[dict[str, Any]], statistics: bool = False
) -> list[dict[str, Any]]:
    """Summarise the finished records of each (matrix, solver configuration) group.

    Parameters
    ----------
    records
        Case records of one run, in any order.
    statistics
        Whether the suite requests statistics; then a group with fewer than
        :data:`MIN_SAMPLES` successful repetitions gets a warning.

    Returns
    -------
    list of dict
        One row per group, in the order groups first appear, with ``count``
        (successful repetitions), ``failed``, ``<timing>_median``,
        ``<timing>_iqr`` and ``<timing>_min`` in seconds for the wall and solve
        times, ``rel_error_median`` and ``rel_error_p90`` (linear
        interpolation) over the seeds, ``seeds`` and ``warnings``. Each
        warning is also logged.
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(group_key(record), []).append(record)
    rows = []
    for (matrix_id, method, params), members in groups.items():
        ok = [r for r in members if r.get("status") == "ok"]
        row: dict[str, Any] = {
            "matrix_id": matrix_id,
            "method": method,
            "settings": members[0].get("settings", ""),
            "params": params,
            "count": len(ok),
            "failed": len(members) - len(ok),
            "stochastic": any(r.get("stochastic") for r in ok),
            "seeds": sorted(int(r.get("seed", 0)) for r in ok),
        }
        for field, name in TIMINGS.items():
            summary = summarize(
                [float(r[field]) for r in ok if r.get(field) is not None]
            )
            for stat in ("median", "iqr", "min"):
                row[f"{name}_{stat}"] = None if summary is None else summary[stat]
        errors = [float(r["rel_error"]) for r in ok if r.get("rel_error") is not None]
        row["rel_error_median"] = float(np.median(errors)) if errors else None
        row["rel_error_p90"] = float(np.percentile(errors, 90)) if errors else None
        row["warnings"] = _warnings(row, statistics)
        for warning in row["warnings"]:
            logger.warning(
                "%s / %s (%s): %s", matrix_id, method, row["settings"], warning
            )
        rows.append(row)
    return rows


def _warnings(row: dict[str, Any], statistics: bool) -> list[str]:
    warnings = []
    if statistics and row["count"] < MIN_SAMPLES:
        warnings.append(
            f"only {row['count']} successful repetitions; set repetitions "
            f">= {MIN_SAMPLES} for stable statistics"
        )
    for name in TIMINGS.values():
        median, iqr = row[f"{name}_median"], row[f"{name}_iqr"]
        if median and iqr / median > UNSTABLE_SPREAD:
            warnings.append(
                f"unstable {name} time: interquartile range {iqr:.3g} s is "
                f"{iqr / median:.0%} of the median {median:.3g} s (limit "
                f"{UNSTABLE_SPREAD:.0%}); add repetitions or quiet the machine"
            )
    return warnings


def suite_wants_statistics(run_dir: Path) -> bool:
    """Return the ``statistics`` setting of the run's resolved suite (suite.json)."""
    path = Path(run_dir) / "suite.json"
    if not path.exists():
        return False
    return bool(
        json.loads(path.read_text()).get("settings", {}).get("statistics", False)
    )


def write_statistics(
    run_dir: Path, records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Aggregate the run's records into ``statistics.json`` and return the rows."""
    rows = aggregate(records, suite_wants_statistics(run_dir))
    path = Path(run_dir) / STATISTICS_FILE
    path.write_text(json.dumps(rows, indent=2, default=str))
    return rows


def render_statistics(rows: list[dict[str, Any]], fmt: str = "github") -> str:
    """Render the groups as a table (tabulate format ``fmt``) with warnings below."""
    from tabulate import tabulate

    from ._report import format_seconds

    table = []
    for row in rows:
        line = [row["matrix_id"], row["method"], row["settings"], row["count"]]
        for name in TIMINGS.values():
            line += [
                format_seconds(row[f"{name}_median"]),
                format_seconds(row[f"{name}_iqr"]),
                format_seconds(row[f"{name}_min"]),
            ]
        line += [_fraction(row["rel_error_median"]), _fraction(row["rel_error_p90"])]
        table.append(line)
    headers = [
        "matrix",
        "method",
        "settings",
        "n",
        "wall median",
        "wall IQR",
        "wall min",
        "solve median",
        "solve IQR",
        "solve min",
        "rel. error median",
        "rel. error p90",
    ]
    text = tabulate(table, headers=headers, tablefmt=fmt, disable_numparse=True)
    notes = [
        f"- {row['matrix_id']} / {row['method']} ({row['settings']}): {w}"
        for row in rows
        for w in row["warnings"]
    ]
    if notes:
        text += "\n\nWarnings:\n" + "\n".join(notes)
    return text


def _fraction(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"
