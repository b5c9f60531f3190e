"""The `moe-sim` command line: list, run, reproduce, rates, plot."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import store
from .config import load_config
from .plots import TABLE_COLUMNS, experiment_of, report, to_markdown, write_table
from .rates import rate_table
from .sweep import run_sweep


def default_configs_dir() -> Path:
    """./experiments when it exists, else the experiments/ folder of the source checkout."""
    here = Path.cwd() / "experiments"
    return here if here.is_dir() else Path(__file__).resolve().parents[1] / "experiments"


def _configs(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(Path(folder).glob("*.toml"))}


def _resolve(config: str, folder: Path) -> Path:
    path = Path(config)
    if path.suffix == ".toml" or path.exists():
        return path
    found = _configs(folder)
    if config not in found:
        raise ValueError(f"config {config!r} is neither a file nor one of {sorted(found)} in {str(folder)!r}")
    return found[config]


def cmd_list(args) -> int:
    found = _configs(args.configs)
    if not found:
        raise ValueError(f"no *.toml configs in {str(args.configs)!r}")
    for name, path in found.items():
        exp, quick = load_config(path), load_config(path, quick=True)
        print(f"{name:22s} {len(exp.series):2d} series  n {exp.n_grid[0]}..{exp.n_grid[-1]} x {exp.replicates} reps"
              f" (quick: n {quick.n_grid[0]}..{quick.n_grid[-1]} x {quick.replicates})  [paper {exp.paper or '-'}]"
              f"\n{'':22s} {exp.description}")
    return 0


def _run_one(exp, out: Path, args) -> Path:
    tic = time.perf_counter()
    run_sweep(exp, out, n_jobs=args.n_jobs, scheduler=getattr(args, "scheduler", None),
              progress=not args.no_progress)
    rows = store.load_results(out)
    fits = rows.groupby(["series", "n", "replicate"]).status.first()
    print(f"{exp.name}: {len(fits)} fits ({fits.eq('failed').sum()} failed) in "
          f"{time.perf_counter() - tic:.1f} s -> {out}")
    return out


def cmd_run(args) -> int:
    exp = load_config(_resolve(args.config, args.configs), quick=args.quick)
    _run_one(exp, store.check_output_dir(args.out or Path("results") / exp.name, "--out"), args)
    return 0


def cmd_reproduce(args) -> int:
    found = _configs(args.configs)
    names = sorted(found) if args.name == "all" else [args.name]
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValueError(f"unknown experiment {unknown[0]!r}; choose 'all' or one of {sorted(found)}")
    results_root = store.check_output_dir(args.out, "--out")
    figures = store.check_output_dir(args.figures or results_root / "figures", "--figures")
    experiments = [load_config(found[name], quick=args.quick) for name in names]  # every config checked first
    print(f"reproduce {args.name}: results in {results_root}/NAME, figures and rate tables in {figures}")
    total = time.perf_counter()
    for exp in experiments:
        out = _run_one(exp, results_root / exp.name, args)
        rates, paths = report(out, figures, exp=exp)
        print(f"  {len(rates)} rates, {len(paths)} files in {figures}")
    print(f"reproduce {args.name}: {time.perf_counter() - total:.1f} s; figures and rate tables in {figures}")
    return 0


def cmd_rates(args) -> int:
    out = None if args.out is None else store.check_output_dir(args.out, "--out")
    exp = experiment_of(args.results)
    rates = rate_table(store.load_results(args.results), exp, stat=args.stat or exp.stat)
    if out is not None:
        write_table(rates, out, f"{exp.name}_rates")
    print(to_markdown(rates[[c for c in TABLE_COLUMNS if c in rates.columns]]), end="")
    return 0


def cmd_plot(args) -> int:
    out = store.check_output_dir(args.out or args.results / "figures", "--out")
    _, paths = report(args.results, out, stat=args.stat)
    for path in paths:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-sim", description=__doc__)
    parser.add_argument("--configs", type=Path, default=None, help="folder of experiment TOML files")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list the experiments").set_defaults(func=cmd_list)

    def sweep_options(p):
        p.add_argument("--quick", action="store_true", help="the config's [quick] variant")
        p.add_argument("--n-jobs", type=int, default=1, help="worker processes (default 1)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    run = sub.add_parser("run", help="run (or resume) one experiment")
    run.add_argument("config", help="a TOML file or the name of a config in the configs folder")
    sweep_options(run)
    run.add_argument("--out", help="results directory (default results/NAME)")
    run.add_argument("--scheduler", help="Dask scheduler address (runs the tasks on that cluster)")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("reproduce", help="run experiments, fit rates and draw their figures")
    rep.add_argument("name", help="an experiment name or 'all'")
    sweep_options(rep)
    rep.add_argument("--out", type=Path, default=Path("results"),
                     help="results folder (default results/, untracked): OUT/NAME per experiment")
    rep.add_argument("--figures", type=Path, help="folder for figures and rate tables (default OUT/figures)")
    rep.set_defaults(func=cmd_reproduce)

    for name, func, text in (("rates", cmd_rates, "print and store the rate table of a results directory"),
                             ("plot", cmd_plot, "draw the figures and tables of a results directory")):
        p = sub.add_parser(name, help=text)
        p.add_argument("results", type=Path, help="a results directory (with manifest.json)")
        p.add_argument("--stat", choices=("median", "mean"), help="statistic per n (default: the config's)")
        p.add_argument("--out", type=Path, help="folder for the tables and figures (rates: none written by "
                       "default; plot: RESULTS/figures); the results directory may be read-only")
        p.set_defaults(func=func)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.configs is None:
        args.configs = default_configs_dir()
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"moe-sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
