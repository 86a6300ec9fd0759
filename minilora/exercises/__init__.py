"""Exercises with checkers that say what exactly went wrong.

    from minilora.exercises import check
    feedback = check("lora_forward", my_lora_forward)
    print(feedback)          # one line per case, then the mistakes recognised and how to fix them
    feedback.passed          # True when every case is within its tolerance

A checker runs the student's function on fixed cases (seeded; edge cases included: r = 1, r = min(d_in, d_out),
a batch of one, two batch dims, float32 and float64) and compares with the reference. The student never
has to reproduce a random stream: every random input is an argument. A crash, a wrong shape or a changed
input becomes feedback, not a traceback. When a result is wrong and equals the reference evaluated under a
typical mistake (minilora.diagnose), the feedback names that mistake. The notebooks are in
notebooks/exercises/, the solutions in notebooks/exercises/solutions/.
"""

from __future__ import annotations

from ..casework import Report
from .adapter import check_adapter_layer, houlsby_adapter
from .counting import check_count_lora_params
from .dropout import check_lora_dropout
from .gradcheck import check_numerical_gradient
from .initialisation import check_lora_init
from .layer import check_lora_forward, check_lora_forward_rslora, check_lora_vjp
from .merging import check_merge, check_unmerge
from .subspace import check_subspace_similarity
from .walkthrough import check_lora_delta_vjp, step_times

Feedback = Report  # what check() returns: .passed, .lines, .mistakes, str()

# name -> (checker, the signature the student implements)
EXERCISES = {
    "lora_forward": (check_lora_forward, "lora_forward(x, W, b, A, B, alpha) -> h, with s = alpha / r"),
    "lora_forward_rslora": (check_lora_forward_rslora,
                            "lora_forward_rslora(x, W, b, A, B, alpha) -> h, with s = alpha / sqrt(r)"),
    "lora_dropout": (check_lora_dropout, "lora_dropout(x, W, b, A, B, alpha, dropout, training) -> h"),
    "lora_vjp": (check_lora_vjp, "lora_vjp(x, W, b, A, B, alpha, g) -> (dx, dA, dB)"),
    "numerical_gradient": (check_numerical_gradient, "numerical_gradient(f, x, eps) -> array shaped like x"),
    "merge": (check_merge, "merge(W, A, B, alpha) -> W_merged"),
    "unmerge": (check_unmerge, "unmerge(W_merged, A, B, alpha) -> W"),
    "lora_init": (check_lora_init, "lora_init(d_in, d_out, r, rng) -> (A, B)"),
    "count_lora_params": (check_count_lora_params, "count_lora_params(config, lora_config) -> int"),
    "subspace_similarity": (check_subspace_similarity, "subspace_similarity(A1, A2, i, j) -> float"),
    "adapter_layer": (check_adapter_layer, "adapter_layer(h, W_down, b_down, W_up, b_up) -> h + f(...) W_up^T + b_up"),
    "lora_delta_vjp": (check_lora_delta_vjp, "lora_delta(x, A, B, scale): an autograd primitive with your VJPs"),
}


def check(name: str, fn) -> Report:
    """Check the student's ``fn`` for exercise ``name`` (see EXERCISES); returns feedback (a Report)."""
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; the exercises are: {', '.join(EXERCISES)}")
    return EXERCISES[name][0](fn)


__all__ = ["check", "EXERCISES", "Feedback", "houlsby_adapter", "step_times"]
