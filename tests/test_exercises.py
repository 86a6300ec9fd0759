"""minilora.exercises: every reference solution passes its checker, a planted wrong solution for each typical
mistake fails with that mistake's own hint, and blanks, crashes and wrong shapes become feedback."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from autograd.extend import defvjp, primitive

from minilora.diagnose import MISTAKES
from minilora.exercises import EXERCISES, check, step_times
from minilora.exercises.counting import CASES as COUNT_CASES
from minilora.exercises.counting import PAPER, count
from minilora.exercises.gradcheck import central
from minilora.lora import paper_param_count

SOLUTIONS = Path(__file__).parent.parent / "notebooks" / "exercises" / "solutions"
# exercise -> (solution file, function name)
WHERE = {"lora_forward": ("lora_forward", "lora_forward"),
         "lora_forward_rslora": ("lora_forward", "lora_forward_rslora"),
         "lora_dropout": ("lora_forward", "lora_dropout"), "lora_vjp": ("lora_vjp", "lora_vjp"),
         "numerical_gradient": ("lora_vjp", "numerical_gradient"), "merge": ("merging", "merge"),
         "unmerge": ("merging", "unmerge"), "lora_init": ("lora_init", "lora_init"),
         "count_lora_params": ("count_params", "count_lora_params"),
         "subspace_similarity": ("subspace_similarity", "subspace_similarity"),
         "adapter_layer": ("adapter_layer", "adapter_layer"), "lora_delta_vjp": ("walkthrough", "lora_delta")}


def solution(name):
    file, fn = WHERE[name]
    spec = importlib.util.spec_from_file_location(f"solution_{file}", SOLUTIONS / f"{file}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, fn)


def test_every_exercise_has_a_solution():
    assert set(WHERE) == set(EXERCISES)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_reference_solution_passes(name):
    feedback = check(name, solution(name))
    assert feedback.passed, str(feedback)
    assert str(feedback).startswith(f"{name}: passed")


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_a_blank_is_feedback_not_a_traceback(name):
    def blank(*args):
        raise NotImplementedError("your code here")

    feedback = check(name, blank)
    assert not feedback.passed
    assert str(feedback) == (f"{name}: not implemented yet. Replace the `raise NotImplementedError` with your code "
                             "and run the check again.")


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_a_crash_and_a_wrong_result_are_feedback(name):
    def crash(*args):
        return {}["no such key"]

    feedback = check(name, crash)
    assert not feedback.passed and "raised KeyError" in str(feedback)
    wrong = check(name, lambda *args: None)
    assert not wrong.passed


def test_unknown_exercise_and_non_function():
    with pytest.raises(ValueError, match="unknown exercise 'lora'.*lora_forward"):
        check("lora", lambda: None)
    with pytest.raises(TypeError, match="expected a function"):
        check("merge", 3)


# ---- planted mistakes: (exercise, mistake) -> a wrong solution -----------------------------------------------

def rows(t):
    return t.reshape(-1, t.shape[-1])


def fwd(x, W, b, A, B, s):
    return x @ W.T + b + s * (x @ A.T) @ B.T


def vjp(x, W, A, B, s, g):
    gB = rows(g) @ B
    return g @ W + s * (g @ B) @ A, s * gB.T @ rows(x), s * rows(g).T @ (rows(x) @ A.T)


def merged_in_place(x, W, b, A, B, alpha):
    W += (alpha / A.shape[0]) * B @ A
    return x @ W.T + b


def silent_dW(x, W, b, A, B, alpha, g):
    s = alpha / A.shape[0]
    dW = rows(g).T @ rows(x)  # (d_out, d_in): computed, then used for a detour (right values, wrong cost)
    return g @ W + s * (g @ B) @ A, s * B.T @ dW, s * rows(g).T @ (rows(x) @ A.T)


def fd_not_restoring(f, x, eps):
    x += eps  # "one step forward" left in the caller's x
    return central(f, x - eps, eps)


def vh(A):
    return np.linalg.svd(A, full_matrices=False)


def phi(A1, A2, i, j, how):
    U1, _, V1 = vh(A1)
    U2, _, V2 = vh(A2)
    if how == "left":
        o = U1[:, :i].T @ U2[:, :j]
    elif how == "columns":
        o = V1[:, :i].T @ V2[:, :j]
    else:
        o = V1[:i] @ V2[:j].T
    sq = float(np.sum(o**2))
    return {"left": sq / min(i, j), "columns": sq / min(i, j), "plain": sq, "max": sq / max(i, j),
            "unsquared": math.sqrt(sq) / min(i, j)}.get(how, sq / min(i, j))


def relu(z):
    return np.maximum(z, 0)


@primitive
def delta_noscale_vjp(x, A, B, scale):
    return scale * (x @ A.T) @ B.T


defvjp(delta_noscale_vjp, lambda ans, x, A, B, s: lambda g: (g @ B) @ A,
       lambda ans, x, A, B, s: lambda g: (rows(g) @ B).T @ rows(x),
       lambda ans, x, A, B, s: lambda g: rows(g).T @ (rows(x) @ A.T))


@primitive
def delta_dA_transposed(x, A, B, scale):
    return scale * (x @ A.T) @ B.T


defvjp(delta_dA_transposed, lambda ans, x, A, B, s: lambda g: s * (g @ B) @ A,
       lambda ans, x, A, B, s: lambda g: s * rows(x).T @ (rows(g) @ B),  # (d_in, r): dA transposed
       lambda ans, x, A, B, s: lambda g: s * rows(g).T @ (rows(x) @ A.T))


@primitive
def delta_swapped(x, A, B, scale):
    return scale * (x @ B) @ A  # ΔW transposed: right only by accident of shapes (d_in = d_out)


defvjp(delta_swapped, lambda ans, x, A, B, s: lambda g: s * (g @ A.T) @ B.T,
       lambda ans, x, A, B, s: lambda g: s * (rows(x) @ B).T @ rows(g),
       lambda ans, x, A, B, s: lambda g: s * rows(x).T @ (rows(g) @ A.T))


def r_of(A):
    return A.shape[0]


PLANTED = {
    # lora_forward: fn(x, W, b, A, B, alpha)
    ("lora_forward", "scale_missing"): lambda x, W, b, A, B, a: fwd(x, W, b, A, B, 1.0),
    ("lora_forward", "alpha_not_divided"): lambda x, W, b, A, B, a: fwd(x, W, b, A, B, a),
    ("lora_forward", "rslora_for_lora"): lambda x, W, b, A, B, a: fwd(x, W, b, A, B, a / math.sqrt(r_of(A))),
    ("lora_forward", "ab_swapped"): lambda x, W, b, A, B, a: x @ W.T + b + a / r_of(A) * (x @ B) @ A,
    ("lora_forward", "w_transposed"): lambda x, W, b, A, B, a: fwd(x, W.T, b, A, B, a / r_of(A)),
    ("lora_forward", "bias_missing"): lambda x, W, b, A, B, a: fwd(x, W, 0.0, A, B, a / r_of(A)),
    ("lora_forward", "merge_in_place"): merged_in_place,
    # lora_forward_rslora
    ("lora_forward_rslora", "lora_for_rslora"): lambda x, W, b, A, B, a: fwd(x, W, b, A, B, a / r_of(A)),
    ("lora_forward_rslora", "scale_missing"): lambda x, W, b, A, B, a: fwd(x, W, b, A, B, 1.0),
    ("lora_forward_rslora", "w_transposed"): lambda x, W, b, A, B, a: fwd(x, W.T, b, A, B, a / math.sqrt(r_of(A))),
    # lora_dropout: fn(x, W, b, A, B, alpha, dropout, training)
    ("lora_dropout", "dropout_at_eval"): lambda x, W, b, A, B, a, drop, tr: x @ W.T + b + a / r_of(A) * (
        drop(x) @ A.T) @ B.T,
    ("lora_dropout", "dropout_frozen_path"): lambda x, W, b, A, B, a, drop, tr: fwd(
        drop(x) if tr else x, W, b, A, B, a / r_of(A)),
    ("lora_dropout", "dropout_missing"): lambda x, W, b, A, B, a, drop, tr: fwd(x, W, b, A, B, a / r_of(A)),
    ("lora_dropout", "scale_missing"): lambda x, W, b, A, B, a, drop, tr: x @ W.T + b + (
        (drop(x) if tr else x) @ A.T) @ B.T,
    # lora_vjp: fn(x, W, b, A, B, alpha, g)
    ("lora_vjp", "scale_missing"): lambda x, W, b, A, B, a, g: vjp(x, W, A, B, 1.0, g),
    ("lora_vjp", "rslora_for_lora"): lambda x, W, b, A, B, a, g: vjp(x, W, A, B, a / math.sqrt(r_of(A)), g),
    ("lora_vjp", "w_transposed"): lambda x, W, b, A, B, a, g: vjp(x, W.T, A, B, a / r_of(A), g),
    ("lora_vjp", "frozen_w_grad"): silent_dW,
    ("lora_vjp", "dx_frozen_missing"): lambda x, W, b, A, B, a, g: (
        a / r_of(A) * (g @ B) @ A, *vjp(x, W, A, B, a / r_of(A), g)[1:]),
    ("lora_vjp", "dx_lora_missing"): lambda x, W, b, A, B, a, g: (g @ W, *vjp(x, W, A, B, a / r_of(A), g)[1:]),
    ("lora_vjp", "output_transposed"): lambda x, W, b, A, B, a, g: (
        lambda d: (d[0], d[1].T, d[2]))(vjp(x, W, A, B, a / r_of(A), g)),
    ("lora_vjp", "outputs_order"): lambda x, W, b, A, B, a, g: (
        lambda d: (d[0], d[2], d[1]))(vjp(x, W, A, B, a / r_of(A), g)),
    # numerical_gradient: fn(f, x, eps)
    ("numerical_gradient", "fd_one_sided"): lambda f, x, eps: central(f, x, eps, sided=True),
    ("numerical_gradient", "fd_half"): lambda f, x, eps: central(f, x, eps, divisor=1.0),
    ("numerical_gradient", "input_in_place"): fd_not_restoring,
    # merge: fn(W, A, B, alpha)
    ("merge", "merge_in_place"): lambda W, A, B, a: W.__iadd__(a / r_of(A) * B @ A),
    ("merge", "scale_missing"): lambda W, A, B, a: W + B @ A,
    ("merge", "alpha_not_divided"): lambda W, A, B, a: W + a * B @ A,
    ("merge", "rslora_for_lora"): lambda W, A, B, a: W + a / math.sqrt(r_of(A)) * B @ A,
    ("merge", "ab_swapped"): lambda W, A, B, a: W + a / r_of(A) * A.T @ B.T,
    ("merge", "delta_only"): lambda W, A, B, a: a / r_of(A) * B @ A,
    ("merge", "unmerge_sign"): lambda W, A, B, a: W - a / r_of(A) * B @ A,
    # unmerge: fn(W_merged, A, B, alpha)
    ("unmerge", "unmerge_sign"): lambda W, A, B, a: W + a / r_of(A) * B @ A,
    ("unmerge", "merge_in_place"): lambda W, A, B, a: W.__isub__(a / r_of(A) * B @ A),
    ("unmerge", "scale_missing"): lambda W, A, B, a: W - B @ A,
    # lora_init: fn(d_in, d_out, r, rng)
    ("lora_init", "both_zero_init"): lambda d_in, d_out, r, rng: (np.zeros((r, d_in)), np.zeros((d_out, r))),
    ("lora_init", "zero_factor_swapped"): lambda d_in, d_out, r, rng: (
        np.zeros((r, d_in)), rng.standard_normal((d_out, r))),
    ("lora_init", "both_random_init"): lambda d_in, d_out, r, rng: (
        rng.standard_normal((r, d_in)), rng.standard_normal((d_out, r))),
    ("lora_init", "outputs_order"): lambda d_in, d_out, r, rng: (np.zeros((d_out, r)), rng.standard_normal((r, d_in))),
    ("lora_init", "output_transposed"): lambda d_in, d_out, r, rng: (
        rng.standard_normal((d_in, r)), np.zeros((d_out, r))),
    # count_lora_params: fn(config, lora_config)
    ("count_lora_params", "count_one_factor"): lambda c, lc: count(c, lc, lambda o, i: lc.r * i),
    ("count_lora_params", "count_full_matrix"): lambda c, lc: count(c, lc, lambda o, i: o * i),
    ("count_lora_params", "count_one_layer"): lambda c, lc: count(c, lc, layers=(0,)),
    ("count_lora_params", "count_layers_ignored"): lambda c, lc: count(c, lc, layers=range(c.n_layer)),
    ("count_lora_params", "count_one_target"): lambda c, lc: count(c, lc, targets=lc.targets[:1]),
    ("count_lora_params", "count_square_formula"): lambda c, lc: 2 * c.d_model * lc.r * len(lc.targets) * len(
        lc.adapted_layers(c)),
    # subspace_similarity: fn(A1, A2, i, j)
    ("subspace_similarity", "phi_left_vectors"): lambda A1, A2, i, j: phi(A1, A2, i, j, "left"),
    ("subspace_similarity", "phi_columns"): lambda A1, A2, i, j: phi(A1, A2, i, j, "columns"),
    ("subspace_similarity", "phi_not_normalised"): lambda A1, A2, i, j: phi(A1, A2, i, j, "plain"),
    ("subspace_similarity", "phi_max_normaliser"): lambda A1, A2, i, j: phi(A1, A2, i, j, "max"),
    ("subspace_similarity", "phi_not_squared"): lambda A1, A2, i, j: phi(A1, A2, i, j, "unsquared"),
    # adapter_layer: fn(h, W_down, b_down, W_up, b_up)
    ("adapter_layer", "adapter_no_residual"): lambda h, Wd, bd, Wu, bu: relu(h @ Wd.T + bd) @ Wu.T + bu,
    ("adapter_layer", "adapter_no_nonlinearity"): lambda h, Wd, bd, Wu, bu: h + (h @ Wd.T + bd) @ Wu.T + bu,
    ("adapter_layer", "adapter_nonlinearity_misplaced"): lambda h, Wd, bd, Wu, bu: h + relu(
        (h @ Wd.T + bd) @ Wu.T + bu),
    ("adapter_layer", "adapter_bias_missing"): lambda h, Wd, bd, Wu, bu: h + relu(h @ Wd.T) @ Wu.T + bu,
    ("adapter_layer", "w_transposed"): lambda h, Wd, bd, Wu, bu: h + relu(h @ Wd + bd) @ Wu + bu,
    # lora_delta_vjp: the student's primitive
    ("lora_delta_vjp", "scale_missing"): delta_noscale_vjp,
    ("lora_delta_vjp", "output_transposed"): delta_dA_transposed,
    ("lora_delta_vjp", "ab_swapped"): delta_swapped,
}

# The typical mistakes, and the exercises whose checkers must name each (tested below as well).
TYPICAL = {
    "scale_missing": ("lora_forward", "lora_forward_rslora", "lora_dropout", "lora_vjp", "merge", "unmerge",
                      "lora_delta_vjp"),
    "rslora_for_lora": ("lora_forward", "lora_vjp", "merge"),
    "lora_for_rslora": ("lora_forward_rslora",),
    "ab_swapped": ("lora_forward", "merge", "lora_delta_vjp"),
    "w_transposed": ("lora_forward", "lora_forward_rslora", "lora_vjp", "adapter_layer"),
    "both_zero_init": ("lora_init",),
    "frozen_w_grad": ("lora_vjp",),
    "dropout_at_eval": ("lora_dropout",),
    "merge_in_place": ("lora_forward", "merge", "unmerge"),
}


@pytest.mark.parametrize("name,key", sorted(PLANTED), ids=[f"{n}-{k}" for n, k in sorted(PLANTED)])
def test_planted_mistake_fails_with_its_hint(name, key):
    feedback = check(name, PLANTED[(name, key)])
    assert not feedback.passed
    assert key in feedback.mistakes, (key, feedback.mistakes, str(feedback))
    assert MISTAKES[key].hint in str(feedback)


def test_every_typical_mistake_is_planted_where_it_applies():
    for key, names in TYPICAL.items():
        for name in names:
            assert (name, key) in PLANTED, (name, key)
    assert set(MISTAKES) >= {k for _, k in PLANTED}


def test_only_the_planted_mistake_is_named():
    """A diagnosis names the mistake made, not a list of guesses: at most one key besides it."""
    for (name, key), fn in PLANTED.items():
        others = [k for k in check(name, fn).mistakes if k != key]
        assert len(others) <= 1, (name, key, others)


# ---- details of single checkers ------------------------------------------------------------------------------

def test_lora_init_reports_the_model_checks():
    feedback = check("lora_init", solution("lora_init"))
    text = str(feedback)
    assert "the adapted model equals the base model at init: bit for bit" in text
    assert "max|dL/dA| = 0 (exactly 0)" in text
    zero = check("lora_init", PLANTED[("lora_init", "both_zero_init")])
    first = next(r for r in zero.results if r.label.startswith("the first gradient"))
    assert not first.ok and first.keys == ["both_zero_init"]


def test_lora_init_wants_A_from_the_generator_and_of_full_rank():
    fixed = check("lora_init", lambda d_in, d_out, r, rng: (np.ones((r, d_in)) + np.eye(r, d_in), np.zeros((d_out, r))))
    assert not fixed.passed and "same for two different generators" in str(fixed)
    low = check("lora_init", lambda d_in, d_out, r, rng: (np.ones((r, d_in)), np.zeros((d_out, r))))
    assert not low.passed and "rank 1 < r" in str(low)


def test_count_cases_hold_the_papers_gpt3_numbers():
    for (config, lc, note), want in zip(COUNT_CASES, PAPER):
        assert note.startswith("the paper")
        assert count(config, lc) == want == paper_param_count(len(lc.targets) * config.n_layer, config.d_model, lc.r)


def test_the_dW_watch_sees_a_computed_gradient_and_not_a_formed_delta():
    ok = check("lora_vjp", solution("lora_vjp"))
    assert ok.results[-1].label == "no gradient for the frozen W" and ok.results[-1].ok

    def via_delta_w(x, W, b, A, B, alpha, g):  # forms ΔW = s·B A (no g in it): not a gradient for W
        s = alpha / A.shape[0]
        dx = g @ (W + s * B @ A)
        return dx, s * (rows(g) @ B).T @ rows(x), s * rows(g).T @ (rows(x) @ A.T)

    assert check("lora_vjp", via_delta_w).passed

    def outer_loop(x, W, b, A, B, alpha, g):  # dW accumulated from per-row outer products
        dW = np.zeros(W.shape)
        for n in range(rows(x).shape[0]):
            dW += np.outer(rows(g)[n], rows(x)[n])
        return vjp(x, W, A, B, alpha / A.shape[0], g)

    assert "frozen_w_grad" in check("lora_vjp", outer_loop).mistakes

    def einsum_dW(x, W, b, A, B, alpha, g):
        np.einsum("no,ni->oi", rows(g), rows(x))
        return vjp(x, W, A, B, alpha / A.shape[0], g)

    assert "frozen_w_grad" in check("lora_vjp", einsum_dW).mistakes


def test_dropout_checker_hands_out_a_deterministic_dropout():
    seen = []

    def spy(x, W, b, A, B, alpha, dropout, training):
        seen.append(dropout(x))
        return solution("lora_dropout")(x, W, b, A, B, alpha, dropout, training)

    check("lora_dropout", spy)
    check("lora_dropout", spy)
    half = len(seen) // 2
    assert all(np.array_equal(a, b) for a, b in zip(seen[:half], seen[half:]))
    wrong_tensor = check("lora_dropout", lambda x, W, b, A, B, alpha, drop, tr: x @ W.T + b + drop(
        (alpha / A.shape[0]) * (x @ A.T) @ B.T) if tr else solution("lora_dropout")(x, W, b, A, B, alpha, drop, tr))
    assert not wrong_tensor.passed and "dropout acts on the adapter's input x" in str(wrong_tensor)


def test_step_times_runs_with_the_walkthrough_solution():
    times = step_times(solution("lora_delta_vjp"), n_layers=2, d=32, n=16, r=2, repeats=2)
    assert times["full"] > 0 and times["lora"] > 0 and times["ratio"] == times["full"] / times["lora"]
