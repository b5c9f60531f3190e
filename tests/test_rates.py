"""Rate fitting: slopes and intervals recover known exponents; verdicts against the theory table."""

import numpy as np
import pandas as pd
import pytest

from moe_sim.config import parse_config
from moe_sim.rates import loglog_fit, rate_table, sample_complexity, sample_complexity_ratio, summarize, verdict

GRID = np.array([100, 300, 1000, 3000, 10000, 30000])


def synthetic_rows(exponent, reps=40, sd=0.3, rng=0, quantity="loss", series=("a/k=2",), scale=2.0):
    """Rows whose values are scale * n^-exponent times log-normal noise (median exactly on the line)."""
    rng = np.random.default_rng(rng)
    out = []
    for s_i, name in enumerate(series):
        for n in GRID:
            for r in range(reps):
                out.append({"series_index": s_i, "series": name, "label": name.split("/")[0], "k": 2,
                            "quantity": quantity, "true_atom": -1, "cell_size": -1, "n": n, "replicate": r,
                            "status": "ok", "value": scale * n ** -exponent * np.exp(sd * rng.normal())})
    return pd.DataFrame(out)


@pytest.mark.parametrize("exponent", [0.25, 0.5])
def test_recovers_a_known_slope_within_the_interval(exponent):
    table = rate_table(synthetic_rows(exponent), rng=1)
    row = table.iloc[0]
    assert row.ci_low <= -exponent <= row.ci_high
    # 40 replicates, sd 0.3 on the log scale: the median's log error is about 0.06, so the slope's about 0.02
    np.testing.assert_allclose(row.slope, -exponent, atol=0.06)
    assert row.ci_high - row.ci_low < 0.15
    assert row.runaway_share == 0 and row.failed_share == 0


def test_bootstrap_intervals_cover_at_the_nominal_rate():
    covered = [(lambda r: r.ci_low <= -0.5 <= r.ci_high)(rate_table(synthetic_rows(0.5, reps=15, rng=s),
                                                                    n_boot=300, rng=s).iloc[0])
               for s in range(40)]
    # 95% intervals: the number missed out of 40 is about Binomial(40, 0.05), 8 or more has p < 0.001
    assert sum(covered) >= 32


