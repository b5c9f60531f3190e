"""f_G, the Gaussian MoE density and their analytic gradients."""

import itertools
import zlib

import numpy as np
import pytest

import moe_sim as ms
from moe_sim.model import CHUNK, Features, forward, regression_vjp
from tests.conftest import random_measure

SCORES = ["linear", "quadratic", "partial_quadratic"]
GATES = sorted(ms.GATES)  # every registered gate gets the gradient checks
EXPERTS = sorted(ms.EXPERTS)  # every registered family, the scaled ones eta_2 act(eta_1 x) included
SCALED = [name for name in EXPERTS if ms.EXPERTS[name].scaled]


def _spec(gate, score, expert, likelihood="regression"):
    d = 1 if expert == "polynomial" else 2
    return ms.MoESpec(gate=gate, score=score, expert=expert, d=d, likelihood=likelihood, degree=3,
                      temperature=1.5)


def _numeric_jacobian(fun, G: ms.MixingMeasure, eps=1e-6):
    """Central differences of fun(G) (an (n,) array) in every parameter, in MixingMeasure.to_vector order."""
    theta = G.to_vector()
    k, q, p = G.k, G.gate.shape[1], G.expert.shape[1]
    cols = []
    for idx in range(theta.size):
        step = np.zeros_like(theta)
        step[idx] = eps
        plus = ms.MixingMeasure.from_vector(theta + step, k, q, p, G.var is not None)
        minus = ms.MixingMeasure.from_vector(theta - step, k, q, p, G.var is not None)
        cols.append((fun(plus) - fun(minus)) / (2 * eps))
    return np.stack(cols)  # (n_params, n)


def _flatten(grad: dict, names) -> np.ndarray:
    n = grad["bias"].shape[-1]
    return np.concatenate([grad[name].reshape(-1, n) for name in names])


@pytest.mark.parametrize("gate,score,expert", list(itertools.product(GATES, SCORES, EXPERTS)))
def test_regression_gradient_matches_finite_differences(gate, score, expert):
    spec = _spec(gate, score, expert)
    rng = np.random.default_rng(zlib.crc32(f"{gate}{score}{expert}".encode()))
    G = random_measure(spec, 3, rng)
    X = ms.draw_design("uniform", 7, spec.d, rng)
    analytic = _flatten(ms.regression_gradient(spec, G, X), ["bias", "gate", "expert"])
    numeric = _numeric_jacobian(lambda H: ms.regression_function(spec, H, X), G)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("gate,expert", list(itertools.product(GATES, ["tanh", "linear", "scaled_tanh"])))
