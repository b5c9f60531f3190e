"""Experiment configs: parsing, quick overrides, series expansion, data sharing and error messages."""

import copy
from pathlib import Path

import numpy as np
import pytest

from moe_sim.config import Series, load_config, parse_config
from moe_sim.sweep import _misses_null_free_space, _unbounded_blocks, needs_reference

BASE = {
    "name": "tiny",
    "model": {"gate": "softmax", "expert": "tanh"},
    "truth": {"bias": [0.0, 0.0], "gate": [[2.0], [0.0]], "expert": [[0.5, 1.0], [-0.5, -1.0]]},
    "k": [2, 3],
    "n": [100, 200, 400],
    "replicates": 4,
    "seed": 7,
    "quick": {"n": [50, 100], "replicates": 2, "estimator": {"n_starts": 1}},
}


def with_(**changes):
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return raw


def test_single_series_expands_over_k():
    exp = parse_config(BASE)
    assert [s.name for s in exp.series] == ["default/k=2", "default/k=3"]
    assert exp.n_grid == (100, 200, 400)
    assert {s.data_index for s in exp.series} == {0}, "same truth and model: the k series share data"


def test_quick_overrides_merge_tables():
    raw = with_(estimator={"method": "lse", "init": "kmeans", "n_starts": 3})
    exp = parse_config(raw, quick=True)
    assert exp.name == "tiny_quick" and exp.n_grid == (50, 100) and exp.replicates == 2
    assert exp.series[0].n_starts == 1 and exp.series[0].init == "kmeans"
    assert parse_config(raw).series[0].n_starts == 3


def test_init_table_gives_counts_per_strategy():
    exp = parse_config(with_(estimator={"init": {"kmeans": 2, "random": 6}}))
    assert exp.series[0].init == {"kmeans": 2, "random": 6}


def test_geometric_grid():
    exp = parse_config(with_(n={"start": 100, "stop": 10000, "num": 3}))
    assert exp.n_grid == (100, 1000, 10000)


def test_series_override_and_data_sharing():
    sig_truth = {"bias": [0.0, 0.0], "gate": [[2.0], [-2.0]], "expert": [[0.5, 1.0], [-0.5, -1.0]]}
    raw = with_(series=[
        {"label": "softmax", "data": "shared"},
        {"label": "sigmoid", "model": {"gate": "sigmoid"}, "truth": sig_truth, "data": "shared", "k": 2},
        {"label": "other", "model": {"gate": "sigmoid"}, "truth": sig_truth, "k": 2},
    ])
    exp = parse_config(raw)
    assert [s.name for s in exp.series] == ["softmax/k=2", "softmax/k=3", "sigmoid/k=2", "other/k=2"]
    assert [s.data_index for s in exp.series] == [0, 0, 0, 1]
    assert exp.series[2].spec.gate == "sigmoid"
    np.testing.assert_allclose(exp.series[2].truth.gate, [[2.0], [-2.0]])


def test_shared_data_needs_the_same_regression_function():
    bad = {"bias": [0.0, 0.0], "gate": [[2.0], [-1.0]], "expert": [[0.5, 1.0], [-0.5, -1.0]]}
    raw = with_(series=[{"label": "a", "data": "x"},
                        {"label": "b", "model": {"gate": "sigmoid"}, "truth": bad, "data": "x"}])
    with pytest.raises(ValueError, match="series\\[1\\].data.*different regression functions"):
        parse_config(raw)


