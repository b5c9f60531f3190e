"""Attention rows with tied parameters: the MoE form, the gradients, sequence doubling, row sums at
initialisation, fitting a student, the head errors and the validation of bad input."""

import itertools

import numpy as np
import pytest
from scipy.special import logit

import moe_sim as ms
from moe_sim.attention import (
    DESIGNS, AttentionParams, AttentionSpec, RowObjective, attention_gate, double_sequences, draw_params,
    draw_sequences, fit_replicate, fit_student, function_error, head_errors, local_solve, moe_output, row_gates,
    row_jacobian, row_output, row_vjp, sample_rows,
)
from moe_sim.fit.estimators import Search
from moe_sim.gates import FixedMask, Sigmoid, Softmax, TopKSoftmax

N, D, ROW = 5, 2, 1
KINDS = {
    "softmax": {}, "sigmoid": {}, "sigmoid_logn": {}, "normalised_sigmoid": {}, "top_k": {"top_k": 2},
    "band": {"width": 1},
}


def _spec(kind, heads=2, rank=None, n_tokens=N):
    return AttentionSpec(n_tokens, D, attention_gate(kind, n_tokens, ROW, **KINDS[kind]), row=ROW, heads=heads,
                         rank=rank)


def _reference_row(kind, W, v, X):
    """One head of the row, sequence by sequence, from the definitions (no gate object)."""
    out = []
    for x in X:
        s = np.array([x[ROW] @ W @ x[j] for j in range(N)]) / np.sqrt(D)
        sig = 1 / (1 + np.exp(-s))
        if kind in ("softmax", "top_k", "band"):
            keep = {"softmax": np.ones(N, bool), "band": np.abs(np.arange(N) - ROW) <= KINDS["band"].get("width"),
                    "top_k": np.isin(np.arange(N), np.argsort(-s, kind="stable")[:KINDS["top_k"].get("top_k")])}[kind]
            w = np.where(keep, np.exp(s - s.max()), 0.0)
            g = w / w.sum()
        else:
            g = {"sigmoid": sig, "sigmoid_logn": 1 / (1 + N * np.exp(-s)), "normalised_sigmoid": sig / sig.sum()}[kind]
        out.append(g @ (x @ v))
    return np.array(out)