def test_vjp_is_the_contracted_jacobian(gate, expert):
    spec = _spec(gate, "quadratic", expert)
    G = random_measure(spec, 4, 1)
    X = ms.draw_design("uniform", 50, spec.d, 2)
    v = np.random.default_rng(3).normal(size=50)
    feats = Features.of(spec, X)
    vjp = feats.unstack(regression_vjp(spec, feats, forward(spec, G, feats), v))
    jac = _flatten(ms.regression_gradient(spec, G, X), ["bias", "gate", "expert"])
    np.testing.assert_allclose(vjp, jac @ v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec,basis_rows", [
    (ms.MoESpec(gate="sigmoid", expert="tanh"), 2),  # [1; x], shared by the gate and the experts
    (ms.MoESpec(gate="softmax", expert="relu", temperature=2.0), 3),  # [1; x / T; x]
    (ms.MoESpec(gate="softmax", expert="polynomial", degree=3), 4),  # [1; x; x^2; x^3]
    (ms.MoESpec(gate="sigmoid", score="quadratic", expert="gelu", d=2), 6),  # [1; x1^2; x1 x2; x2^2; x1; x2]
])
def test_stacked_basis_shares_rows_and_reproduces_logits_and_vjp(spec, basis_rows):
    G = random_measure(spec, 3, 1)
    X = ms.draw_design("uniform", 40, spec.d, 2)
    feats = Features.of(spec, X)
    assert feats.basis.shape[0] == basis_rows
    zu = feats.stack(G) @ feats.basis
    np.testing.assert_allclose(zu[:3], G.bias[:, None] + G.gate @ feats.phi, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(zu[3:], G.expert @ feats.psi, rtol=1e-13, atol=1e-13)
    v = np.random.default_rng(3).normal(size=40)
    vjp = feats.unstack(regression_vjp(spec, feats, forward(spec, G, feats), v))
    jac = _flatten(ms.regression_gradient(spec, G, X), ["bias", "gate", "expert"])
    np.testing.assert_allclose(vjp, jac @ v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("expert", SCALED)
def test_scaled_family_is_eta2_act_eta1_x(expert):
    """eta_2 act(eta_1^T x) by hand, with no inner bias, through the stacked basis; eta_2 sits in the ones
    row's column of the expert rows and stays out of the pre-activation."""
    spec = ms.MoESpec(gate="softmax", score="quadratic", expert=expert, d=2)
    assert spec.p == 3 and not spec.expert_family.affine
    G = random_measure(spec, 3, 5)
    X = ms.draw_design("uniform", 30, 2, 6)
    feats = Features.of(spec, X)
    assert feats.expert_rows[0] == 0 and feats.psi.shape == (2, 30)
    act = ms.EXPERTS[expert.removeprefix("scaled_")].activation
    fw = forward(spec, G, feats)
    np.testing.assert_allclose(fw.h, G.expert[:, :1] * act(G.expert[:, 1:] @ X.T), rtol=1e-13, atol=1e-15)
    g = np.exp(G.bias[:, None] + G.gate @ feats.phi)
    np.testing.assert_allclose(fw.f, (g / g.sum(axis=0) * fw.h).sum(axis=0), rtol=1e-12)


def test_features_equal_to_the_ones_row_keep_their_own_parameters():
    """At x = 1 every feature equals the bias's row of ones; each parameter still gets its own column."""
    spec = ms.MoESpec(gate="sigmoid", expert="tanh")
    G = random_measure(spec, 2, 4)
    X = np.ones((5, 1))
    feats = Features.of(spec, X)
    assert feats.gate_rows == (0, 1) and feats.expert_rows == (0, 1)
    v = np.arange(5.0)
    vjp = feats.unstack(regression_vjp(spec, feats, forward(spec, G, feats), v))
    numeric = _numeric_jacobian(lambda H: ms.regression_function(spec, H, X), G)
    np.testing.assert_allclose(vjp, numeric @ v, rtol=1e-6, atol=1e-8)
    # a scaled family: eta_1's row x = 1 shares the gate's x row, not the ones row that holds eta_2
    scaled = ms.MoESpec(gate="sigmoid", expert="scaled_tanh")
    feats = Features.of(scaled, X)
    assert feats.expert_rows == (0, 1) and feats.basis.shape[0] == 2
    vjp = feats.unstack(regression_vjp(scaled, feats, forward(scaled, G, feats), v))
    numeric = _numeric_jacobian(lambda H: ms.regression_function(scaled, H, X), G)
    np.testing.assert_allclose(vjp, numeric @ v, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("score,expert",
                         list(itertools.product(SCORES, ["linear", "polynomial", "tanh", "scaled_gelu"])))
def test_log_density_gradient_matches_finite_differences(score, expert):
    spec = _spec("softmax", score, expert, likelihood="gaussian")
    rng = np.random.default_rng(7)
    G = random_measure(spec, 3, rng)
    X = ms.draw_design("uniform", 6, spec.d, rng)
    y = rng.normal(size=6)
    analytic = _flatten(ms.log_density_gradient(spec, G, X, y), ["bias", "gate", "expert", "var"])
    numeric = _numeric_jacobian(lambda H: ms.log_density(spec, H, X, y), G)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_log_density_integrates_to_one(paper_a):
    spec, G = paper_a
    ys = np.linspace(-40, 40, 40001)
    X = np.full((ys.size, 1), 0.3)
    dens = np.exp(ms.log_density(spec, G, X, ys))
    np.testing.assert_allclose(np.trapezoid(dens, ys), 1.0, rtol=1e-8)


def test_softmax_is_stable_for_huge_logits():
    spec = ms.MoESpec(gate="softmax", expert="constant")
    G = ms.MixingMeasure(bias=[1000.0, 0.0], gate=[[0.0], [0.0]], expert=[[2.0], [5.0]])
    np.testing.assert_allclose(ms.regression_function(spec, G, np.zeros((3, 1))), 2.0)


def test_chunked_evaluation_equals_one_pass(sigmoid_tanh):
    spec, G = sigmoid_tanh
    X = ms.draw_design("uniform", 2 * CHUNK + 17, 1, 0)
    whole = forward(spec, G, Features.of(spec, X)).f
    np.testing.assert_allclose(ms.regression_function(spec, G, X), whole, rtol=0, atol=1e-15)


def test_regression_function_values_by_hand():
    """Two sigmoid atoms, tanh experts, at x = 0.5: computed term by term."""
    spec = ms.MoESpec(gate="sigmoid", expert="tanh")
    G = ms.MixingMeasure(bias=[0.1, -0.2], gate=[[1.0], [2.0]], expert=[[0.3, 1.0], [-0.4, 2.0]])
    sig = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
    expected = sig(0.6) * np.tanh(0.8) + sig(0.8) * np.tanh(0.6)
    np.testing.assert_allclose(ms.regression_function(spec, G, [0.5]), [expected], rtol=1e-14)


def test_quadratic_feature_order():
    """Quadratic gate columns: x1^2, x1 x2, x2^2, then x1, x2."""
    spec = ms.MoESpec(gate="sigmoid", score="quadratic", expert="constant", d=2)
    x = np.array([[2.0, 3.0]])
    for col, value in enumerate([4.0, 6.0, 9.0, 2.0, 3.0]):
        gate = np.zeros((1, 5))
        gate[0, col] = 1.0
        G = ms.MixingMeasure(bias=[0.0], gate=gate, expert=[[1.0]])
        np.testing.assert_allclose(ms.regression_function(spec, G, x), 1 / (1 + np.exp(-value)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"gate": "relu"}, "gate='relu'"),
        ({"score": "cubic"}, "score='cubic'"),
        ({"expert": "swish"}, "expert='swish'"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"d": 0}, "d must be"),
        ({"expert": "polynomial", "d": 2}, "d must be 1"),
        ({"gate": "sigmoid", "likelihood": "gaussian"}, "not allowed with gate='sigmoid'"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": "1"}, "temperature must be a positive finite number, got '1'"),
        ({"d": True}, "d must be a positive integer, got True"),
    ],
)
def test_bad_spec_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ms.MoESpec(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"bias": [], "gate": np.zeros((0, 1)), "expert": np.zeros((0, 2))}, "at least one atom"),
        ({"bias": [0.0, 1.0], "gate": [[1.0]], "expert": [[0, 1], [0, 1]]}, "gate has 1 atoms"),
        ({"bias": [0.0], "gate": [[1.0]], "expert": [[0, 1]], "var": [-1.0]}, "var must be positive"),
        ({"bias": [np.nan], "gate": [[1.0]], "expert": [[0, 1]]}, "bias contains NaN"),
        ({"bias": [0.0], "gate": [[np.inf]], "expert": [[0, 1]]}, "gate contains NaN or inf"),
        ({"bias": [0.0], "gate": [1.0], "expert": [[0, 1]]}, "gate must have 2 dimension"),
    ],
)
def test_bad_measure_is_rejected_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ms.MixingMeasure(**kwargs)


