"""Convergence rates from sweep rows: log-log slopes with bootstrap intervals, compared with the theory.

For every (series, quantity, true atom) the statistic (median by default, or mean) of the replicates at each n
is regressed on log n. Bootstrap intervals resample the replicates within each n (seeded per group,
`group_rng`). Alongside: the slope against log(n / log n) (the regression function's sqrt(log n / n) is a
slope of exactly -1/2 there), the slope over the upper half of the n grid, the slope of 10%-trimmed means with
the share of runaway fits (more than 10 times the median at their n), and the verdict against
`predicted_rates`.

Rows are keyed by the size of the Voronoi cell each replicate's atom actually has (the sweep's `cell_size`),
so a series whose atom is over-specified in half of the replicates gives two rows, each compared with the
prediction for its cell size, and a pooled row over all its replicates (cell_size -1, no prediction). Per-parameter
quantities come as the cell's worst atom (param:<block>:max) and
its weight-averaged error (param:<block>:mean), each a row of its own.

A verdict is a test that can fail: "consistent" only when the whole bootstrap interval of the slope lies
within `margin` (default 0.1) of the predicted slope, "faster" / "slower" when it excludes the prediction by
more than the margin, "inconclusive" otherwise; "not identified" where the theory says the parameter is not
identified; no verdict for a NaN slope or where nothing is predicted. Fewer than MIN_REPLICATES replicates at
some n (common once rows are split by cell size) make a verdict "inconclusive": the bootstrap median of a
handful of values takes a handful of values, and its interval understates the spread (one replicate: width 0).

Failed fits (status "failed") carry no value and are left out; their share is reported. Where rows carry the
estimator's `certified` flag (its optimality criterion held and its global search met its stopping rule),
the share of certified replicates is reported too (NaN for results without it).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
from scipy.stats import trim_mean

from .config import Experiment
from .theory import NO_CONVERGENCE, NOT_UNIQUE

KEYS = ["series_index", "series", "label", "k", "quantity", "true_atom", "cell_size"]
SLOW = ("slow", "1/log^lambda(n)")
NOT_IDENTIFIED = "not identified"
DEFAULT_MARGIN = 0.1
MIN_REPLICATES = 5
RUNAWAY_FACTOR = 10.0
TRIM = 0.1
STATS = ("median", "mean")
SIGNED = ("objective_gap",)  # can be negative (a fit better than the truth): no log-log slope


def _check_stat(stat: str) -> None:
    if stat not in STATS:
        raise ValueError(f"stat={stat!r} is not allowed; choose one of {', '.join(map(repr, STATS))}")


def _center(values: np.ndarray, stat: str, axis=-1) -> np.ndarray:
    return np.median(values, axis=axis) if stat == "median" else np.mean(values, axis=axis)


def bootstrap_centers(groups: list[np.ndarray], stat: str = "median", n_boot: int = 1000, rng=None) -> np.ndarray:
    """(n_boot + 1, len(groups)) statistics: row 0 on the data, the others on replicates resampled per group."""
    _check_stat(stat)
    rng = np.random.default_rng(rng)
    out = np.empty((n_boot + 1, len(groups)))
    for j, v in enumerate(groups):
        out[0, j] = _center(v, stat)
        out[1:, j] = _center(v[rng.integers(0, len(v), (n_boot, len(v)))], stat)
    return out


def group_rng(seed: int, *key) -> np.random.Generator:
    """The bootstrap stream of one group, seeded by the seed and the group's key (names, not the series' position
    in its config): a group's interval does not depend on which other groups the table holds, so a new or
    refitted series leaves the others' intervals as they were."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"rng = {seed!r} is not allowed: the bootstrap seed is a non-negative integer")
    return np.random.default_rng([int(seed), zlib.crc32("/".join(map(str, key)).encode())])


