"""Shared fixtures: the truths of THEORY.md."""

import numpy as np
import pytest

import moe_sim as ms


@pytest.fixture
def paper_a():
    """Paper a's softmax Gaussian MoE (THEORY.md s4): d = 1, k* = 2."""
    spec = ms.MoESpec(gate="softmax", score="linear", expert="linear", d=1, likelihood="gaussian")
    G = ms.MixingMeasure(
        bias=[-8.0, 0.0], gate=[[25.0], [0.0]], expert=[[15.0, -20.0], [-5.0, 20.0]], var=[0.09, 0.16]
    )
    return spec, G


@pytest.fixture
def sigmoid_tanh():
    """A sigmoid-gated tanh-expert regression model, d = 1, k* = 2 (regime 2: both scores non-zero).

    Ill-conditioned on [-1, 1] (asymptotic sds of order 10 at n = 1000, sigma = 0.1: see
    test_conditioning): use it for shapes and invariants, not for recovery.
    """
    spec = ms.MoESpec(gate="sigmoid", score="linear", expert="tanh", d=1)
    G = ms.MixingMeasure(bias=[0.5, -0.5], gate=[[3.0], [-2.0]], expert=[[0.2, 2.0], [-0.5, -1.5]])
    return spec, G


@pytest.fixture(scope="session")
def _tiny_sweep_rows(tmp_path_factory):
    from moe_sim import store
    from moe_sim.config import parse_config
    from moe_sim.sweep import run_sweep
    from tests.test_sweep import TINY, fake_fit

    out = run_sweep(parse_config(TINY), tmp_path_factory.mktemp("tiny_sweep"), fit_fn=fake_fit, progress=False)
    return store.load_results(out)


@pytest.fixture
def tiny_sweep_rows(_tiny_sweep_rows):
    """The rows of a fresh run of test_sweep's TINY config with its fit double (one process), run once per
    session for the tests that compare against a fresh run; each test gets its own copy."""
    return _tiny_sweep_rows.copy()


def random_measure(spec: ms.MoESpec, k: int, rng) -> ms.MixingMeasure:
    """A random k-atom measure of this family (with variances for the Gaussian MoE)."""
    rng = np.random.default_rng(rng)
    var = rng.uniform(0.2, 1.0, k) if spec.likelihood == "gaussian" else None
    return ms.MixingMeasure(
        bias=rng.normal(size=k), gate=rng.normal(size=(k, spec.q)), expert=rng.normal(size=(k, spec.p)), var=var
    )