def test_measure_shape_must_fit_the_spec(sigmoid_tanh):
    spec, G = sigmoid_tanh
    wide = ms.MixingMeasure(bias=G.bias, gate=np.zeros((2, 2)), expert=G.expert)
    with pytest.raises(ValueError, match="gate has 2 columns"):
        ms.regression_function(spec, wide, np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"X must have shape \(n, 1\)"):
        ms.regression_function(spec, G, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="var is required"):
        ms.log_density(ms.MoESpec(likelihood="gaussian"), ms.MixingMeasure([0.0], [[0.0]], [[0.0, 1.0]]),
                       [0.0], [0.0])


def test_vector_round_trip(paper_a):
    _, G = paper_a
    back = ms.MixingMeasure.from_vector(G.to_vector(), 2, 1, 2, has_var=True)
    for name, value in G.blocks().items():
        np.testing.assert_array_equal(back.blocks()[name], value)
    again = ms.MixingMeasure.from_dict(G.to_dict())
    np.testing.assert_array_equal(again.to_vector(), G.to_vector())


def test_custom_expert_family_runs_through_the_model():
    """A registered family (here softplus) gets gradients from its own derivative."""
    softplus = ms.ExpertFamily(
        name="softplus_test",
        activation=lambda u: np.logaddexp(0.0, u),
        derivative=lambda u, h: 1 / (1 + np.exp(-u)),
        features=lambda X, degree: np.vstack([np.ones(len(X)), X.T]),
        n_params=lambda d, degree: d + 1,
    )
    spec = ms.MoESpec(gate="softmax", expert=softplus, d=1)
    G = random_measure(spec, 2, 0)
    X = ms.draw_design("uniform", 5, 1, 0)
    analytic = _flatten(ms.regression_gradient(spec, G, X), ["bias", "gate", "expert"])
    numeric = _numeric_jacobian(lambda H: ms.regression_function(spec, H, X), G)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_scaled_family_must_not_claim_an_intercept():
    with pytest.raises(ValueError, match="scaled=True .* got affine=True"):
        ms.ExpertFamily("bad", np.tanh, lambda u, h: 1 - h * h, lambda X, degree: X.T, lambda d, degree: d + 1,
                        scaled=True)


def test_fast_sigmoid_matches_expit():
    from scipy.special import expit

    from moe_sim.families import sigmoid

    z = np.linspace(-60, 60, 100001)
    np.testing.assert_allclose(sigmoid(z), expit(z), rtol=0, atol=4.5e-16)  # two ulps of 1
    np.testing.assert_allclose(sigmoid(0.3), expit(0.3), rtol=1e-15)


def test_a_regression_measure_takes_no_variances():
    spec = ms.MoESpec(gate="sigmoid", expert="tanh")
    G = ms.MixingMeasure([0.5, -0.5], [[3.0], [-2.0]], [[0.2, 2.0], [-0.5, -1.5]], var=[0.1, 0.1])
    with pytest.raises(ValueError, match=r"G.var = \[0.1, 0.1\] is not allowed for likelihood='regression'"):
        ms.sample(spec, G, 50, rng=0)
