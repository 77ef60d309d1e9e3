"""Command-line interface: ``ldbench run|plugins|info|report|plot|compare``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _registry(args: argparse.Namespace) -> Any:
    from ._plugins import Registry

    disabled = {p[3:] for p in (args.plugin or []) if p.startswith("no:")}
    return Registry(disabled=disabled, autoload=not args.no_autoload, strict=args.strict)


def cmd_plugins(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    registry = _registry(args)
    rows = []
    for p in registry.plugins.values():
        provides = ", ".join([*(f"source:{s}" for s in p.sources),
                              *(f"solver:{s}" for s in p.solvers)])
        rows.append([p.name, p.distribution, p.version, p.status, provides or p.error])
    print(tabulate(rows, headers=["plugin", "distribution", "version", "status",
                                  "provides / error"], tablefmt="github"))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import importlib.util

    import difflib

    registry = _registry(args)
    if args.name in registry.solvers:
        table = registry.solvers
        cls = registry.solver_class(args.name)
    elif args.name in registry.sources:
        table = registry.sources
        cls = registry.source_class(args.name)
    else:
        names = sorted({*registry.solvers, *registry.sources})
        near = difflib.get_close_matches(args.name, names, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        print(f"error: no solver or source named {args.name!r}{hint} (registered: "
              f"{', '.join(names) or 'none'}). Run 'ldbench plugins' to see what is "
              "installed or disabled.", file=sys.stderr)
        return 2
    reg = table[args.name]
    kind = "solver" if table is registry.solvers else "source"
    print(f"{kind} {args.name!r} from plugin {reg.plugin!r} ({reg.distribution} {reg.version})")
    paragraph = (cls.__doc__ or "").strip().split("\n\n")[0]
    if paragraph:
        print(f"  {' '.join(paragraph.split())}")
    if kind == "solver":
        print(f"  structures: {', '.join(sorted(s.value for s in cls.structures))}")
        print(f"  device: {cls.device}; stochastic: {cls.stochastic}")
    for name in cls.requires:
        found = importlib.util.find_spec(name) is not None
        print(f"  requires {name}: {'installed' if found else 'NOT installed'}")
    print("  parameters:")
    for name, p in cls.parameters.items():
        extra = f" one of {list(p.choices)}" if p.choices else ""
        req = " (required)" if p.required else f" = {p.default!r}"
        print(f"    {name}: {p.kind.__name__}{req}{extra}  {p.help}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from ._api_run import execute_suite, new_run_dir, suite_store
    from ._report import render
    from ._runner import FAILED, RunOptions, read_records
    from ._store import source_key
    from ._suite import SuiteError, instantiate_source, load_suite, parse_bytes, parse_duration

    registry = _registry(args)
    suite_path = Path(args.suite) if args.suite else None
    run_dir = Path(args.resume) if args.resume else None
    if run_dir is not None and suite_path is None:
        suite_path = run_dir / "suite.toml"
    if suite_path is None:
        print("error: give a suite file, or --resume RUN_DIR", file=sys.stderr)
        return 2
    overrides = list(args.set)
    store_arg = args.store
    if run_dir is not None and overrides:
        print("error: --resume continues a run with the overrides it started with; "
              "drop --set, or start a new run folder", file=sys.stderr)
        return 2
    if run_dir is not None and (run_dir / "run.json").exists():
        # A resumed run keeps the overrides and store of the run it continues.
        saved = json.loads((run_dir / "run.json").read_text())
        overrides = saved["overrides"]
        store_arg = store_arg or saved["store"]
    try:
        suite = load_suite(suite_path, registry, overrides)
        timeout = parse_duration(args.timeout) if args.timeout else None
        memory = parse_bytes(args.memory_limit) if args.memory_limit else None
        if memory is not None and memory <= 0:
            raise ValueError(f"--memory-limit {args.memory_limit!r} must be positive; "
                             "leave the option out for no limit")
    except (SuiteError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = suite_store(suite, store_arg)
    # Data files are checked before any work, so a missing data set stops here.
    for matrix in suite.matrices:
        try:
            instantiate_source(registry, matrix).check_available()
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: matrix {matrix.id!r}: {exc}", file=sys.stderr)
            return 2
    cases = suite.cases()
    if args.dry_run:
        rows = []
        for case in cases:
            source = instantiate_source(registry, case.matrix)
            cached = store.lookup(source, source.describe().order) is not None
            rows.append([case.id, case.matrix.id, case.solver.name,
                         json.dumps(case.solver.params, sort_keys=True), case.repetition,
                         "yes" if cached else "no", source_key(source)])
        print(tabulate(rows, headers=["case", "matrix", "solver", "parameters", "rep",
                                      "matrix stored", "store key"], tablefmt="github"))
        print(f"{len(cases)} cases; store {store.root}")
        return 0
    executor = _dask_settings(args)
    if isinstance(executor, str):
        print(f"error: {executor}", file=sys.stderr)
        return 2
    if run_dir is None:
        run_dir = Path(args.out) if args.out else new_run_dir(suite)
    options = RunOptions(timeout=timeout, memory_limit=memory, resume=args.resume is not None,
                         retry_failed=args.retry_failed,
                         check=not args.no_check,
                         registry={"disabled": sorted({p[3:] for p in (args.plugin or [])
                                                       if p.startswith("no:")})},
                         log_level="INFO" if args.verbose else "WARNING")
    print(f"run folder: {run_dir}", file=sys.stderr)
    args.run_folder = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(
        {"suite": str(suite_path.resolve()), "overrides": overrides,
         "store": str(store.root.resolve())}, indent=2))
    from ._executor import ExecutorError

    try:
        records = execute_suite(suite, registry, run_dir, store, options, executor)
    except ExecutorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render(records, "github"))
    from ._stats import aggregate, render_statistics

    groups = aggregate(records, bool(suite.settings.get("statistics", False)))
    if any(g["count"] > 1 or g["warnings"] for g in groups):
        print("\n" + render_statistics(groups))
    print(f"\nresults: {run_dir}/results.jsonl, results.csv, results.md")
    failed = [r for r in records if r.get("status") in FAILED]
    if failed:
        print(f"\n{len(failed)} of {len(records)} cases failed:", file=sys.stderr)
        for r in failed:
            first = str(r.get("error", "")).splitlines()[0] if r.get("error") else ""
            print(f"  {r['case_id']} {r['matrix_id']} {r['method']} {r.get('settings', '')}: "
                  f"{r['status']}: {first}", file=sys.stderr)
    references = {r["matrix_id"]: r["reference_error"] for r in records
                  if r.get("reference_error")}
    if references:
        count = f"{len(references)} matri{'x' if len(references) == 1 else 'ces'}"
        print(f"\nthe reference solver failed on {count}, so their relative errors "
              "are blank:", file=sys.stderr)
        for matrix_id, error in sorted(references.items()):
            print(f"  {matrix_id}: {str(error).splitlines()[0]}", file=sys.stderr)
    if (failed or references) and not args.allow_failures:
        return 1
    return 0


def _dask_settings(args: argparse.Namespace) -> Any:
    """Return DaskSettings for ``--executor dask``, None for local execution,
    or an error message for options that need the other executor."""
    if args.executor == "local":
        if args.scheduler or args.workers:
            return "--scheduler and --workers need --executor dask"
        return None
    if args.workers is not None and args.workers < 1:
        return f"--workers must be at least 1, got {args.workers}"
    from ._executor import DaskSettings

    return DaskSettings(scheduler=args.scheduler, workers=args.workers)


def cmd_compare(args: argparse.Namespace) -> int:
    from ._compare import CompareError, compare_runs, parse_threshold, render_comparison
    from ._runner import read_records

    try:
        thresholds = [parse_threshold(t) for t in args.fail_on]
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs = []
    for run in (args.run_a, args.run_b):
        records = read_records(Path(run))
        if not records:
            print(f"error: no results in {run!r} (expected {run}/results.jsonl)",
                  file=sys.stderr)
            return 2
        runs.append(records)
    comparison = compare_runs(runs[0], runs[1], thresholds, args.alpha)
    if not comparison.groups:
        print("error: no case of run A matches a case of run B by case id or by matrix "
              "id, method and settings", file=sys.stderr)
        return 2
    print(render_comparison(comparison, args.format))
    return 1 if comparison.regressions else 0


def cmd_report(args: argparse.Namespace) -> int:
    from ._report import render
    from ._runner import read_records

    records = read_records(Path(args.run))
    if not records:
        print(f"error: no results in {args.run!r} (expected {args.run}/results.jsonl)",
              file=sys.stderr)
        return 2
    print(render(records, args.format, _run_pricing(Path(args.run))))
    return 0


def _run_pricing(run_dir: Path) -> dict[str, Any] | None:
    """Return the pricing table of the run's resolved suite, or None."""
    try:
        resolved = json.loads((run_dir / "suite.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("no pricing footnote: cannot read %s/suite.json (%s)",
                       run_dir, exc)
        return None
    return resolved.get("pricing")


def cmd_plot(args: argparse.Namespace) -> int:
    from ._figures import write_figures
    from ._runner import read_records

    run_dir = Path(args.run)
    records = read_records(run_dir)
    if not records:
        print(f"error: no results in {args.run!r} (expected {args.run}/results.jsonl)",
              file=sys.stderr)
        return 2
    try:
        paths = write_figures(run_dir, records)
    except ImportError as exc:
        print(f"error: plotting needs matplotlib ({exc}); pip install matplotlib",
              file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    if not paths:
        print("no figure: the run has no successful case with a reference value",
              file=sys.stderr)
    return 0


def _common_options(parser: argparse.ArgumentParser, nested: bool) -> argparse.ArgumentParser:
    """Add the plugin and logging options; ``nested`` copies keep the values
    given before the subcommand unless they are given again after it."""
    keep = {"default": argparse.SUPPRESS} if nested else {}
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress at INFO level", **keep)
    parser.add_argument("-p", dest="plugin", action="append", metavar="no:NAME",
                        help="disable the plugin NAME (repeatable)", **keep)
    parser.add_argument("--no-autoload", action="store_true",
                        help="do not load plugins from the 'ldbench' entry-point group",
                        **keep)
    parser.add_argument("--strict", action="store_true",
                        help="stop with an error when a plugin fails to load", **keep)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``ldbench`` command."""
    parser = argparse.ArgumentParser(
        prog="ldbench",
        description="Benchmark log-determinant methods on large dense matrices.",
        parents=[_common_options(argparse.ArgumentParser(add_help=False), nested=False)])
    # The same options after the subcommand, so "ldbench plugins -p no:slq" works.
    common = _common_options(argparse.ArgumentParser(add_help=False), nested=True)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", parents=[common], help="run a TOML suite")
    p.add_argument("suite", nargs="?", help="suite file, e.g. suites/quickstart.toml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value: suite.timeout=600, matrix.n=100, "
                        "matrix.ID.n=100, solver.flodance.n_s=50")
    p.add_argument("--out", help="run folder (default: runs/<suite>-<time>)")
    p.add_argument("--store", help="matrix store folder (default: $LDBENCH_STORE or "
                                   "~/.cache/ldbench/store)")
    p.add_argument("--timeout", help="per-case time limit, e.g. 90s, 10m, 3h")
    p.add_argument("--memory-limit", help="per-case resident memory cap, e.g. 4GB")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run folder, running only unfinished cases")
    p.add_argument("--retry-failed", action="store_true",
                   help="with --resume, run failed cases again as well")
    p.add_argument("--dry-run", action="store_true",
                   help="print the expanded cases and which matrices are stored")
    p.add_argument("--allow-failures", action="store_true",
                   help="exit 0 even when cases or the reference solver fail")
    p.add_argument("--no-check", action="store_true",
                   help="skip the finiteness and symmetry checks before each solve")
    p.add_argument("--executor", choices=["local", "dask"], default="local",
                   help="run jobs one after another here (local, the default) or as "
                        "tasks on a Dask cluster (dask); see docs/cluster.md")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="address of a running Dask scheduler, e.g. "
                        "tcp://10.0.0.5:8786 (default: start a LocalCluster)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes of the LocalCluster when torch finds no "
                        "CUDA device (default: one per CPU core)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("plugins", parents=[common], help="list plugins and their status")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("info", parents=[common], help="show a solver's or source's parameters")
    p.add_argument("name")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("report", parents=[common], help="print the table of a finished run")
    p.add_argument("run", help="run folder")
    p.add_argument("--format", default="github", choices=["github", "plain", "latex"],
                   help="github Markdown, plain text, or a LaTeX table float with "
                        "booktabs rules (needs \\usepackage{booktabs})")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("plot", parents=[common], help="draw the figures of a finished run as PNG files")
    p.add_argument("run", help="run folder; the figures go to RUN/figures")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("compare", parents=[common], help="set two runs side by side and flag regressions")
    p.add_argument("run_a", help="baseline run folder")
    p.add_argument("run_b", help="run folder compared with the baseline")
    p.add_argument("--fail-on", action="append", default=[], metavar="METRIC:LIMIT",
                   help="exit with code 1 when METRIC's median in B exceeds A's by more "
                        "than LIMIT, a percentage ('wall_time:10%%') or an amount in the "
                        "metric's unit ('rel_error:0.001'), and the Mann-Whitney test is "
                        "significant where it applies (at least 4 repetitions per run). "
                        "Metrics: wall_time, solve_time, cpu_time (s), rel_error, "
                        "peak_memory (MiB); 'status' fails on cases that stopped "
                        "succeeding. Repeatable")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="significance level of the Mann-Whitney U test (default 0.05)")
    p.add_argument("--format", default="github", choices=["github", "plain", "latex"])
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``ldbench`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        folder = getattr(args, "run_folder", None) or "RUN_DIR"
        print(f"interrupted; finished cases are in {folder}/results.jsonl. "
              f"Continue with: ldbench run --resume {folder}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
