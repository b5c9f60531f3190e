"""The attention experiments (issue 13): configs, a tiny sweep through the MoE store, doubling statistics, budgets."""

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moe_sim import attention_experiment as ae
from moe_sim import store
from moe_sim.attention import AttentionSpec, attention_gate, draw_params, draw_sequences, nonzero_budget, row_gates
from moe_sim.cli import main
from moe_sim.config import load_config, parse_config
from moe_sim.plots import report
from moe_sim.rates import rate_table
from moe_sim.sweep import COLUMNS, run_sweep

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
SHIPPED = ("attention_rows", "attention_doubling", "attention_focus")
TINY = {
    "kind": "attention", "name": "tiny_attention", "N": 3, "d": 1, "row": 1, "noise_sd": 0.1, "n": [30, 60],
    "replicates": 2, "chunk": 1, "seed": 3, "eval_n": 100, "n_starts": 2, "search": {"max_rounds": 1},
    "max_iter": 200, "teacher": {"scale": 2.0, "seed": 1},
    "series": [{"label": "softmax", "teacher": {"gate": "softmax"}},
               {"label": "top2_over", "teacher": {"gate": "top_k", "top_k": 2}, "student": {"heads": 2}}],
    "analysis": {"quantities": ["regression_l2", "param:W:mean"], "target_error": 0.05},
}
DOUBLING = {"kind": "attention", "name": "tiny_doubling", "mode": "doubling", "d": 2, "lengths": [3, 6],
            "sequences": 50, "replicates": 2, "seed": 4, "teacher": {"gate": "softmax"},
            "analysis": {"quantities": ["row_sum:init", "sum_ratio:teacher"]}}


def with_(base, **changes):
    cfg = copy.deepcopy(base)
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_attention_configs_load_and_are_listed(name, capsys):
    full, quick = load_config(EXPERIMENTS / f"{name}.toml"), load_config(EXPERIMENTS / f"{name}.toml", quick=True)
    assert isinstance(full, ae.AttentionExperiment) and quick.name == f"{name}_quick"
    assert full.seed is not None and quick.replicates <= full.replicates and quick.n_grid[-1] <= full.n_grid[-1]
    assert main(["--configs", str(EXPERIMENTS), "list"]) == 0
    assert f"{name:22s} {len(full.series):2d} series" in capsys.readouterr().out


def test_the_rows_config_pairs_every_gate_exact_and_over_specified():
    exp = load_config(EXPERIMENTS / "attention_rows.toml")
    pairs = {(s.teacher["gate"], s.teacher["heads"], s.student["heads"]) for s in exp.series}
    assert pairs == {(g, 1, h) for g in ("softmax", "sigmoid_logn", "sigmoid", "top_k", "band") for h in (1, 2)}
    assert all(s.student["gate"] == s.teacher["gate"] for s in exp.series)


def test_the_focus_students_have_the_same_budget_of_nonzero_weights_and_the_gates_spend_exactly_it():
    exp = load_config(EXPERIMENTS / "attention_focus.toml")
    students = {s.student["gate"]: s.specs(exp.N)[1] for s in exp.series}
    assert nonzero_budget(students["top_k"]) == nonzero_budget(students["band"]) == 3
    assert nonzero_budget(students["softmax"]) == exp.N
    X = draw_sequences(students["softmax"], 200, 0)
    for spec in students.values():
        nonzero = (row_gates(spec, draw_params(spec, 1, scale=2.0), X) > 0).sum(axis=1)
        assert np.all(nonzero == nonzero_budget(spec)), spec.gate.name
    assert len({s.data_index for s in exp.series}) == 1, "the three students are fitted on the same samples"