@pytest.mark.parametrize("changes, key", [
    ({"replicates": 0}, "'replicates' = 0"),
    ({"n": [100, 50]}, "'n' = \\[100, 50\\]"),
    ({"design": "grid"}, "'design' = 'grid'"),
    ({"loss": "D9"}, "'loss' = 'D9'"),
    ({"k": 1}, "'series\\[0\\].k' = 1"),
    ({"estimator": {"method": "em"}}, "'series\\[0\\].estimator.method' = 'em'"),
    ({"seed": -1}, "'seed' = -1"),
    ({"estimator": {"init": {"random": 0}}}, "'series\\[0\\].estimator.init.random' = 0"),
    ({"estimator": {"init": {"random": 4}, "n_starts": 2}}, "'series\\[0\\].estimator.n_starts' = 2"),
    ({"nosie_sd": 0.1}, "unknown config key\\(s\\) \\['nosie_sd'\\]"),
    ({"model": {"gate": "softmax", "expert": "tanhh"}}, "series\\[0\\].model.*expert='tanhh'"),
    ({"truth": {"bias": [0.0], "gate": [[1.0, 2.0]], "expert": [[0.0, 1.0]]}}, "series\\[0\\].truth"),
    # issue 12: caught here, before anything is written
    ({"bounds": [1.0, -1.0]}, "'bounds' = \\[1.0, -1.0\\] .*low < high"),
    ({"bounds": ["a", 1.0]}, "'bounds' = \\['a', 1.0\\] .*finite numbers"),
    ({"bounds": [[-1.0, 0.0], [1.0, 1.0]]}, "'bounds' = .*length-1 lists"),
    ({"n": [200]}, "'n' = \\[200\\] .*at least two integers"),
    ({"n": {"start": 100, "stop": 100.4, "num": 3}}, "at least two sample sizes"),
    ({"n": {"start": "1e3", "stop": 1e4, "num": 3}}, "'n' = .*expected numbers with 2 <= start < stop"),
    ({"n": [200, 10_000_000_000]}, "'n' = \\[200, 10000000000\\] .*above 1e\\+06 need allow_large_n = true"),
    ({"eval_n": 10_000_000_000}, "'eval_n' = 10000000000 .*allow_large_n"),
    ({"n": [3, 100]}, "'n' = \\[3, 100\\] .*exceed the 12 parameters of series default/k=3"),
    ({"reference": {"n_strats": 3}}, "unknown config key\\(s\\) \\['n_strats'\\] in reference; allowed: .*n_starts"),
    ({"reference": {"n": "5000"}}, "'reference.n' = '5000' .*non-negative integer"),
    ({"reference": {"weight_min": -0.1}}, "'reference.weight_min' = -0.1 .*positive number"),
    ({"reference": {"design": "grid"}}, "'reference.design' = 'grid'"),
    ({"model": {"gate": "sigmoid", "expert": "tanh"}, "reference": {"bounds": [1, -1]}},
     "'reference.bounds' = \\[1, -1\\] .*low < high"),
    ({"analysis": {"quantities": ["loss", "param:expert:maxx"]}}, "'analysis.quantities' = 'param:expert:maxx'"),
    ({"analysis": {"target_quantity": "los"}}, "'analysis.target_quantity' = 'los'"),
    ({"truth": {**BASE["truth"], "var": [0.1, 0.1]}}, "'series\\[0\\].truth.var' = \\[0.1, 0.1\\] .*no variances"),
    ({"estimator": {"init": "kmean"}}, "'series\\[0\\].estimator.init': init='kmean' is not allowed"),
    ({"estimator": {"options": [1]}}, "'series\\[0\\].estimator.options' = \\[1\\] .*table of lse estimator options"),
    ({"estimator": {"options": {"tol": 1e-3, "ftol_n": 1e-6}}},
     "'series\\[0\\].estimator.options': estimator option\\(s\\) \\['ftol_n'\\] = \\[1e-06\\] not allowed"),
    ({"estimator": {"method": "em", "options": {"polish": "yes"}}}, "EM.polish = 'yes' is not allowed"),
    ({"estimator": {"options": {"search": {"hits": 0}}}}, "Search.hits = 0 is not allowed"),
    ({"estimator": {"options": {"expert_min": -0.1}}}, "'series\\[0\\].estimator.options': LeastSquares.expert_min = "
                                                       "-0.1 is not allowed"),
    ({"estimator": {"options": {"expert_min": 1.0, "bounds": {"expert": [-0.5, 0.5]}}}},
     "expert_min = 1.0 is not allowed with expert bounds \\[-0.5, 0.5\\]"),
    ({"model": {"gate": "sigmoid", "expert": "tanh"}, "reference": {"expert_min": 0.1},
      "estimator": {"options": {"expert_min": 0.2}}},
     "'series\\[0\\].estimator.options.expert_min' = 0.2 .*reference.expert_min = 0.1"),
    ({"estimator": {"init": "near_truth"}}, "'series\\[0\\].estimator.init' = 'near_truth' .*bias the rates"),
    ({"allow_large_n": "yes"}, "'allow_large_n' = 'yes'"),
    ({"target": "gbar"}, "'series\\[0\\].target' = 'gbar' .*auto, truth"),
    ({"model": {"gate": "sigmoid", "expert": "tanh"}, "target": "truth",
      "truth": {**BASE["truth"], "gate": [[2.0], [-2.0]]}}, "'series\\[0\\].loss' = 'auto' .*explicit loss kind"),
    ({"analysis": {"headline": [{"quantity": "los", "series": ["default"]}]}},
     "'analysis.headline\\[0\\].quantity' = 'los'"),
    ({"analysis": {"headline": [{"quantity": "loss", "series": ["sigmoid"]}]}},
     "'analysis.headline\\[0\\].series' = \\['sigmoid'\\] .*labels from \\['default'\\]"),
    ({"analysis": {"headline": [{"quantity": "loss", "series": [["default"]]}]}},
     "'analysis.headline\\[0\\].series' = \\[\\['default'\\]\\]"),
    ({"analysis": {"headline": [{"quantity": "loss", "series": ["default"], "atoms": 1}]}},
     "unknown config key\\(s\\) \\['atoms'\\] in analysis.headline\\[0\\]"),
    ({"analysis": {"headline": [{"quantity": "loss", "series": ["default"]}] * 5}},
     "'analysis.headline' = .*at most 4 panel"),
    ({"analysis": {"target_error": 0.1, "ratios": [["default", "other"]]}},
     "'analysis.ratios' = \\['default', 'other'\\] .*each fitted at one k"),
    ({"k": 3, "analysis": {"ratios": [["default", "default"]]}}, "'analysis.ratios' = .*two different series"),
    ({"noise_sd": float("inf")}, "'noise_sd' = inf"),
])
def test_errors_name_the_key_and_value(changes, key):
    with pytest.raises(ValueError, match=key):
        parse_config(with_(**changes))