def test_a_series_interval_does_not_depend_on_the_other_series_in_the_table():
    """Bootstrap streams are seeded per group: adding or refitting one series leaves the others' intervals."""
    alone = synthetic_rows(0.5, reps=8, series=("a/k=2",))
    other = synthetic_rows(0.25, reps=8, rng=5, series=("b/k=2",)).assign(series_index=0)
    both = pd.concat([other, alone.assign(series_index=1)], ignore_index=True)
    columns = ["slope", "ci_low", "ci_high", "slope_upper_ci_low", "slope_upper_ci_high"]
    a_alone = rate_table(alone, rng=3).iloc[0][columns].astype(float)
    a_beside = rate_table(both, rng=3).set_index("series").loc["a/k=2", columns].astype(float)
    pd.testing.assert_series_equal(a_alone, a_beside, check_names=False)
    first = summarize(alone, rng=3)[["ci_low", "ci_high"]]
    beside = summarize(both, rng=3).query("series == 'a/k=2'")[["ci_low", "ci_high"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, beside)
    needed = sample_complexity(both, 0.05, rng=3).set_index("label").loc["a", ["n_needed", "ci_low", "ci_high"]]
    first_needed = sample_complexity(alone, 0.05, rng=3).iloc[0][["n_needed", "ci_low", "ci_high"]]
    pd.testing.assert_series_equal(first_needed.astype(float), needed.astype(float), check_names=False)


def test_log_n_over_n_slope_and_runaways():
    rows = synthetic_rows(0.5, sd=0.05)
    rows["value"] *= np.sqrt(np.log(rows.n))  # sqrt(log n / n)
    rows.loc[rows.replicate == 0, "value"] *= 1e3  # one runaway fit per n
    row = rate_table(rows).iloc[0]
    np.testing.assert_allclose(row.slope_lognn, -0.5, atol=0.03)
    assert row.slope > -0.5 + 0.05, "against log n the log factor makes the slope shallower"
    np.testing.assert_allclose(row.runaway_share, 1 / 40)
    np.testing.assert_allclose(row.trimmed_slope, -0.5, atol=0.1)


def test_verdicts():
    """Prediction n^-1/2 (slope -0.5), margin 0.1: consistent needs the interval inside [-0.6, -0.4]."""
    assert verdict(0.5, "n^-1/2", -0.52, (-0.58, -0.43)) == "consistent"
    assert verdict(0.5, "n^-1/2", -0.55, (-0.65, -0.45)) == "inconclusive"  # contains -0.5, leaves the margin
    assert verdict(0.25, "n^-1/4", -0.5, (-0.6, -0.45)) == "faster"  # excludes -0.25 by more than 0.1
    assert verdict(0.5, "n^-1/2", -0.2, (-0.3, -0.1)) == "slower"
    assert verdict(0.5, "n^-1/2", -0.38, (-0.45, -0.3)) == "inconclusive"  # excludes -0.5, not by 0.1
    assert verdict(0.5, "n^-1/2", -0.55, (-0.65, -0.45), margin=0.2) == "consistent"
    assert verdict(0.5, "n^-1/2", np.nan, (-0.6, -0.45)) == ""  # NaN slope: no verdict
    assert verdict(0.5, "n^-1/2", -0.5, (np.nan, np.nan)) == ""
    assert verdict(np.nan, "not identified", -0.2, (-0.3, -0.1)) == "not identified"
    assert verdict(np.nan, "not identified", np.nan, (-0.3, -0.1)) == ""  # nothing measured, no verdict at all
    assert verdict(np.nan, "slow", -0.2, (-0.3, -0.1)) == "slow: no polynomial rate"
    assert verdict(np.nan, "measured", -0.2, (-0.3, -0.1)) == ""
    assert verdict(np.nan, "no prediction", -0.2, (-0.3, -0.1)) == ""


def _experiment(**analysis):
    return parse_config({
        "name": "t", "n": [100, 1000],
        "model": {"gate": "softmax", "expert": "scaled_tanh"},
        "truth": {"bias": [0.0, 0.0], "gate": [[2.0], [0.0]], "expert": [[0.5, 1.0], [-0.5, -1.0]]},
        "k": 3, **({"analysis": analysis} if analysis else {}),
    })


@pytest.mark.parametrize("quantity", ["param:expert:max", "param:expert_scale:mean"])
def test_prediction_from_the_experiment(quantity):
    rows = synthetic_rows(0.25, quantity=quantity, series=("default/k=3",))
    rows["k"], rows["true_atom"], rows["cell_size"] = 3, 1, 2
    row = rate_table(rows, _experiment()).iloc[0]
    assert row.cell_size == 2 and row.predicted == 0.25 and row.predicted_rate == "n^-1/4"
    # 40 replicates at sd 0.3: the interval is narrower than 0.15 (test above), inside -0.25 +- 0.1
    assert row.verdict == "consistent" and row.margin == 0.1


def test_flat_series_with_a_wide_interval_is_inconclusive():
    """No decay, 5 replicates at log-sd 2.5: the median's log-sd is about 1.25 * 2.5 / sqrt(5) = 1.4, the
    slope's 1.4 / 4.8 = 0.29 over this grid, so the interval (about +-0.57) holds 0 and the prediction -0.25."""
    rows = synthetic_rows(0.0, reps=5, sd=2.5, quantity="param:expert:max", series=("default/k=3",))
    rows["k"], rows["true_atom"], rows["cell_size"] = 3, 1, 2
    row = rate_table(rows, _experiment()).iloc[0]
    assert row.ci_low < -0.25 < row.ci_high and row.ci_low < 0 < row.ci_high
    assert row.min_replicates == 5 and row.verdict == "inconclusive"


def test_too_few_replicates_give_no_conclusive_verdict():
    """One replicate per n: every bootstrap resample is the data, the interval has width 0."""
    rows = synthetic_rows(0.25, reps=1, sd=0.0, quantity="param:expert:max", series=("default/k=3",))
    rows["k"], rows["true_atom"], rows["cell_size"] = 3, 1, 2
    row = rate_table(rows, _experiment()).iloc[0]
    assert row.ci_low == row.ci_high and row.min_replicates == 1
    assert row.verdict == "inconclusive"
    assert verdict(0.25, "n^-1/4", -0.25, (-0.26, -0.24), min_replicates=4) == "inconclusive"
    assert verdict(0.25, "n^-1/4", -0.25, (-0.26, -0.24), min_replicates=5) == "consistent"


def test_rows_are_keyed_by_each_replicates_cell_size():
    """Half the replicates over-specify the atom (n^-1/4), half fit it exactly (n^-1/2): two rows, each
    against its own prediction, where labelling by one cell size would give one of them the wrong one."""
    over = synthetic_rows(0.25, quantity="param:gate:mean", series=("default/k=3",), rng=1)
    exact = synthetic_rows(0.5, quantity="param:gate:mean", series=("default/k=3",), rng=2)
    over["cell_size"], exact["cell_size"] = 2, 1
    exact["replicate"] += 40
    rows = pd.concat([over, exact], ignore_index=True).assign(k=3, true_atom=1)
    rows["certified"] = rows.replicate % 4 != 0
    table = rate_table(rows, _experiment()).set_index("cell_size")
    assert list(table.index) == [-1, 1, 2]  # the pooled row first, without a prediction
    np.testing.assert_array_equal(table.predicted, [np.nan, 0.5, 0.25])
    assert list(table.verdict) == ["", "consistent", "consistent"]
    np.testing.assert_allclose(table.cell_share, [1.0, 0.5, 0.5])
    np.testing.assert_allclose(table.certified_share, 0.75)
    assert np.isnan(rate_table(rows.drop(columns="certified")).certified_share).all()


def test_margin_comes_from_the_config_and_is_checked():
    rows = synthetic_rows(0.25, quantity="param:expert:max", series=("default/k=3",))
    rows["k"], rows["true_atom"], rows["cell_size"] = 3, 1, 2
    assert rate_table(rows, _experiment(margin=0.3)).iloc[0].margin == 0.3
    assert rate_table(rows, _experiment(margin=0.3), margin=0.05).iloc[0].margin == 0.05
    with pytest.raises(ValueError, match="margin=-0.1 is not allowed"):
        rate_table(rows, _experiment(margin=-0.1))


def test_sample_complexity_inverts_the_fitted_line():
    rows = synthetic_rows(0.5, series=("fast/k=2", "slow/k=2"))
    rows.loc[rows.series == "slow/k=2", "value"] = 2.0 * rows.n ** -0.25
    out = sample_complexity(rows, target=0.02).set_index("label")
    # 2 n^-1/2 = 0.02 at n = 1e4; 2 n^-1/4 = 0.02 at n = 1e8
    assert out.loc["fast", "ci_low"] <= 1e4 <= out.loc["fast", "ci_high"]
    np.testing.assert_allclose(out.loc["slow", "n_needed"], 1e8, rtol=1e-6)
    assert out.loc["fast", "first_grid_n_below"] == 10000
    assert np.isnan(out.loc["slow", "first_grid_n_below"])
    assert (out.grid_max == GRID[-1]).all()


def test_sample_complexity_ratio_recovers_a_known_ratio():
    reps, sd = 40, 0.3
    rows = synthetic_rows(0.5, reps=reps, sd=sd, rng=3, series=("sigmoid/k=3", "softmax/k=3"))
    rows.loc[rows.label == "softmax", "value"] /= 2.0  # 2 n^-1/2 against 1 n^-1/2: 0.02 at n = 1e4 and 2500
    out = sample_complexity_ratio(rows, [("sigmoid", "softmax"), ("softmax", "sigmoid")], target=0.02, rng=1)
    ratio = out.iloc[0]
    np.testing.assert_allclose([ratio.n_numerator, ratio.n_denominator], [1e4, 2500], rtol=0.5)
    assert ratio.ci_low <= 4.0 <= ratio.ci_high
    # log n* = mean log n + (log target - mean log median) / slope, slope -1/2: the median's log error
    # (1.25 sd / sqrt(reps) per n) enters twice over through the intercept (over sqrt(grid size)) and through
    # the slope (times the target's distance from the grid's centre in log n, at most that of n = 1e4)
    log_n = np.log(GRID)
    per_n = 1.25 * sd / np.sqrt(reps)
    per_series = 2 * per_n * (1 / np.sqrt(len(GRID))
                              + abs(np.log(1e4) - log_n.mean()) / np.sqrt(np.sum((log_n - log_n.mean()) ** 2)))
    tolerance = 4 * np.sqrt(2) * per_series  # four standard errors of the log ratio
    assert abs(np.log(ratio.ratio) - np.log(4.0)) < tolerance
    np.testing.assert_allclose(out.iloc[1].ratio, 1 / ratio.ratio)
    assert ratio.within_grids
    assert ratio.ci_high - ratio.ci_low < 4.0 * (np.exp(2 * tolerance) - 1)


def test_sample_complexity_ratio_on_certified_fits_alone_sets_uncertified_ones_aside():
    """Three in four sigmoid fits are uncertified and stuck at errors of 2 to 40 at every n: with them the sigmoid
    median does not decay (ratio inf); on the certified fits alone the known ratio 4 comes back. Where no fit is
    certified the row is NaN, not an error."""
    rows = synthetic_rows(0.5, reps=40, rng=3, series=("sigmoid/k=3", "softmax/k=3"))
    rows.loc[rows.label == "softmax", "value"] /= 2.0
    rows["certified"] = ~((rows.label == "sigmoid") & (rows.replicate % 4 != 0))
    rows.loc[~rows.certified, "value"] = 1.0 + rows.replicate[~rows.certified]  # the same at every n
    pairs = [("sigmoid", "softmax")]
    every = sample_complexity_ratio(rows, pairs, target=0.02, rng=1).iloc[0]
    certified = sample_complexity_ratio(rows, pairs, target=0.02, rng=1, certified_only=True).iloc[0]
    assert (every.fits, every.fits_numerator, every.fits_denominator) == ("all", 240, 240)
    assert (certified.fits, certified.fits_numerator, certified.fits_denominator) == ("certified", 60, 240)
    assert np.isinf(every.ratio)
    assert certified.ci_low <= 4.0 <= certified.ci_high
    none = sample_complexity_ratio(rows.assign(certified=False), pairs, target=0.02, certified_only=True).iloc[0]
    assert none.fits_numerator == 0 and np.isnan(none.ratio) and not none.within_grids


def test_sample_complexity_ratio_of_a_series_that_does_not_decay():
    rows = synthetic_rows(0.5, series=("decays/k=3", "flat/k=3"))
    rows.loc[rows.label == "flat", "value"] = 0.5
    out = sample_complexity_ratio(rows, [("flat", "decays")], target=0.02).iloc[0]
    assert np.isinf(out.n_numerator) and np.isinf(out.ratio) and not out.within_grids
    with pytest.raises(ValueError, match="target must be a positive number"):
        sample_complexity_ratio(rows, [("flat", "decays")], target=0.0)


def test_summarize_and_loglog_fit():
    summary = summarize(synthetic_rows(0.5, sd=0.01), n_boot=200)
    assert len(summary) == len(GRID) and (summary.ci_low <= summary.center).all()
    np.testing.assert_allclose(summary.center, 2.0 * GRID**-0.5, rtol=0.01)
    intercept, slope = loglog_fit(np.log(GRID), 3.0 * GRID**-0.7)
    np.testing.assert_allclose([intercept, slope], [np.log(3.0), -0.7])
    with pytest.raises(ValueError, match="stat='mode'"):
        summarize(synthetic_rows(0.5), stat="mode")
