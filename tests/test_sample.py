"""Designs and data generators."""

import numpy as np
import pytest

import moe_sim as ms


@pytest.mark.parametrize("design", ["uniform", "equispaced", "truncated_normal"])
def test_sampling_is_bit_identical_for_equal_seeds(sigmoid_tanh, design):
    spec, G = sigmoid_tanh
    X1, y1 = ms.sample(spec, G, n=500, rng=np.random.SeedSequence(42), design=design)
    X2, y2 = ms.sample(spec, G, n=500, rng=np.random.SeedSequence(42), design=design)
    assert X1.tobytes() == X2.tobytes() and y1.tobytes() == y2.tobytes()
    _, y3 = ms.sample(spec, G, n=500, rng=43, design=design)
    assert not np.array_equal(y1, y3)


@pytest.mark.parametrize("design", ["uniform", "truncated_normal"])
def test_designs_stay_in_their_box(design):
    X = ms.draw_design(design, 4000, 3, rng=0, bounds=([-1, 0, 2], [1, 0.5, 3]))
    assert X.shape == (4000, 3)
    assert np.all(X >= [-1, 0, 2]) and np.all(X <= [1, 0.5, 3])


def test_uniform_design_moments():
    n = 20000
    X = ms.draw_design("uniform", n, 1, rng=1, bounds=(0.0, 1.0))
    # mean of U(0,1) is 1/2 with sd sqrt(1/12)/sqrt(n): four standard errors
    np.testing.assert_allclose(X.mean(), 0.5, atol=4 * np.sqrt(1 / 12 / n))


def test_equispaced_design():
    np.testing.assert_array_equal(ms.draw_design("equispaced", 5, 1, bounds=(0, 1))[:, 0], np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="needs d=1"):
        ms.draw_design("equispaced", 5, 2)


def test_regression_noise_has_the_requested_scale(sigmoid_tanh):
    spec, G = sigmoid_tanh
    n, sd = 20000, 0.3
    X, y = ms.sample(spec, G, n=n, rng=5, noise_sd=sd)
    resid = y - ms.regression_function(spec, G, X)
    # the sample variance of n normals has relative sd sqrt(2/n)
    np.testing.assert_allclose(resid.var(), sd**2, rtol=4 * np.sqrt(2 / n))
    np.testing.assert_allclose(resid.mean(), 0.0, atol=4 * sd / np.sqrt(n))


def test_gaussian_moe_latent_experts(paper_a):
    """With X fixed, y is a two-component mixture with the gate probabilities as weights."""
    spec, G = paper_a
    n = 40000
    x0 = 0.32  # softmax of (25 x - 8, 0) gives the first expert probability 1/2 near x = 0.32
    rng = np.random.default_rng(9)
    _, y = ms.sample(spec, G, n=n, rng=rng, design="uniform", bounds=(x0, x0 + 1e-12))
    p1 = 1 / (1 + np.exp(-(25 * x0 - 8)))
    means = G.expert[:, 0] + G.expert[:, 1] * x0
    # experts at x0: 8.6 and 1.4, far apart relative to their sds (0.3, 0.4): classify by the midpoint
    share = np.mean(y > means.mean())
    np.testing.assert_allclose(share, p1, atol=4 * np.sqrt(p1 * (1 - p1) / n))
    np.testing.assert_allclose(y[y > means.mean()].std(), 0.3, rtol=0.05)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n": 0}, "n must be a positive integer"),
        ({"n": 10, "design": "sobol"}, "design='sobol'"),
        ({"n": 10, "noise_sd": -1.0}, "noise_sd"),
        ({"n": 10, "bounds": (1.0, 0.0)}, "bounds"),
    ],
)
def test_bad_sampling_arguments(sigmoid_tanh, kwargs, match):
    spec, G = sigmoid_tanh
    with pytest.raises(ValueError, match=match):
        ms.sample(spec, G, rng=0, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": True}, "n must be a positive integer up to 1e\\+08, got True"),
    ({"n": 10**12}, "n must be a positive integer up to 1e\\+08, got 1000000000000"),
    ({"n": 10, "noise_sd": "0.1"}, "noise_sd must be a finite number >= 0, got '0.1'"),
    ({"n": 10, "noise_sd": float("nan")}, "noise_sd must be a finite number >= 0, got nan"),
    ({"n": 10, "rng": "abc"}, "rng must be None, a non-negative int seed, a SeedSequence or a Generator, got 'abc'"),
    ({"n": 10, "rng": -1}, "rng must be None, a non-negative int seed"),
])
def test_bad_arguments_name_the_argument_and_value(sigmoid_tanh, kwargs, match):
    spec, G = sigmoid_tanh
    with pytest.raises(ValueError, match=match):
        ms.sample(spec, G, **{"rng": 0, **kwargs})


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n must be a positive integer, got 0"),
    ({"noise_sd": -0.1}, "noise_sd must be a finite number >= 0, got -0.1"),
    ({"noise_sd": "0.1"}, "noise_sd must be a finite number >= 0, got '0.1'"),
    ({"n_design": 2.5}, "n_design must be a positive integer, got 2.5"),
])
def test_asymptotic_sd_checks_its_arguments(sigmoid_tanh, kwargs, match):
    spec, G = sigmoid_tanh
    with pytest.raises(ValueError, match=match):
        ms.asymptotic_sd(spec, G, **{"n": 1000, "noise_sd": 0.1, **kwargs})


@pytest.mark.parametrize("kwargs, match", [
    ({"sigma": "0.1"}, "sigma must be a finite number > 0, got '0.1'"),
    ({"deltas": [0.01, float("nan")]}, "every delta must be a finite number > 0, got nan"),
    ({"n_range": (1e5, 1e3)}, "n_range must be \\(n_min, n_max\\) with n_min < n_max, got \\(100000.0, 1000.0\\)"),
    ({"n_range": (0, 1e3)}, "n_range\\[0\\] must be a finite number > 0, got 0"),
    ({"visible_delta": 0}, "visible_delta must be a finite number > 0, got 0"),
    ({"n": True}, "n must be a positive integer, got True"),
])
def test_profile_checks_its_arguments(kwargs, match):
    spec = ms.MoESpec(gate="softmax", expert="tanh")
    G = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[2.0], [0.0]], expert=[[0.5, 1.0], [-0.5, -1.0]])
    with pytest.raises(ValueError, match=match):
        ms.profile(spec, G, **kwargs)


@pytest.mark.parametrize("r, match", [
    (-1, "r must be a finite number > 0, got -1"),
    ("4", "r must be a finite number > 0, got '4'"),
    ({1: 4}, "keys must be integers >= 2, got \\[1\\]"),
    ({2: float("nan")}, "r\\[2\\] must be a finite number > 0, got nan"),
])
def test_predicted_rates_checks_r(sigmoid_tanh, r, match):
    spec = ms.MoESpec(gate="softmax", expert="tanh")
    G = ms.MixingMeasure(bias=[0.0, 0.0], gate=[[2.0], [0.0]], expert=[[0.5, 1.0], [-0.5, -1.0]])
    with pytest.raises(ValueError, match=match):
        ms.predicted_rates(spec, G, k=3, r=r)