def test_a_tiny_attention_sweep_writes_the_sweep_columns_resumes_and_reports(tmp_path):
    exp = parse_config(TINY)
    out = run_sweep(exp, tmp_path / "res", progress=False)
    rows = store.load_results(out)
    assert list(rows.columns) == list(COLUMNS)
    assert rows.groupby(["series", "n", "replicate"]).ngroups == 2 * 2 * 2
    assert set(rows.quantity) == set(ae.FIT_QUANTITIES)
    over = rows[(rows.label == "top2_over") & (rows.quantity == "param:W:max")]
    assert (over.cell_size == 2).all() and (over.true_atom == 0).all(), "both student heads in the one cell"
    assert not rows.duplicated(["series", "n", "replicate", "quantity", "true_atom"]).any()
    run_sweep(exp, out, progress=False)
    pd.testing.assert_frame_equal(rows, store.load_results(out))
    store.shard_paths(out)[0].unlink()
    run_sweep(exp, out, progress=False)
    again = store.load_results(out)
    pd.testing.assert_frame_equal(rows.drop(columns="runtime_s"), again.drop(columns="runtime_s"))

    rates = rate_table(rows, exp)
    exact = rates[(rates.label == "softmax") & (rates.quantity == "param:W:max")].iloc[0]
    assert exact.predicted_rate == "n^-1/2" and exact.verdict == "inconclusive", "2 replicates decide nothing"
    over = rates[rates.label == "top2_over"].set_index("quantity").predicted_rate
    assert over["regression_l2"] == "sqrt(log n / n)" and over["param:W:mean"] == "no prediction"
    assert rates.certified_share.between(0, 1).all()
    _, paths = report(out, tmp_path / "fig", exp=exp)
    names = {p.name for p in paths}
    assert {"tiny_attention.png", "tiny_attention_rates.md", "tiny_attention_summary.csv",
            "tiny_attention_sample_complexity.csv"} <= names


