"""Gate objects: their rules (weights and inverse, translation, regimes, likelihoods) and a new gate as one
class, checked through the model's gradients."""

from dataclasses import dataclass

import numpy as np
import pytest

import moe_sim as ms
from moe_sim.gates import Gate, Softmax


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_bias_of_inverts_the_weight_map(name):
    gate = ms.GATES[name]
    bias = np.linspace(-3.0, 3.0, 7)
    np.testing.assert_allclose(gate.bias_of(gate.weight(bias)), bias, rtol=0, atol=1e-12)


def test_softmax_translation_leaves_the_regression_function_unchanged():
    spec = ms.MoESpec(gate="softmax", expert="tanh")
    assert spec.gate_family.translation_invariant
    G = ms.MixingMeasure([0.3, -1.0, 2.0], [[1.0], [-2.0], [0.5]], [[0.1, 1.0], [0.2, -1.0], [0.0, 2.0]])
    X = np.linspace(-1, 1, 11)
    np.testing.assert_allclose(ms.regression_function(spec, G.translate(1.7, np.array([-0.4])), X),
                               ms.regression_function(spec, G, X), rtol=1e-13)


def test_sigmoid_regimes_and_softmax_has_none():
    G = ms.MixingMeasure([0.0, 1.0], [[0.0], [2.0]], [[1.0, 1.0], [0.0, 1.0]])
    assert ms.GATES["sigmoid"].regime(G) == 1
    assert ms.GATES["sigmoid"].regime(G.subset([1])) == 2
    assert ms.GATES["softmax"].regime(G) is None


def test_a_gate_states_the_likelihoods_it_allows():
    with pytest.raises(ValueError, match="likelihood='gaussian' is not allowed with gate='sigmoid'"):
        ms.MoESpec(gate="sigmoid", likelihood="gaussian")
    assert ms.MoESpec(gate="softmax", likelihood="gaussian").gate_name == "softmax"


@dataclass(frozen=True)
class _TemperedSoftmax(Softmax):
    """A test gate written as one class: softmax of 2 z, so its pullback carries the factor 2."""

    name = "tempered_softmax_test"

    def weight(self, bias):
        return np.exp(2.0 * bias)

    def bias_of(self, weight):
        return 0.5 * np.log(weight)

    def gates(self, z, scratch=None):
        z *= 2.0
        return super().gates(z) if scratch is None else super().gates(z, scratch)

    def logit_pullback(self, fw, gv, out):
        super().logit_pullback(fw, gv, out)
        out *= 2.0
        return out


def test_a_new_gate_is_one_class_and_gets_the_gradients_right():
    gate = _TemperedSoftmax()
    spec = ms.MoESpec(gate=gate, expert="tanh")
    assert spec.gate_name == "tempered_softmax_test" and isinstance(spec.gate_family, Gate)
    rng = np.random.default_rng(0)
    G = ms.MixingMeasure(rng.normal(size=3), rng.normal(size=(3, 1)), rng.normal(size=(3, 2)))
    X = np.linspace(-1, 1, 9)
    # the regression function equals a softmax fit with doubled gate parameters
    doubled = ms.MixingMeasure(2 * G.bias, 2 * G.gate, G.expert)
    np.testing.assert_allclose(ms.regression_function(spec, G, X),
                               ms.regression_function(ms.MoESpec(expert="tanh"), doubled, X), rtol=1e-13)
    grad = ms.regression_gradient(spec, G, X)
    eps = 1e-6
    for i in range(3):
        up, down = G.bias.copy(), G.bias.copy()
        up[i] += eps
        down[i] -= eps
        numeric = (ms.regression_function(spec, ms.MixingMeasure(up, G.gate, G.expert), X)
                   - ms.regression_function(spec, ms.MixingMeasure(down, G.gate, G.expert), X)) / (2 * eps)
        np.testing.assert_allclose(grad["bias"][i], numeric, rtol=1e-6, atol=1e-9)


def test_register_gate_rejects_what_is_not_a_gate():
    with pytest.raises(ValueError, match="gate must be a Gate"):
        ms.register_gate("softmax")
