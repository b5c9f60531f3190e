"""Figures and rate tables of a finished sweep (matplotlib's object API: no pyplot state, any backend).

`report(results_dir, out_dir)` is the whole analysis of one results directory: rate table (CSV and
Markdown), the diagnostics figure NAME.png/pdf (log-log, one row of panels per series and one column per
quantity; attention experiments: one panel per quantity, the series overlaid, `plot_overlay`), the headline
figure NAME_headline.png/pdf when the config declares `analysis.headline` (at most four panels, the declared
series on the same axes), and, when the config sets `analysis.target_error`, a sample-complexity figure and
table, with the sample-complexity ratios of `analysis.ratios` on all fits and on the certified ones alone
(NAME_ratios); the pairs of `analysis.ratios` also get their slopes, predictions and verdicts side by side
(NAME_comparison).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from . import store
from .attention_experiment import AttentionExperiment
from .config import Experiment, parse_config
from .rates import (comparison_table, dominant_row, rate_table, sample_complexity, sample_complexity_ratio,
                    summarize)

TABLE_COLUMNS = ["series", "quantity", "true_atom", "cell_size", "replicates", "slope", "ci_low", "ci_high",
                 "slope_lognn", "slope_upper", "slope_upper_ci_low", "slope_upper_ci_high", "trimmed_slope",
                 "runaway_share", "failed_share", "not_converged_share", "certified_share", "predicted_rate", "tag",
                 "verdict", "verdict_upper"]

SUMMARY_COLUMNS = ["series", "quantity", "true_atom", "cell_size", "n", "center", "ci_low", "ci_high", "replicates",
                   "failed"]

EXTRAPOLATION_SHOWN = 100  # the sample-complexity axis ends at this multiple of the largest grid n


def experiment_of(results_dir) -> Experiment:
    """The experiment a results directory was produced from (its manifest's effective config)."""
    manifest = store.read_manifest(results_dir)
    exp = parse_config(manifest["config"])
    return exp if not manifest.get("quick") else parse_config({**manifest["config"], "name": exp.name + "_quick"})


def to_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table (numbers to `digits` significant digits)."""
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else f"{v:.{digits}g}"
        return str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, out_dir, basename: str, columns=TABLE_COLUMNS) -> list[Path]:
    """CSV (all columns) and Markdown (`columns`, those present; None for all) side by side."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / f"{basename}.csv", out_dir / f"{basename}.md"
    table.to_csv(csv, index=False)
    md.write_text(to_markdown(table if columns is None else table[[c for c in columns if c in table.columns]]))
    return [csv, md]


def _label(rate: pd.Series) -> str:
    text = f"slope {rate.slope:.2f} [{rate.ci_low:.2f}, {rate.ci_high:.2f}], upper half {rate.slope_upper:.2f}"
    if rate.true_atom >= 0:
        text = f"atom {rate.true_atom} (cell {rate.cell_size}): " + text
    return text


def _per_cell_size(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary without the pooled rows (cell size -1) of atoms that also have rows per cell size: each
    point and line of a panel belongs to one cell size, the one its prediction is for."""
    split = summary[(summary.cell_size >= 0)].groupby("true_atom").size()
    return summary[~((summary.cell_size < 0) & summary.true_atom.isin(split.index))]


def plot_experiment(rows: pd.DataFrame, exp: Experiment, out_dir, quantities=None, stat: str | None = None,
                    rates: pd.DataFrame | None = None) -> list[Path]:
    """Log-log panels (series x quantity): statistic per n with its bootstrap 95% interval, the fitted line
    with its slope, and the predicted rate as a dotted reference line through the first point."""
    stat = stat or exp.stat
    quantities = [q for q in (quantities or exp.quantities) if q in set(rows.quantity)]
    if not quantities:
        raise ValueError(f"none of the quantities {list(quantities or exp.quantities)} is in the results")
    rows = rows[rows.quantity.isin(quantities)]
    summary = summarize(rows, stat)
    rates = rate_table(rows, exp, stat=stat) if rates is None else rates
    series = sorted(rows.series_index.unique())
    fig = Figure(figsize=(3.6 * len(quantities), 2.9 * len(series)))
    axes = fig.subplots(len(series), len(quantities), squeeze=False, sharex=True)
    for r, s_i in enumerate(series):
        for c, quantity in enumerate(quantities):
            ax = axes[r, c]
            part = _per_cell_size(
                summary[(summary.series_index == s_i) & (summary.quantity == quantity) & (summary.center > 0)])
            groups = part.groupby(["true_atom", "cell_size"])
            for color, ((atom, cell), sub) in zip(matplotlib.colormaps["tab10"].colors, groups):
                err = np.vstack([sub.center - sub.ci_low, sub.ci_high - sub.center])
                ax.errorbar(sub.n, sub.center, yerr=err, fmt="o", ms=3, color=color, capsize=2)
                fit = rates[(rates.series_index == s_i) & (rates.quantity == quantity) & (rates.true_atom == atom)
                            & (rates.cell_size == cell)]
                if fit.empty or not np.isfinite(fit.iloc[0].slope):
                    continue
                rate = fit.iloc[0]
                n = sub.n.to_numpy(float)
                logc = np.log(sub.center.to_numpy())
                line = np.exp(logc.mean() + rate.slope * (np.log(n) - np.log(n).mean()))
                ax.plot(n, line, "-", color=color, lw=1, label=_label(rate))
                if np.isfinite(rate.get("predicted", np.nan)):
                    shape = n ** -rate.predicted * (np.log(n) ** 0.5 if quantity == "regression_l2" else 1.0)
                    ax.plot(n, line[0] * shape / shape[0], ":", color=color, lw=1.2,
                            label=f"theory {rate.predicted_rate}")
                elif rate.get("predicted_rate", "") not in ("", "no prediction"):
                    ax.plot([], [], " ", label=f"theory: {rate.predicted_rate}")
            if part.empty:
                ax.text(0.5, 0.5, "no positive values", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.yaxis.set_minor_formatter(NullFormatter())
                if ax.get_legend_handles_labels()[0]:  # no fitted line where fewer than two n have values
                    ax.legend(fontsize=5.5, loc="best")
            ax.set_title(f"{exp.series[s_i].name}: {quantity}", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == len(series) - 1:
                ax.set_xlabel("n", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{stat} (95% CI)", fontsize=8)
    fig.suptitle(f"{exp.name}: {exp.description}", fontsize=9)
    _grid_margins(fig, len(series), len(quantities))
    return _save(fig, out_dir, exp.name)


def _grid_margins(fig, rows: int, cols: int, margin=(0.6, 0.15, 0.45, 0.6), gap=(0.55, 0.45)) -> None:
    """Fixed margins and gaps in inches (left, right, bottom, top; between columns, rows): a grid of panels of
    one size needs no measuring, and tight_layout's measuring of every tick label took as long as drawing the
    40-panel attention_quadratic grid (4.5 s of 15 s)."""
    width, height = fig.get_figwidth(), fig.get_figheight()
    left, right, bottom, top = margin
    panel_w = (width - left - right - (cols - 1) * gap[0]) / cols
    panel_h = (height - bottom - top - (rows - 1) * gap[1]) / rows
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap[0] / panel_w, hspace=gap[1] / panel_h)


def _headline_choice(rates: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(the rate row a curve draws, the row whose prediction guides it) of one (series, quantity, atom): all its
    replicates (the pooled row where their cell sizes differ), guided by its `dominant_row`."""
    pooled = rates[rates.cell_size < 0]
    guide = dominant_row(rates)
    return (pooled.iloc[0] if not pooled.empty else guide), guide


def plot_overlay(rows: pd.DataFrame, exp, out_dir, panels, basename: str, stat: str | None = None,
                 rates: pd.DataFrame | None = None) -> list[Path]:
    """The papers' shape: one log-log panel per entry of `panels` ({quantity, series = [labels], atom}, at most
    four), its series on the same axes, each with its statistic per n, a bootstrap 95% band, the fitted line
    (slope, interval and the share of uncertified fits in the legend) and the predicted rate as a dashed guide
    through the line's first point. Written as `basename`.png/pdf."""
    stat = stat or exp.stat
    rows = rows[rows.quantity.isin({panel["quantity"] for panel in panels})]
    summary = summarize(rows, stat)
    rates = rate_table(rows, exp, stat=stat) if rates is None else rates
    cols = min(len(panels), 2)
    nrows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    colors = matplotlib.colormaps["tab10"].colors
    for ax, panel in zip(axes, panels):
        quantity, atom = panel["quantity"], panel["atom"]
        indices = [i for label in panel["series"] for i, s in enumerate(exp.series) if s.label == label]
        guides_named = set()  # a prediction shared by several series is named once
        for color, s_i in zip(colors, indices):
            sel = (rates.series_index == s_i) & (rates.quantity == quantity) & (rates.true_atom == atom)
            if not sel.any():
                continue
            drawn, guide = _headline_choice(rates[sel])
            points = summary[(summary.series_index == s_i) & (summary.quantity == quantity)
                             & (summary.true_atom == atom) & (summary.cell_size == drawn.cell_size)
                             & (summary.center > 0)].sort_values("n")
            if points.empty:
                continue
            n = points.n.to_numpy(float)
            ax.fill_between(n, points.ci_low.clip(lower=points.center.min() * 1e-3), points.ci_high, color=color,
                            alpha=0.2, lw=0)
            ax.plot(n, points.center, "o", ms=3.5, color=color)
            if not np.isfinite(drawn.slope):
                continue
            logc = np.log(points.center.to_numpy())
            line = np.exp(logc.mean() + drawn.slope * (np.log(n) - np.log(n).mean()))
            uncertified = 1 - drawn.get("certified_share", 1.0)
            ax.plot(n, line, "-", color=color, lw=1.3,
                    label=f"{exp.series[s_i].name}: slope {drawn.slope:.2f} [{drawn.ci_low:.2f}, {drawn.ci_high:.2f}]"
                          + (f", {uncertified:.0%} uncertified" if uncertified > 0 else ""))
            if np.isfinite(guide.get("predicted", np.nan)):
                shape = n ** -guide.predicted * (np.log(n) ** 0.5 if quantity == "regression_l2" else 1.0)
                cell = f", cell {guide.cell_size}" if guide.cell_size > 0 else ""
                name = f"theory {guide.predicted_rate}{cell}"
                ax.plot(n, line[0] * shape / shape[0], "--", color=color, lw=1,
                        label=name if name not in guides_named else "_nolegend_")
                guides_named.add(name)
            elif guide.get("predicted_rate", "") not in ("", "no prediction"):
                ax.plot([], [], " ", label=f"theory: {guide.predicted_rate}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        grid = sorted(set(summary.n[summary.quantity == quantity]))
        ticks = grid[:: -(-len(grid) // 6)]  # the grid's own values (at most six): a short grid spans no decade
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(quantity + (f", true atom {atom}" if atom >= 0 else ""), fontsize=9)
        ax.set_xlabel(getattr(exp, "grid_name", "n"), fontsize=8)
        ax.set_ylabel(f"{stat} (95% band)", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=5.5 if len(indices) > 4 else 6.5, loc="best")
        else:
            ax.text(0.5, 0.5, "no positive values", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{exp.name}: {exp.description}", fontsize=8.5)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return _save(fig, out_dir, basename)


def plot_headline(rows: pd.DataFrame, exp: Experiment, out_dir, stat: str | None = None,
                  rates: pd.DataFrame | None = None) -> list[Path]:
    """The figure to paste into a paper: `plot_overlay` of the config's `analysis.headline` panels, written as
    NAME_headline (nothing when the config declares none)."""
    if not exp.headline:
        return []
    return plot_overlay(rows, exp, out_dir, exp.headline, f"{exp.name}_headline", stat=stat, rates=rates)


def attention_panels(exp: AttentionExperiment, rows: pd.DataFrame) -> list[dict]:
    """One panel per quantity of an attention experiment, every series on it; a per-head quantity shows the
    first teacher head."""
    return [{"quantity": q, "series": [s.label for s in exp.series],
             "atom": int(rows.true_atom[rows.quantity == q].min()) if q.startswith("param:") else -1}
            for q in exp.quantities if (rows.quantity == q).any()]


def plot_sample_complexity(table: pd.DataFrame, exp: Experiment, out_dir) -> list[Path]:
    """n needed to reach the target error per series, with bootstrap 95% intervals (log scale). The axis stops
    at EXTRAPOLATION_SHOWN times the largest grid n: a series whose line reaches the target only beyond it (a
    plateau's line can put n at 1e287) is named in its label, and interval ends beyond it are cut there."""
    fig = Figure(figsize=(6, 0.5 + 0.45 * len(table)))
    ax = fig.subplots()
    y = np.arange(len(table))
    cap = EXTRAPOLATION_SHOWN * table.grid_max.max() if len(table) else np.inf
    n_needed = table.n_needed.to_numpy()
    ok = n_needed <= cap
    lo = np.clip(n_needed - table.ci_low, 0, None)[ok]
    hi = np.clip(np.minimum(table.ci_high, cap) - n_needed, 0, None)[ok]
    ax.errorbar(n_needed[ok], y[ok], xerr=np.vstack([lo, hi]), fmt="o", capsize=3)
    beyond = f"(beyond {EXTRAPOLATION_SHOWN}x the grid)"
    labels = [s if shown else f"{s} (no decay)" if not np.isfinite(n) else f"{s} {beyond}"
              for s, n, shown in zip(table.series, n_needed, ok)]
    ax.set_yticks(y, labels, fontsize=7)
    if ok.any():
        ax.set_xscale("log")
    ax.set_xlabel(f"n to reach {exp.target_quantity} = {exp.target_error:g} (fitted line, 95% CI)", fontsize=8)
    ax.set_title(f"{exp.name}: sample complexity", fontsize=9)
    fig.tight_layout()
    return _save(fig, out_dir, f"{exp.name}_sample_complexity")


def _save(fig, out_dir, basename: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{basename}.png", out_dir / f"{basename}.pdf"]
    fig.savefig(paths[0], dpi=130)
    fig.savefig(paths[1], metadata={"CreationDate": None})  # no timestamp: the same results give the same bytes
    return paths


def report(results_dir, out_dir, stat: str | None = None, exp: Experiment | None = None):
    """Rate table (CSV, Markdown) and figures of one results directory, written into out_dir; returns the
    rate table and the paths written. `exp` (default: the manifest's config) supplies the analysis settings."""
    exp = experiment_of(results_dir) if exp is None else exp
    rows = store.load_results(results_dir)
    stat = stat or exp.stat
    rates = rate_table(rows, exp, stat=stat)
    paths = write_table(rates, out_dir, f"{exp.name}_rates")
    if isinstance(exp, AttentionExperiment):  # variants on the same axes, and the values behind each point
        paths += plot_overlay(rows, exp, out_dir, attention_panels(exp, rows), exp.name, stat=stat, rates=rates)
        summary = summarize(rows[rows.quantity.isin(exp.quantities)], stat)
        paths += write_table(summary, out_dir, f"{exp.name}_summary", columns=SUMMARY_COLUMNS)
    else:
        paths += plot_experiment(rows, exp, out_dir, stat=stat, rates=rates)
        paths += plot_headline(rows, exp, out_dir, stat=stat, rates=rates)
    if exp.target_error is not None:
        complexity = sample_complexity(rows, exp.target_error, exp.target_quantity, exp.target_atom, stat)
        paths += write_table(complexity, out_dir, f"{exp.name}_sample_complexity", columns=None)
        paths += plot_sample_complexity(complexity, exp, out_dir)
        if exp.ratios:
            ratios = pd.concat([sample_complexity_ratio(rows, exp.ratios, exp.target_error, exp.target_quantity,
                                                        exp.target_atom, stat, certified_only=only)
                                for only in (False, True)], ignore_index=True)
            paths += write_table(ratios, out_dir, f"{exp.name}_ratios", columns=None)
    if exp.ratios:
        table = comparison_table(rates, exp.ratios, exp.quantities)
        paths += write_table(table, out_dir, f"{exp.name}_comparison", columns=None)
    return rates, paths