def test_a_failed_attention_fit_is_a_row_with_its_reason(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise FloatingPointError("overflow in the test double")
    monkeypatch.setattr(ae, "fit_replicate", explode)
    rows = store.load_results(run_sweep(parse_config(with_(TINY, n=[30, 40])), tmp_path / "res", progress=False))
    assert (rows.status == "failed").all() and rows.value.isna().all()
    assert rows.reason.str.contains("FloatingPointError: overflow").all() and not rows.certified.any()


def test_doubling_leaves_softmax_rows_unchanged_doubles_sigmoid_row_sums_and_bounds_the_minus_log_n_ratio():
    N, d = 5, 2
    rng = np.random.default_rng(0)
    for kind in ("softmax", "sigmoid", "sigmoid_logn"):
        spec = AttentionSpec(N, d, attention_gate(kind, N), heads=2)
        doubled = AttentionSpec(2 * N, d, attention_gate(kind, 2 * N), heads=2)
        params = draw_params(spec, rng, scale=2.0)
        stats = ae.doubling_statistics(spec, doubled, params, draw_sequences(spec, 300, rng))
        if kind == "softmax":
            assert abs(stats["row_sum"] - 1) <= 1e-12 and abs(stats["sum_ratio_max"] - 1) <= 1e-12
            assert stats["output_change"] <= 1e-12
        elif kind == "sigmoid":
            assert abs(stats["sum_ratio"] - 2) <= 1e-12 and abs(stats["sum_ratio_max"] - 2) <= 1e-12
            assert abs(stats["row_sum_doubled"] - 2 * stats["row_sum"]) <= 1e-12 * stats["row_sum"]
        else:  # each token's 2 sigmoid(s - log 2N) / sigmoid(s - log N) lies in (1, 2)
            assert 1 < stats["sum_ratio"] <= stats["sum_ratio_max"] < 2


def test_doubling_rows_at_initialisation_follow_the_length(tmp_path):
    """Random heads. b = 0: the N - 1 scores x_i^T W x_j, j != i, are symmetric about 0, so the row sum's mean
    is N/2 within 1/2 (the row's own token); a sequence's sum has sd <= N/2 (correlated terms in (0, 1)),
    so the mean over m sequences is within 4 N / (2 sqrt(m)) more. b = -log N: the sum stays of order 1 while
    N grows eightfold (a coarse check; the quick run measures 0.95 to 1.72)."""
    m = 200
    cfg = with_(DOUBLING, lengths=[4, 32], sequences=m, series=[
        {"label": "b0", "teacher": {"gate": "sigmoid"}}, {"label": "logn", "teacher": {"gate": "sigmoid_logn"}}])
    rows = store.load_results(run_sweep(parse_config(cfg), tmp_path / "res", progress=False))
    sums = rows[rows.quantity == "row_sum:init"].groupby(["label", "n"]).value.median()
    for N in (4, 32):
        assert abs(sums["b0", N] - N / 2) <= 0.5 + 4 * N / (2 * np.sqrt(m))
        assert 0.25 < sums["logn", N] < 4
    assert set(rows.quantity) == set(ae.DOUBLING_QUANTITIES) and (rows.status == "ok").all()


@pytest.mark.parametrize("change,message", [
    (dict(teacher={"gate": "banded"}), r"'series\[0\].teacher.gate' = 'banded' is not allowed: choose one of"),
    (dict(series=[{"teacher": {"gate": "top_k", "top_k": 4}}]),
     r"'series\[0\].teacher.top_k' = 4 is not allowed: expected 1 <= top_k <= N = 3"),
    (dict(series=[{"teacher": {"gate": "band", "width": 3}}]),
     r"'series\[0\].teacher.width' = 3 is not allowed: expected 0 <= width <= N - 1 = 2"),
    (dict(series=[{"teacher": {"gate": "top_k"}}]), r"'series\[0\].teacher.top_k' = None .*gate = 'top_k'"),
    (dict(series=[{"teacher": {"gate": "softmax", "rank": 2}}]),
     r"'series\[0\].teacher.rank' = 2 is not allowed: expected 1 <= rank <= d = 1"),
    (dict(series=[{"teacher": {"gate": "softmax"}, "student": {"d": 2}}]),
     r"'series\[0\].student.d' = 2 is not allowed: expected the teacher's token dimension d = 1"),
    (dict(series=[{"teacher": {"gate": "softmax", "heads": 2}, "student": {"heads": 1}}]),
     r"'series\[0\].student.heads' = 1 is not allowed: expected heads >= the teacher's 2"),
    (dict(row=3), r"'row' = 3 is not allowed: expected a token index, 0 <= row <= 2"),
    (dict(n=[5, 60], series=[{"teacher": {"gate": "softmax"}, "student": {"heads": 3}}]),
     r"every n must exceed the 6 parameters"),
    (dict(mode="fitting"), r"'mode' = 'fitting' is not allowed"),
    (dict(lengths=[4, 8]), r"'lengths' = \[4, 8\] is not allowed: not a key of a fit experiment"),
    (dict(analysis={"quantities": ["loss"]}), r"'analysis.quantities' = 'loss' is not allowed: a fit experiment "
                                              r"stores regression_l2"),
    (dict(analysis={"quantities": ["regression_l2"] * 5}), r"at most 4 \(one panel each"),
    (dict(search={"rounds": 2}), r"unknown config key\(s\) \['rounds'\] in search"),
    (dict(series=[{"teacher": "softmax"}]), r"'series\[0\].teacher' = 'softmax' is not allowed: expected a table"),
    (dict(kind="attn"), r"'kind' = 'attn' is not allowed: choose 'moe' \(the default\) or 'attention'"),
])
def test_bad_attention_configs_are_refused_at_load_naming_the_field(change, message):
    cfg = with_(TINY, **change)
    if "teacher" in change:
        cfg["series"] = [{"label": "one"}]
    with pytest.raises(ValueError, match=message):
        parse_config(cfg)


def test_a_doubling_config_refuses_fit_keys_and_students():
    with pytest.raises(ValueError, match=r"'student' = '\(in a series\)' is not allowed: not a key of a doubling"):
        parse_config(with_(DOUBLING, series=[{"student": {"heads": 2}}]))
    with pytest.raises(ValueError, match=r"'n' = \[10, 20\] is not allowed: not a key of a doubling experiment"):
        parse_config(with_(DOUBLING, n=[10, 20]))