@pytest.mark.parametrize("kind", list(KINDS))
def test_row_output_is_the_attention_formula(kind):
    spec = _spec(kind, heads=2)
    params = draw_params(spec, 0)
    X = draw_sequences(spec, 40, 1)
    expected = sum(_reference_row(kind, W, v, X) for W, v in zip(params.W, params.v))
    np.testing.assert_allclose(row_output(spec, params, X), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind,rank,design", list(itertools.product(KINDS, [None, 1, 2], DESIGNS)))
def test_the_moe_form_equals_the_attention_row(kind, rank, design):
    spec = _spec(kind, heads=2, rank=rank)
    params = draw_params(spec, 2, scale=2.0)
    X = draw_sequences(spec, 60, 3, design)
    np.testing.assert_allclose(moe_output(spec, params, X), row_output(spec, params, X), rtol=0, atol=1e-10)


def test_the_repeated_design_repeats_tokens_and_the_uniform_one_stays_in_its_box():
    spec = _spec("softmax")
    X = draw_sequences(spec, 30, 0, "repeated")
    assert all(len(np.unique(x, axis=0)) <= -(-N // 2) for x in X)
    U = draw_sequences(spec, 30, 0, "uniform")
    assert U.min() >= -1 and U.max() <= 1


@pytest.mark.parametrize("kind,rank", list(itertools.product(KINDS, [None, 1, 2])))
def test_tied_gradients_match_finite_differences(kind, rank):
    spec = _spec(kind, heads=2, rank=rank)
    rng = np.random.default_rng(4)
    params = draw_params(spec, rng, scale=2.0)
    X = draw_sequences(spec, 12, rng)
    weights = rng.normal(size=12)
    theta = spec.to_vector(params)
    eps = 1e-6
    if kind == "top_k":  # the selection must not change within a central difference
        scores = np.einsum("hab,sa,sjb->hsj", params.score_matrices(), X[:, ROW], X) / np.sqrt(D)
        ordered = -np.sort(-scores, axis=2)
        assert np.min(ordered[..., 1] - ordered[..., 2]) > 1e-3
    numeric = []
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = eps
        numeric.append(weights @ (row_output(spec, spec.from_vector(theta + step), X)
                                  - row_output(spec, spec.from_vector(theta - step), X)) / (2 * eps))
    np.testing.assert_allclose(row_vjp(spec, params, X, weights), numeric, rtol=1e-6, atol=1e-8)


def test_the_row_objective_is_the_scaled_rss_with_the_jacobian_of_the_row():
    spec = _spec("sigmoid_logn", heads=2, rank=1)
    params = draw_params(spec, 5)
    X, y = sample_rows(spec, params, 30, 6, noise_sd=0.3)
    theta = spec.to_vector(params) + 0.1
    moved = spec.from_vector(theta)
    obj = RowObjective(spec, X, y)
    value, grad = obj(theta)
    resid = row_output(spec, moved, X) - y
    np.testing.assert_allclose(value, 0.5 * np.sum(resid**2) / (30 * np.var(y)), rtol=1e-14)
    np.testing.assert_allclose(grad, row_vjp(spec, moved, X, resid) / (30 * np.var(y)), rtol=1e-13)
    r, J = obj.residuals_and_jacobian(theta)
    np.testing.assert_allclose(r, resid, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(J, row_jacobian(spec, moved, X))
    value, grad = obj(np.full_like(theta, np.nan))
    assert value == np.inf and np.all(grad == 0.0)


def test_to_vector_and_from_vector_are_inverse():
    for rank in (None, 1):
        spec = _spec("softmax", heads=3, rank=rank)
        params = draw_params(spec, 0)
        theta = spec.to_vector(params)
        assert theta.shape == (spec.n_params,)
        np.testing.assert_array_equal(spec.to_vector(spec.from_vector(theta)), theta)


def test_softmax_rows_are_invariant_to_sequence_doubling_and_sigmoid_rows_are_not():
    X = draw_sequences(_spec("softmax"), 50, 7)
    XX = double_sequences(X)
    for kind, doubled_kind in (("softmax", "softmax"), ("top_k", "top_k")):
        spec = _spec(kind)
        params = draw_params(spec, 8, scale=2.0)
        gate = attention_gate(doubled_kind, 2 * N, ROW, **({"top_k": 4} if kind == "top_k" else {}))
        doubled = AttentionSpec(2 * N, D, gate, row=ROW, heads=2)
        np.testing.assert_allclose(row_output(doubled, params, XX), row_output(spec, params, X), rtol=0, atol=1e-12)
    spec, doubled = _spec("sigmoid"), _spec("sigmoid", n_tokens=2 * N)
    params = draw_params(spec, 8)
    np.testing.assert_allclose(row_output(doubled, params, XX), 2 * row_output(spec, params, X), rtol=1e-13)
    # b = -log N: a row sum of sigmoid(s - log 2N) over both copies is (1 + u) / (1 + u / 2) times that of
    # sigmoid(s - log N), u = e^s / N: strictly between 1 and 2
    spec, doubled = _spec("sigmoid_logn", heads=1), _spec("sigmoid_logn", heads=1, n_tokens=2 * N)
    params = draw_params(spec, 8, scale=2.0)
    ratio = row_gates(doubled, params, XX).sum(axis=1) / row_gates(spec, params, X).sum(axis=1)
    assert np.all((ratio > 1) & (ratio < 2))


def test_sigmoid_row_sums_at_initialisation_are_half_the_length_without_bias_and_near_one_with_minus_log_n():
    n_tokens, draws = 8, 3000
    rng = np.random.default_rng(9)
    plain = AttentionSpec(n_tokens, 4, Sigmoid())
    biased = AttentionSpec(n_tokens, 4, attention_gate("sigmoid_logn", n_tokens))
    sums, biased_sums, mean_square_scores = [], [], []
    for _ in range(draws):  # a fresh initialisation (draw_params, the fit's start drawer) and sequence each time
        params, X = draw_params(plain, rng), draw_sequences(plain, 1, rng)
        g = row_gates(plain, params, X)
        sums.append(g.sum())
        biased_sums.append(row_gates(biased, params, X).sum())
        mean_square_scores.append(np.mean(logit(g) ** 2))
    sums, biased_sums = np.array(sums), np.array(biased_sums)
    # W and -W are equally likely, so every score is symmetric about 0 and E sigmoid(s) = 1/2 exactly
    se = sums.std() / np.sqrt(draws)
    assert abs(sums.mean() - n_tokens / 2) <= 4 * se
    # E sigmoid(s + b) = sigmoid(b) + E s^2 sigmoid''(xi) / 2 with |sigmoid''| <= 1 / (6 sqrt 3): the row sum is
    # N / (N + 1) up to N E s^2 / (12 sqrt 3)
    se = biased_sums.std() / np.sqrt(draws)
    bound = n_tokens * np.mean(mean_square_scores) / (12 * np.sqrt(3)) + 4 * se
    assert abs(biased_sums.mean() - n_tokens / (n_tokens + 1)) <= bound
    assert bound < 0.5  # so the test says "about 1", not merely "bounded"


@pytest.mark.parametrize("kind", ["softmax", "sigmoid_logn"])
def test_a_student_fitted_to_noise_free_rows_reaches_the_teachers_objective(kind):
    spec = AttentionSpec(4, 2, attention_gate(kind, 4), heads=1)
    teacher = draw_params(spec, 11, scale=1.5)
    X, y = sample_rows(spec, teacher, 200, 12, noise_sd=0.0)
    fit = fit_student(spec, X, y, n_starts=4, rng=13)
    fit.compare_with_truth(0.0)  # the teacher's objective on noise-free rows
    # rounding alone leaves residuals of about 1e-16 |y| (RSS ~ 1e-32 sum y^2); 1e-20 sum y^2 allows residuals of
    # 1e-10 |y|, parameter errors of that order for a well-conditioned fit (hence the 1e-8 on W and v)
    assert fit.certified, fit.reason
    assert fit.objective <= 1e-20 * np.sum(y**2)
    errors = head_errors(spec, fit.measure, spec, teacher)[0]
    assert errors["W_error"] <= 1e-8 and errors["v_error"] <= 1e-8


def test_head_errors_match_heads_one_to_one_or_in_voronoi_cells():
    spec = _spec("sigmoid", heads=2)
    teacher = draw_params(spec, 14)
    swapped = AttentionParams(teacher.v[::-1], W=teacher.W[::-1])
    rows = head_errors(spec, swapped, spec, teacher)
    assert [r["cell_size"] for r in rows] == [1, 1]
    np.testing.assert_allclose([[r["W_error"], r["v_error"]] for r in rows], 0.0, atol=1e-15)
    # three student heads: head 0 split into two with the same W and values adding up to the teacher's
    wide = AttentionSpec(N, D, spec.gate, row=ROW, heads=3, rank=2)
    v = teacher.v[[0, 1, 0]] * np.array([0.3, 1.0, 0.7])[:, None]
    student = AttentionParams(v, Q=teacher.W[[0, 1, 0]], K=np.broadcast_to(np.eye(D), (3, D, D)))  # W = Q I
    rows = head_errors(wide, student, spec, teacher)
    assert [r["cell_size"] for r in rows] == [2, 1]
    np.testing.assert_allclose([[r["W_error"], r["W_error_weighted"], r["v_error"]] for r in rows], 0.0, atol=1e-12)
    # a null head (v = 0) far from the teacher counts in the worst W error, not in the v-weighted one
    far = AttentionParams(np.vstack([teacher.v, np.zeros((1, D))]), W=np.concatenate([teacher.W, teacher.W[:1] + 3.0]))
    rows = head_errors(AttentionSpec(N, D, spec.gate, row=ROW, heads=3), far, spec, teacher)
    assert [r["cell_size"] for r in rows] == [2, 1]
    np.testing.assert_allclose([rows[0]["W_error"], rows[0]["W_error_weighted"]], [6.0, 0.0], atol=1e-12)
    X = draw_sequences(spec, 20, 15)
    assert function_error(wide, student, spec, teacher, X) <= 1e-12


def test_fit_replicate_returns_one_tidy_row_per_teacher_head():
    teacher_spec = AttentionSpec(3, 2, Softmax(), heads=2)
    student_spec = AttentionSpec(3, 2, attention_gate("sigmoid_logn", 3), heads=2, rank=1)
    teacher = draw_params(teacher_spec, 16)
    n, noise_sd = 80, 0.2
    rows = fit_replicate(teacher_spec, teacher, student_spec, n, replicate=3, seed=1, noise_sd=noise_sd,
                         n_starts=2, n_test=100)
    assert [r["head"] for r in rows] == [0, 1]
    assert {"teacher_gate", "student_gate", "n", "replicate", "cell_size", "W_error", "W_error_weighted", "v_error",
            "function_error", "mse", "truth_mse", "worse_than_truth", "grad_norm", "converged", "certified",
            "local_fits", "hits", "optima", "p_miss", "runtime_s"} <= set(rows[0])
    assert rows[0]["student_gate"] == "sigmoid_b-1.09861" and rows[0]["n"] == n
    assert rows[0]["local_fits"] % 2 == 0 and rows[0]["hits"] >= 1
    # the teacher's mean squared residual is noise_sd^2 chi^2_n / n: mean noise_sd^2, sd noise_sd^2 sqrt(2 / n)
    assert abs(rows[0]["truth_mse"] - noise_sd**2) <= 4 * noise_sd**2 * np.sqrt(2 / n)
    again = fit_replicate(teacher_spec, teacher, student_spec, n, replicate=3, seed=1, noise_sd=noise_sd,
                          n_starts=2, n_test=100)
    assert [{k: v for k, v in r.items() if k != "runtime_s"} for r in rows] == \
           [{k: v for k, v in r.items() if k != "runtime_s"} for r in again]


@pytest.mark.parametrize("make,message", [
    (lambda: AttentionSpec(0, 2, Softmax()), r"N must be an integer >= 1 \(tokens per sequence\), got 0"),
    (lambda: AttentionSpec(3, 0, Softmax()), r"d must be an integer >= 1 \(token dimension\), got 0"),
    (lambda: AttentionSpec(3, 2, TopKSoftmax(4)), r"top_k=4 tokens but N=3; allowed: 1 <= top_k <= 3"),
    (lambda: AttentionSpec(3, 2, FixedMask((1,), TopKSoftmax(4))), r"top_k=4 tokens but N=3"),
    (lambda: attention_gate("top_k", 3, top_k=4), r"gate keeps top_k=4 tokens but N=3; allowed: 1 <= top_k <= 3"),
    (lambda: AttentionSpec(3, 2, FixedMask.band(0, 4, 6)), r"beyond the N=3 tokens \(a band wider than the "
                                                            r"sequence\); allowed: indices 0..2"),
    (lambda: attention_gate("band", 3, width=3), r"width must be an integer with 0 <= width <= 2"),
    (lambda: attention_gate("band", 3), r"kind='band' takes width parameter"),
    (lambda: attention_gate("banded", 3), r"kind='banded' is not allowed; choose one of"),
    (lambda: AttentionSpec(3, 2, Softmax(), rank=3), r"rank must be None \(W free\) or an integer with 1 <= "
                                                      r"rank <= d=2, got 3"),
    (lambda: AttentionSpec(3, 2, Softmax(), rank=0), r"rank must be None .*got 0"),
    (lambda: AttentionSpec(3, 2, Softmax(), row=3), r"row must be a token index, 0 <= row <= 2, got 3"),
    (lambda: AttentionSpec(3, 2, Softmax(), heads=0), r"heads must be an integer >= 1, got 0"),
    (lambda: AttentionSpec(3, 2, "softmax"), r"gate must be a Gate \(see attention_gate\), got str"),
    (lambda: AttentionParams(np.zeros((1, 2))), r"give either W or both Q and K"),
    (lambda: AttentionSpec(3, 2, Softmax()).check_params(AttentionParams(np.zeros((1, 3)), W=np.zeros((1, 3, 3)))),
     r"params.v has shape \(1, 3\); heads=1, d=2 need \(1, 2\)"),
    (lambda: AttentionSpec(3, 2, Softmax()).check_sequences(np.zeros((4, 3, 3))),
     r"X must have shape \(n, N=3, d=2\)"),
    (lambda: draw_sequences(AttentionSpec(3, 2, Softmax()), 4, 0, "normal"), r"design='normal' is not allowed"),
])
def test_bad_input_is_refused_with_the_field_the_value_and_what_is_allowed(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_student_of_another_token_dimension_is_refused_before_anything_runs():
    teacher_spec, student_spec = AttentionSpec(3, 2, Softmax()), AttentionSpec(3, 3, Softmax())
    teacher = draw_params(teacher_spec, 0)
    with pytest.raises(ValueError, match=r"student d=3 differs from teacher d=2; allowed: the teacher's value"):
        fit_replicate(teacher_spec, teacher, student_spec, 10, 0)
    with pytest.raises(ValueError, match=r"student N=4 differs from teacher N=3"):
        head_errors(AttentionSpec(4, 2, Softmax()), teacher, teacher_spec, teacher)


def test_the_moe_form_is_an_moe_of_n_partially_quadratic_atoms_with_the_rows_gate():
    spec = _spec("top_k", heads=2)
    moe, measures = ms.attention.moe_form(spec, draw_params(spec, 0))
    assert moe.score == "partial_quadratic" and moe.expert_name == "linear" and moe.d == N * D
    assert moe.gate_family == spec.gate and [G.k for G in measures] == [N, N]


def test_local_solve_certifies_by_the_estimators_test_and_says_why_when_it_cannot():
    spec = AttentionSpec(3, 2, attention_gate("sigmoid_logn", 3))
    X, y = sample_rows(spec, draw_params(spec, 17), 100, 18, noise_sd=0.1)
    theta0 = ms.attention.draw_start(spec, 19)
    done = local_solve(spec, X, y, theta0)
    assert done.converged and done.stop in ("gradient", "decrement") and done.reason == ""
    value, grad = RowObjective(spec, X, y)(done.theta)
    np.testing.assert_allclose(done.objective, 2 * value * np.var(y), rtol=1e-12)  # the mean squared error
    np.testing.assert_allclose(done.grad_norm, np.max(np.abs(grad)) / value, rtol=1e-12)
    capped = local_solve(spec, X, y, theta0, max_iter=3)
    assert not capped.converged and capped.stop == "" and "iteration cap" in capped.reason


def test_students_of_other_gates_fitted_with_one_seed_see_the_same_sample():
    teacher_spec = AttentionSpec(3, 2, Softmax())
    teacher = draw_params(teacher_spec, 20)
    rows = [fit_replicate(teacher_spec, teacher, AttentionSpec(3, 2, attention_gate(kind, 3)), 40, 0, seed=2,
                          n_starts=1, n_test=50)[0] for kind in ("softmax", "sigmoid_logn")]
    assert rows[0]["truth_mse"] == rows[1]["truth_mse"]
    assert rows[0]["mse"] != rows[1]["mse"]


def test_fit_student_draws_rounds_of_starts_until_the_best_is_hit_often_enough():
    spec = AttentionSpec(3, 2, Softmax())
    X, y = sample_rows(spec, draw_params(spec, 21), 60, 22, noise_sd=0.1)
    fit = fit_student(spec, X, y, n_starts=1, search=Search(hits=2, max_rounds=5), rng=23)
    assert fit.search.met and fit.search.n_hits >= 2 and len(fit.starts) == fit.search.rounds >= 2
    assert fit.objective == min(start.objective for start in fit.starts)
    assert isinstance(fit.measure, AttentionParams) and fit.certified
