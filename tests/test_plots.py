"""Figures and tables of `report`: the diagnostics grid, the headline figure, the sample complexities and ratios."""

import numpy as np
import pandas as pd

from moe_sim import plots, store
from moe_sim.config import parse_config
from moe_sim.plots import EXTRAPOLATION_SHOWN, plot_headline, plot_sample_complexity, report
from moe_sim.rates import sample_complexity
from moe_sim.theory import NO_CONVERGENCE

from .test_rates import synthetic_rows

SOFTMAX = {"bias": [0.0, 0.0], "gate": [[3.0], [0.0]], "expert": [[2.0, 3.0], [-1.0, 2.0]]}
SIGMOID = {"bias": [0.0, 0.0], "gate": [[3.0], [-3.0]], "expert": [[2.0, 3.0], [-1.0, 2.0]]}
BOUNDED = {"options": {"bounds": {"bias": [-2.944, 20.0], "gate": [-20.0, 20.0], "expert": [-20.0, 20.0]}}}


def comparison(**analysis):
    """Comparison (b) in miniature: one sample set, sigmoid and softmax fits, both against G*."""
    return parse_config({
        "name": "cmp", "description": "sigmoid against softmax", "n": [100, 1000], "seed": 1, "k": 3,
        "series": [
            {"label": "sigmoid", "data": "x", "target": "truth", "loss": "D1", "truth": SIGMOID,
             "model": {"gate": "sigmoid", "expert": "scaled_tanh"}, "estimator": BOUNDED},
            {"label": "softmax", "data": "x", "truth": SOFTMAX, "model": {"gate": "softmax", "expert": "scaled_tanh"}},
        ],
        "analysis": {"quantities": ["loss", "param:expert:worst"], "target_error": 0.02,
                     "headline": [{"quantity": "loss", "series": ["sigmoid", "softmax"]},
                                  {"quantity": "param:expert:worst", "series": ["softmax"]}],
                     "ratios": [["sigmoid", "softmax"]], **analysis},
    })


def comparison_rows():
    """The sigmoid series needs 4 times the samples of the softmax one (2 n^-1/2 against n^-1/2)."""
    parts = []
    for quantity in ("loss", "param:expert:worst"):
        rows = synthetic_rows(0.5, reps=20, quantity=quantity, series=("sigmoid/k=3", "softmax/k=3"))
        rows.loc[rows.label == "softmax", "value"] /= 2.0
        parts.append(rows)
    rows = pd.concat(parts, ignore_index=True)
    rows["k"], rows["certified"] = 3, True
    split = (rows.quantity == "param:expert:worst") & (rows.replicate % 4 == 0)
    rows.loc[rows.quantity == "param:expert:worst", "cell_size"] = 2
    rows.loc[split, "cell_size"] = 1  # a quarter of the replicates have the worst atom in an exact cell
    return rows


def test_report_writes_the_headline_and_diagnostics_figures_and_the_ratios(tmp_path):
    exp, rows = comparison(), comparison_rows()
    results = tmp_path / "results"
    store.write_manifest(results, exp.raw, exp.fingerprint(), 1, {"experiment": exp.name, "quick": False})
    store.write_shard(results, "s000-n000-r00000", rows, exp.fingerprint(), 1)
    rates, paths = report(results, tmp_path / "figures", exp=exp)
    names = {p.name for p in paths}
    assert {"cmp.png", "cmp.pdf", "cmp_headline.png", "cmp_headline.pdf", "cmp_ratios.csv",
            "cmp_comparison.md"} <= names
    assert all(p.stat().st_size > 0 for p in paths)
    ratios = pd.read_csv(tmp_path / "figures" / "cmp_ratios.csv").set_index("fits")
    assert list(ratios.index) == ["all", "certified"], "each ratio on all fits and on the certified ones alone"
    ratio = ratios.loc["all"]
    assert (ratio.numerator, ratio.denominator) == ("sigmoid", "softmax")
    assert ratio.ci_low <= 4.0 <= ratio.ci_high
    assert ratios.loc["certified", "fits_numerator"] == ratio.fits_numerator  # every fit here is certified
    worst = rates[(rates.quantity == "param:expert:worst") & (rates.label == "softmax")]
    assert sorted(worst.cell_size) == [-1, 1, 2], "pooled row and one row per cell size"
    # comparison (b): the sigmoid fit of a regime-2 truth measured against G* has no rate to converge at
    sigmoid = rates[(rates.label == "sigmoid") & (rates.cell_size == 2)].iloc[0]
    assert sigmoid.predicted_rate == NO_CONVERGENCE and sigmoid.verdict == ""
    side_by_side = pd.read_csv(tmp_path / "figures" / "cmp_comparison.csv").set_index("quantity")
    worst = side_by_side.loc["param:expert:worst"]  # 3 of 4 replicates in a cell of 2, decaying at n^-1/2
    assert (worst.denominator, worst.denominator_cell, worst.denominator_predicted) == ("softmax", 2, "n^-1/4")
    assert worst.denominator_verdict == "faster" and worst.numerator_predicted == NO_CONVERGENCE
    loss = rates[(rates.quantity == "loss")].set_index("label")
    assert loss.loc["sigmoid", "predicted_rate"] == NO_CONVERGENCE and loss.loc["softmax", "predicted_rate"] == "n^-1/2"


def test_headline_draws_one_panel_per_entry_and_nothing_without_entries(tmp_path):
    exp, rows = comparison(), comparison_rows()
    (png, pdf) = plot_headline(rows, exp, tmp_path)
    assert png.name == "cmp_headline.png" and pdf.stat().st_size > 0
    assert plot_headline(rows, comparison(headline=[]), tmp_path / "none") == []
    assert not (tmp_path / "none").exists()


def test_sample_complexity_figure_survives_a_plateau_whose_line_reaches_the_target_at_1e200(tmp_path, monkeypatch):
    rows = synthetic_rows(0.5, series=("decays/k=2",))
    plateau = synthetic_rows(0.01, series=("plateau/k=2",), sd=0.01)  # 2 n^-0.01 = 0.02 at n = 1e200
    flat = synthetic_rows(-0.1, series=("grows/k=2",))
    rows = pd.concat([rows, plateau.assign(series_index=1), flat.assign(series_index=2)], ignore_index=True)
    table = sample_complexity(rows, 0.02)
    assert 1e150 < table.n_needed.iloc[1] < 1e250 and np.isinf(table.n_needed.iloc[2])
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, out_dir, name: drawn.setdefault("fig", fig) and [name])
    plot_sample_complexity(table, comparison(target_error=0.02), tmp_path)
    ax = drawn["fig"].axes[0]
    drawn["fig"].canvas.draw()  # the crash was here: a log axis out to 1e287
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["decays/k=2", f"plateau/k=2 (beyond {EXTRAPOLATION_SHOWN}x the grid)", "grows/k=2 (no decay)"]
    assert ax.get_xlim()[1] <= EXTRAPOLATION_SHOWN * table.grid_max.max() * 10