def loglog_fit(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (intercept, slope) of log(centers) on x, row by row; NaN where a center is not positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logc = np.where(centers > 0, np.log(np.where(centers > 0, centers, 1.0)), np.nan)
    xc = x - x.mean()
    slope = (logc - logc.mean(axis=-1, keepdims=True)) @ xc / (xc @ xc)
    return logc.mean(axis=-1) - slope * x.mean(), slope


def _interval(boot: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    boot = boot[~np.isnan(boot)]
    if boot.size == 0:
        return np.nan, np.nan
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(lo), float(hi)


def _keyed_groups(rows: pd.DataFrame):
    """(key, rows) per KEYS: per (series, quantity, true atom) and cell size, the pooled rows first (cell size
    -1) where the replicates have more than one. Results written before cell sizes were recorded are pooled."""
    if "cell_size" not in rows:
        rows = rows.assign(cell_size=-1)
    for key, sub in rows.groupby(KEYS[:-1], sort=True):
        sizes = sorted(sub.cell_size.unique())
        if len(sizes) > 1:
            yield (*key, -1), sub
        for size in sizes:
            yield (*key, size), sub[sub.cell_size == size]


def _groups(sub: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    ok = sub[np.isfinite(sub.value)]
    grid = np.array(sorted(ok.n.unique()))
    return grid, [ok.value.to_numpy()[ok.n.to_numpy() == n] for n in grid]


def summarize(rows: pd.DataFrame, stat: str = "median", n_boot: int = 1000, rng=0) -> pd.DataFrame:
    """Per (series, quantity, true atom, n): the statistic with a bootstrap 95% interval, quartiles, counts."""
    _check_stat(stat)
    out = []
    for key, sub in _keyed_groups(rows):
        grid, groups = _groups(sub)
        if not groups:
            continue
        boot = bootstrap_centers(groups, stat, n_boot, group_rng(rng, *key[1:]))
        for j, n in enumerate(grid):
            lo, hi = _interval(boot[1:, j])
            q25, q75 = np.quantile(groups[j], [0.25, 0.75])
            out.append({**dict(zip(KEYS, key)), "n": int(n), "stat": stat, "center": boot[0, j], "ci_low": lo,
                        "ci_high": hi, "q25": q25, "q75": q75, "replicates": len(groups[j]),
                        "failed": int(((sub.n == n) & (sub.status == "failed")).sum())})
    return pd.DataFrame(out)


def _prediction(table: pd.DataFrame, quantity: str, cell_size: int) -> dict:
    """Predicted exponent (rate n^-a), label and tag for one quantity; NaN exponent where none applies."""
    none = {"predicted": np.nan, "predicted_rate": "no prediction", "tag": ""}
    if quantity == "loss":
        if (table.rate == NO_CONVERGENCE).any():  # measured against G* while the fit converges to G_bar
            return {"predicted": np.nan, "predicted_rate": NO_CONVERGENCE, "tag": "V"}
        if (table.rate == NOT_UNIQUE).any():  # measured against one member of a continuum of best fits
            return {"predicted": np.nan, "predicted_rate": NOT_UNIQUE, "tag": "measured"}
        return {"predicted": 0.5, "predicted_rate": "n^-1/2", "tag": "THEORY s2"}
    if quantity == "regression_l2":
        row = table[table.block == "regression_function"].iloc[0]
        return {"predicted": row.exponent, "predicted_rate": row.rate, "tag": row.tag}
    if not quantity.startswith("param:") or cell_size < 1:
        return none
    block = quantity.split(":")[1]
    cell = table[(table.cell == ("exact" if cell_size == 1 else "over")) & (table.cell_size == cell_size)]
    found = cell[cell.block == block]
    if found.empty and (block in ("expert_scale", "expert_inner")
                        or cell_size == 1 and block in ("expert_intercept", "expert_slope", "expert_mean")):
        found = cell[cell.block == "expert"]
    if found.empty and block == "expert":
        found = cell[cell.block.isin(["expert_intercept", "expert_slope"])].sort_values("exponent")
    if found.empty:
        return none
    row = found.iloc[0]
    return {"predicted": row.exponent, "predicted_rate": row.rate, "tag": row.tag}


def check_margin(margin) -> float:
    """The verdicts' margin as a float: a finite number >= 0."""
    real = isinstance(margin, (int, float, np.integer, np.floating)) and not isinstance(margin, bool)
    if not (real and np.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin={margin!r} is not allowed: the verdicts' margin is a finite number >= 0 "
                         f"(default {DEFAULT_MARGIN})")
    return float(margin)


def verdict(predicted: float, rate_label: str, slope: float, ci: tuple[float, float],
            margin: float = DEFAULT_MARGIN, min_replicates: int = MIN_REPLICATES) -> str:
    """The measured slope's bootstrap interval ci against the predicted slope -predicted (module docstring):
    consistent, faster, slower, inconclusive, not identified, "slow: no polynomial rate", or "" (no verdict:
    NaN slope or interval, or no polynomial prediction). min_replicates: the fewest replicates at any n."""
    if not np.isfinite(slope):  # nothing measured (a median of 0 at some n): no verdict of any kind
        return ""
    if rate_label == NOT_IDENTIFIED:
        return NOT_IDENTIFIED
    if rate_label in SLOW:
        return "slow: no polynomial rate"
    if not (np.isfinite(predicted) and np.isfinite(slope) and np.all(np.isfinite(ci))):
        return ""
    if min_replicates < MIN_REPLICATES:
        return "inconclusive"
    target, (low, high) = -predicted, ci
    if target - margin <= low and high <= target + margin:
        return "consistent"
    if high < target - margin:
        return "faster"
    if low > target + margin:
        return "slower"
    return "inconclusive"


def rate_table(rows: pd.DataFrame, exp: Experiment | None = None, quantities=None, stat: str = "median",
               n_boot: int = 1000, rng=0, margin=None) -> pd.DataFrame:
    """One row per (series, quantity, true atom, cell size): slopes with bootstrap 95% intervals and verdicts.

    slope: d log(stat) / d log n (negative when the error decays); slope_lognn: the same against
    log(n / log n); slope_upper: over the upper half of the n grid; trimmed_slope: of 10%-trimmed means.
    cell_size: the size of the true atom's Voronoi cell in the replicates of the row (-1: not per atom, or
    pooled over replicates with different sizes);
    replicates and cell_share: how many replicates have it, and their share of the (series, quantity, true
    atom); min_replicates: the fewest at any n (below MIN_REPLICATES the verdicts are inconclusive);
    certified_share: the share whose fit is certified (NaN when the rows do not say). With `exp` (the
    experiment that produced the rows) each row is compared with the theory's predicted exponent for its cell
    size, over the whole grid (verdict; against log(n / log n) for the regression function) and over its
    upper half (verdict_upper: the asymptotic regime, where the pre-asymptotic start of a grid is left out),
    within `margin` (default: the config's [analysis] margin, else DEFAULT_MARGIN). By default every quantity
    except the signed objective gap.
    """
    _check_stat(stat)
    if margin is None:
        margin = (exp.raw.get("analysis", {}) if exp is not None else {}).get("margin", DEFAULT_MARGIN)
    margin = check_margin(margin)
    rows = rows[rows.quantity.isin(list(quantities)) if quantities is not None else ~rows.quantity.isin(SIGNED)]
    per_atom = rows.groupby(KEYS[:-1], sort=False).size()
    tables = {}
    out = []
    for key, sub in _keyed_groups(rows):
        record = dict(zip(KEYS, key))
        grid, groups = _groups(sub)
        if len(grid) < 2:
            continue
        boot = bootstrap_centers(groups, stat, n_boot, group_rng(rng, *key[1:]))
        x = np.log(grid.astype(float))
        _, slope = loglog_fit(x, boot)
        _, slope_nn = loglog_fit(np.log(grid / np.log(grid)), boot)
        upper = slice(len(grid) // 2, None) if len(grid) >= 4 else slice(None)
        _, slope_up = loglog_fit(x[upper], boot[:, upper])
        trimmed = np.array([trim_mean(v, TRIM) for v in groups])
        medians = np.array([np.median(v) for v in groups])
        runaway = sum(int(np.sum(v > RUNAWAY_FACTOR * m)) for v, m in zip(groups, medians))
        cell_size = int(record["cell_size"])
        ci = _interval(slope[1:])
        ci_nn = _interval(slope_nn[1:])
        certified = float(sub.certified.eq(True).mean()) if "certified" in sub else np.nan
        fewest = min(map(len, groups))
        record.update({
            "cell_size": cell_size, "replicates": len(sub), "min_replicates": fewest,
            "cell_share": len(sub) / per_atom[key[:-1]],
            "certified_share": certified, "stat": stat, "n_min": int(grid[0]), "n_max": int(grid[-1]),
            "n_values": len(grid), "slope": slope[0], "ci_low": ci[0], "ci_high": ci[1],
            "slope_lognn": slope_nn[0], "ci_low_lognn": ci_nn[0], "ci_high_lognn": ci_nn[1],
            "slope_upper": slope_up[0], "slope_upper_ci_low": _interval(slope_up[1:])[0],
            "slope_upper_ci_high": _interval(slope_up[1:])[1],
            "trimmed_slope": loglog_fit(x, trimmed)[1], "runaway_share": runaway / sum(map(len, groups)),
            "failed_share": float((sub.status == "failed").mean()),
            "not_converged_share": float((sub.status == "not_converged").mean()),
        })
        if exp is not None:
            series = exp.series[record["series_index"]]
            if series.name not in tables:
                tables[series.name] = series.predicted_rates()
            pred = _prediction(tables[series.name], record["quantity"], cell_size)
            use_nn = record["quantity"] == "regression_l2"
            pred["verdict"] = verdict(pred["predicted"], pred["predicted_rate"],
                                      slope_nn[0] if use_nn else slope[0], ci_nn if use_nn else ci, margin, fewest)
            pred["verdict_upper"] = verdict(pred["predicted"], pred["predicted_rate"], slope_up[0],
                                            (record["slope_upper_ci_low"], record["slope_upper_ci_high"]), margin,
                                            min(map(len, groups[upper])))
            record.update(pred, margin=margin)
        out.append(record)
    return pd.DataFrame(out)


def _n_needed(sub: pd.DataFrame, target: float, stat: str, n_boot: int, rng):
    """(grid, bootstrap statistics, slopes, n needed) of one series' rows of one quantity: the n at which the
    fitted log-log line reaches `target` (inf where the line does not decay), on the data (index 0) and on
    each bootstrap draw (replicates resampled within each n). None with fewer than two sample sizes."""
    grid, groups = _groups(sub)
    if len(grid) < 2:
        return None
    boot = bootstrap_centers(groups, stat, n_boot, rng)
    intercept, slope = loglog_fit(np.log(grid.astype(float)), boot)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        n_star = np.where(slope < 0, np.exp((np.log(target) - intercept) / slope), np.inf)
    return grid, boot, slope, n_star


def _select(rows: pd.DataFrame, target: float, quantity: str, true_atom: int, stat: str) -> pd.DataFrame:
    if not (np.isfinite(target) and target > 0):
        raise ValueError(f"target must be a positive number, got {target!r}")
    _check_stat(stat)
    sel = rows[(rows.quantity == quantity) & (rows.true_atom == true_atom)]
    if sel.empty:
        raise ValueError(f"no rows with quantity={quantity!r} and true_atom={true_atom}")
    return sel


def sample_complexity(rows: pd.DataFrame, target: float, quantity: str = "loss", true_atom: int = -1,
                      stat: str = "median", n_boot: int = 1000, rng=0) -> pd.DataFrame:
    """Per series: the n at which the fitted log-log line of `quantity` reaches `target`, with a bootstrap
    95% interval, the smallest n of the grid whose statistic is already below the target, and the grid's largest
    n (`grid_max`: how far n_needed extrapolates the line)."""
    sel = _select(rows, target, quantity, true_atom, stat)
    out = []
    for key, sub in sel.groupby(["series_index", "series", "label", "k"], sort=True):
        found = _n_needed(sub, target, stat, n_boot, group_rng(rng, key[2], quantity, true_atom))
        if found is None:
            continue
        grid, boot, slope, n_star = found
        lo, hi = _interval(n_star[1:])
        below = grid[boot[0] <= target]
        out.append({**dict(zip(["series_index", "series", "label", "k"], key)), "quantity": quantity,
                    "target": target, "slope": slope[0], "n_needed": n_star[0], "ci_low": lo, "ci_high": hi,
                    "first_grid_n_below": int(below[0]) if below.size else np.nan, "grid_max": int(grid[-1])})
    return pd.DataFrame(out)


def sample_complexity_ratio(rows: pd.DataFrame, pairs, target: float, quantity: str = "loss",
                            true_atom: int = -1, stat: str = "median", n_boot: int = 1000, rng=0,
                            certified_only: bool = False) -> pd.DataFrame:
    """Per pair (numerator, denominator) of series labels: n_numerator / n_denominator, the ratio of the sample
    sizes at which each series' fitted log-log line of `quantity` reaches `target` (`sample_complexity`'s n,
    read on the fitted line, not on the medians), with a bootstrap 95% interval: each draw resamples the
    replicates within each n of both series independently. Above 1: the numerator needs more samples.
    NaN where a series has fewer than two sample sizes or neither line decays, inf/0 where one does not;
    `within_grids`: both n lie inside their series' n grids (otherwise the ratio extrapolates the lines).
    `certified_only` keeps the certified fits alone (`fits` says which, `fits_numerator` / `fits_denominator`
    how many): a ratio that holds only with uncertified fits is the optimiser's, not the estimator's."""
    sel = _select(rows, target, quantity, true_atom, stat)
    if certified_only:
        sel = sel[sel.certified.eq(True)]
    out = []
    for numerator, denominator in pairs:
        found = [_n_needed(sel[sel.label == label], target, stat, n_boot, group_rng(rng, label, quantity, true_atom))
                 for label in (numerator, denominator)]
        record = {"numerator": numerator, "denominator": denominator, "quantity": quantity, "target": target,
                  "fits": "certified" if certified_only else "all",
                  "fits_numerator": int((sel.label == numerator).sum()),
                  "fits_denominator": int((sel.label == denominator).sum())}
        if any(f is None for f in found):
            out.append({**record, "n_numerator": np.nan, "n_denominator": np.nan, "ratio": np.nan,
                        "ci_low": np.nan, "ci_high": np.nan, "within_grids": False})
            continue
        (grid_num, _, _, n_num), (grid_den, _, _, n_den) = found
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = n_num / n_den
        lo, hi = _interval(ratio[1:])
        inside = bool(grid_num[0] <= n_num[0] <= grid_num[-1] and grid_den[0] <= n_den[0] <= grid_den[-1])
        out.append({**record, "n_numerator": n_num[0], "n_denominator": n_den[0], "ratio": ratio[0],
                    "ci_low": lo, "ci_high": hi, "within_grids": inside})
    return pd.DataFrame(out)


def dominant_row(rates: pd.DataFrame) -> pd.Series:
    """The rate row of one (series, quantity, true atom) for the cell size most of its replicates have (the
    one its prediction and verdict are for); the pooled row where no row is per cell size."""
    per_size = rates[rates.cell_size >= 0]
    return (per_size if not per_size.empty else rates).sort_values("replicates", ascending=False, kind="stable").iloc[0]


def comparison_table(rates: pd.DataFrame, pairs, quantities) -> pd.DataFrame:
    """Per pair (numerator, denominator) of series labels and per quantity (not per atom): each series' slope,
    95% interval, prediction and verdict side by side, from its `dominant_row` (cell size and replicates
    given)."""
    out = []
    for pair in pairs:
        for quantity in quantities:
            record = {"pair": " / ".join(pair), "quantity": quantity}
            for side, label in zip(("numerator", "denominator"), pair):
                sel = rates[(rates.label == label) & (rates.quantity == quantity) & (rates.true_atom == -1)]
                if sel.empty:
                    continue
                row = dominant_row(sel)
                record.update({f"{side}": label, f"{side}_cell": row.cell_size,
                               f"{side}_replicates": row.replicates, f"{side}_slope": row.slope,
                               f"{side}_ci": f"[{row.ci_low:.2f}, {row.ci_high:.2f}]",
                               f"{side}_predicted": row.get("predicted_rate", ""),
                               f"{side}_verdict": row.get("verdict", "")})
            out.append(record)
    return pd.DataFrame(out)