def test_load_config_from_toml(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(
        'name = "tiny"\nn = [100, 200]\n[model]\ngate = "sigmoid"\nexpert = "linear"\n'
        '[truth]\nbias = [0.0]\ngate = [[0.0]]\nexpert = [[0.0, 1.0]]\n'
    )
    exp = load_config(path)
    assert exp.series[0].spec.gate == "sigmoid" and exp.series[0].k == 1
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("name = ")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "experiments").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_shipped_experiments_parse(path):
    full, quick = load_config(path), load_config(path, quick=True)
    assert full.name == path.stem and quick.name == f"{path.stem}_quick"
    assert quick.n_grid[-1] <= full.n_grid[-1] and quick.replicates <= full.replicates
    assert full.seed is not None, "shipped experiments are reproducible: they fix their seed"
    moe_series = [s for s in full.series + quick.series if isinstance(s, Series)]  # attention: no MoE fits
    assert not [s.name for s in moe_series if _unbounded_blocks(s)], "sigmoid fits are bounded"
    assert not [s.name for s in moe_series if _misses_null_free_space(s)], "over-specified sigmoid fits set expert_min"


def test_target_truth_measures_a_regime_2_sigmoid_fit_against_g_star():
    sigmoid = {"model": {"gate": "sigmoid", "expert": "tanh"}, "truth": {**BASE["truth"], "gate": [[2.0], [-2.0]]},
               "k": 3, "estimator": {"options": {"bounds": 20.0}}}
    auto, truth = parse_config(with_(**sigmoid)), parse_config(with_(**sigmoid, target="truth", loss="D1"))
    assert needs_reference(auto.series[0]) and not needs_reference(truth.series[0])
    assert auto.fingerprint() != truth.fingerprint(), "the target changes the rows"


def test_a_bad_headline_in_a_toml_fails_in_load_config(tmp_path):
    shipped = Path(__file__).parents[1] / "experiments" / "sigmoid_vs_softmax_same.toml"
    path = tmp_path / "bad_headline.toml"
    path.write_text(shipped.read_text().replace('quantity = "param:expert:worst"', 'quantity = "param:expert:top"'))
    with pytest.raises(ValueError, match="'analysis.headline\\[1\\].quantity' = 'param:expert:top'"):
        load_config(path)
    assert load_config(shipped).headline[1]["quantity"] == "param:expert:worst"


def test_large_n_runs_when_confirmed():
    exp = parse_config(with_(n=[200, 2_000_000], eval_n=3_000_000, allow_large_n=True))
    assert exp.n_grid == (200, 2_000_000) and exp.eval_n == 3_000_000
    assert exp.fingerprint() == parse_config(with_(n=[200, 2_000_000], eval_n=3_000_000, allow_large_n=True,
                                                   description="x")).fingerprint()


def test_a_misspelled_estimator_option_in_a_toml_fails_in_load_config(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text(
        'name = "typo"\nn = [100, 200]\n[model]\ngate = "sigmoid"\nexpert = "linear"\n'
        '[truth]\nbias = [0.0]\ngate = [[0.0]]\nexpert = [[0.0, 1.0]]\n'
        '[estimator]\noptions = { bounds = 5.0, max_itr = 100 }\n'
    )
    message = r"estimator option\(s\) \['max_itr'\] = \[100\] not allowed .*allowed: .*max_iter"
    with pytest.raises(ValueError, match=message):
        load_config(path)
