"""One catalogue of the typical LoRA mistakes, and how a result is recognised as one of them.

A mistake is recognised by evaluating the reference *under that mistake* (the scale left out, W transposed,
the dropout mask applied at evaluation, ...) and comparing the checked result with it: when the result is
wrong but equals the mistaken reference to the case's tolerance, the report names the mistake. A variant
that equals the correct answer on a case (α/√r and α/r at r = 1, say) tells nothing there and is skipped.
``minilora.verify`` and every checker in ``minilora.exercises`` use this module, so one mistake gets one
name and one hint wherever it is made.

Conventions (the paper's, and torch.nn.Linear's): W (d_out, d_in), A (r, d_in), B (d_out, r),
h = x Wᵀ + b + s·(x Aᵀ) Bᵀ, ΔW = s·B A, s = α/r (or α/√r with rsLoRA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import reference as ref


@dataclass(frozen=True)
class Mistake:
    key: str
    title: str
    """A few words: what went wrong."""
    hint: str
    """What the result shows and how to fix it."""


_CATALOGUE = (
    # -- the scale s
    Mistake("scale_missing", "the scale forgotten",
            "the result equals the reference computed with s = 1: multiply the low-rank term by the scale s "
            "(α/r, or α/√r for rsLoRA): h = x Wᵀ + b + s·(x Aᵀ) Bᵀ"),
    Mistake("alpha_not_divided", "α used as the scale",
            "the result equals the reference computed with s = α: the scale is α/r, with r = A.shape[0]"),
    Mistake("rslora_for_lora", "α/√r used where α/r is asked",
            "the result equals the reference computed with s = α/√r (rsLoRA); this case asks for s = α/r"),
    Mistake("lora_for_rslora", "α/r used where α/√r is asked",
            "the result equals the reference computed with s = α/r; this case asks for rsLoRA's s = α/√r"),
    # -- layouts
    Mistake("ab_swapped", "A and B swapped or transposed",
            "the result equals the reference with A and B exchanged or transposed: A (r, d_in) acts first and "
            "B (d_out, r) second, s·(x Aᵀ) Bᵀ = x ΔWᵀ with ΔW = s·B A of shape (d_out, d_in)"),
    Mistake("w_transposed", "W used as (d_in, d_out)",
            "the result equals the reference with W transposed: W is stored (d_out, d_in), as in the paper and "
            "torch.nn.Linear, so the frozen path is x Wᵀ + b (and its input gradient g W)"),
    Mistake("bias_missing", "the bias forgotten",
            "the result equals the reference without b: the frozen path is x Wᵀ + b"),
    Mistake("output_transposed", "an output transposed",
            "an output has the transposed shape and holds the transposed values: return it in the shape of "
            "the parameter it belongs to (dA like A: (r, d_in); dB like B: (d_out, r))"),
    Mistake("outputs_order", "outputs in the wrong order",
            "the right arrays came back in the wrong order: return them in the order the signature states"),
    # -- initialisation
    Mistake("both_zero_init", "both factors initialised to zero",
            "A = B = 0 is a stationary point: ∂L/∂A = s·Bᵀ Gᵀ X = 0 and ∂L/∂B = s·Gᵀ X Aᵀ = 0 for every batch, "
            "so training never leaves it. Draw A at random and set only B to zero"),
    Mistake("zero_factor_swapped", "A zero and B random",
            "ΔW = 0 at init, but the paper's choice is the other one: A random, B = 0 (with A = 0 the first "
            "gradient reaches A and not B)"),
    Mistake("both_random_init", "both factors random",
            "with A and B both random, ΔW = s·B A ≠ 0 and the adapted model differs from the base before any "
            "training: set B = 0 so that fine-tuning starts exactly at the pretrained model"),
    # -- gradients
    Mistake("frozen_w_grad", "a gradient computed for the frozen W",
            "W is frozen: LoRA never needs ∂L/∂W = Gᵀ X (d_out, d_in), and skipping that product is where its "
            "training speed-up comes from. Compute only dx = g W + s·(g B) A, dA = s·(g B)ᵀ x, dB = s·gᵀ (x Aᵀ)"),
    Mistake("dx_frozen_missing", "dx without the frozen path",
            "dx equals the low-rank path's part alone: the frozen path x Wᵀ + b adds g W to dx"),
    Mistake("dx_lora_missing", "dx without the low-rank path",
            "dx equals g W alone: the adapter's path adds s·(g B) A to dx"),
    # -- dropout
    Mistake("dropout_at_eval", "dropout left on at evaluation",
            "the result changes the adapter's path like a dropout mask does, outside training: LoRA dropout "
            "acts only while training (in PyTorch: call .eval() before checking)"),
    Mistake("dropout_frozen_path", "dropout applied to the frozen path too",
            "the mask was applied to x for W as well: LoRA dropout acts on the adapter's input only, "
            "h = x Wᵀ + b + s·((dropout(x)) Aᵀ) Bᵀ"),
    Mistake("dropout_missing", "no dropout while training",
            "in training mode the adapter's input must go through dropout: s·(dropout(x) Aᵀ) Bᵀ"),
    # -- merging
    Mistake("merge_in_place", "the merged W changed in place",
            "the input W was modified: W is the frozen base, shared by every adapter and needed again to "
            "unmerge or switch adapters. Return a new array (W + s·B A), leave the argument untouched"),
    Mistake("input_in_place", "an input changed in place",
            "the function modified one of its arguments: compute the result in new arrays"),
    Mistake("delta_only", "ΔW returned instead of W + ΔW",
            "the result equals s·B A alone: the merged weight is W + s·B A"),
    Mistake("unmerge_sign", "ΔW added where it must be subtracted (or the reverse)",
            "merge adds s·B A to W, unmerge subtracts it"),
    # -- parameter counts
    Mistake("count_one_factor", "one factor counted",
            "an adapter has two factors: A (r, d_in) and B (d_out, r), r·(d_in + d_out) parameters"),
    Mistake("count_full_matrix", "the full ΔW counted",
            "LoRA stores A and B, r·(d_in + d_out) numbers, never the d_out·d_in entries of ΔW"),
    Mistake("count_one_layer", "one block counted",
            "every adapted block has its own A and B: multiply by the number of adapted blocks"),
    Mistake("count_layers_ignored", "LoraConfig.layers ignored",
            "only the blocks in lora_config.layers are adapted (None means all of them)"),
    Mistake("count_one_target", "one target counted",
            "every matrix in lora_config.targets gets its own A and B"),
    Mistake("count_square_formula", "the square-matrix formula used for every matrix",
            "2·d_model·r per matrix holds only for the square W_q, W_k, W_v, W_o; mlp_in is (d_mlp, d_model) "
            "and mlp_out (d_model, d_mlp): count r·(d_in + d_out)"),
    # -- subspace similarity
    Mistake("phi_left_vectors", "left singular vectors used",
            "φ uses the right-singular vectors of A (r, d_in), the rows of Vh in A = U Σ Vh, which live in "
            "the d_in-dimensional input space; U (r, r) only mixes A's rows"),
    Mistake("phi_columns", "columns of Vh used instead of rows",
            "the singular vectors are the rows of Vh (numpy's svd returns Vh, not V): take Vh[:i], not Vh[:, :i]"),
    Mistake("phi_not_normalised", "not divided by min(i, j)",
            "φ = ‖U1ᵢᵀ U2ⱼ‖²_F / min(i, j): the division puts φ in [0, 1]"),
    Mistake("phi_max_normaliser", "divided by max(i, j)",
            "φ divides by min(i, j), the dimension of the smaller subspace"),
    Mistake("phi_not_squared", "the norm not squared",
            "φ uses the squared Frobenius norm ‖U1ᵢᵀ U2ⱼ‖²_F"),
    # -- adapter layer (Houlsby)
    Mistake("adapter_no_residual", "the residual connection forgotten",
            "the adapter adds its bottleneck's output to its input: h + W_up f(W_down h + b_down) + b_up"),
    Mistake("adapter_no_nonlinearity", "the nonlinearity forgotten",
            "without f the adapter is a (rank-m) linear map; apply f = ReLU between the two projections"),
    Mistake("adapter_nonlinearity_misplaced", "the nonlinearity in the wrong place",
            "f acts on the bottleneck, between W_down and W_up, not on the adapter's output"),
    Mistake("adapter_bias_missing", "a bias forgotten",
            "both projections have a bias: W_down h + b_down and W_up z + b_up"),
    # -- finite differences
    Mistake("fd_one_sided", "a one-sided difference",
            "(f(x + ε) − f(x)) / ε has an error of order ε; the central difference (f(x + ε) − f(x − ε)) / 2ε "
            "of order ε²"),
    Mistake("fd_half", "the central difference divided by ε",
            "(f(x + ε) − f(x − ε)) spans 2ε: divide by 2ε"),
)

MISTAKES = {m.key: m for m in _CATALOGUE}


def compare(got, want, floor: float = 0.0) -> tuple[float, float]:
    """(max |got − want|, that divided by max(max |want|, floor)) over all entries, in float64. Same shapes
    required. ``floor`` is the size below which an error counts as absolute (φ ∈ [0, 1] uses 1)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.size == 0:
        return 0.0, 0.0
    err = float(np.max(np.abs(got - want))) if np.all(np.isfinite(got)) else math.inf
    size = max(float(np.max(np.abs(want))), floor)
    return err, (err / size if size > 0 else (0.0 if err == 0 else math.inf))


def close(got, want, tol: float, floor: float = 0.0) -> bool:
    """max |got − want| <= tol · max(max |want|, floor) (exact equality when tol is 0), and got finite."""
    return np.shape(got) == np.shape(want) and compare(got, want, floor)[1] <= tol


def identify(got, want, variants, tol: float, floor: float = 0.0) -> str | None:
    """The key of the first variant (key, want under that mistake) that ``got`` matches while differing from
    ``want``; None if none does. A variant whose value is None does not apply to this case."""
    for key, value in variants:
        if value is None or np.shape(value) != np.shape(got):
            continue
        if close(value, want, 100 * tol, floor):
            continue  # indistinguishable from the right answer on this case
        if close(got, value, tol, floor):
            return key
    return None


# ---- the LoRA layer evaluated under each mistake ----------------------------------------------------------

def layer_mistakes(W, b, scale: float, r: int, rule: str, alpha: float | None = None):
    """[(key, f(x, A, B))]: the reference layer as each mistake computes it (autograd-differentiable in x, A,
    B, so the same list gives the mistaken VJPs). A mistake that needs a square W is left out when W is not.

    rule: "alpha/r" or "alpha/sqrt(r)", the scale the case asks for; alpha: α when the checked function is
    given α (the exercises) rather than s (verify).
    """
    d_out, d_in = np.shape(W)
    out = [("scale_missing", ref.lora_layer(W, b, 1.0))]
    if alpha is not None:
        out.append(("alpha_not_divided", ref.lora_layer(W, b, alpha)))
    if rule == "alpha/r":
        out.append(("rslora_for_lora", ref.lora_layer(W, b, scale * math.sqrt(r))))
    else:
        out.append(("lora_for_rslora", ref.lora_layer(W, b, scale / math.sqrt(r))))
    f = ref.lora_layer(W, b, scale)
    if d_in == d_out:  # s·x B A: ΔW transposed (A, B exchanged and transposed)
        out.append(("ab_swapped", lambda x, A, B: f(x, B.T, A.T)))
        out.append(("w_transposed", ref.lora_layer(np.transpose(W), b, scale)))
    if d_in == d_out == r:  # s·x Bᵀ Aᵀ: A and B exchanged
        out.append(("ab_swapped", lambda x, A, B: f(x, B, A)))
    if b is not None:
        out.append(("bias_missing", ref.lora_layer(W, None, scale)))
    return out


def forward_variants(x, A, B, mistakes):
    """[(key, h under that mistake)] for layer_mistakes()."""
    x, A, B = ref.f64(x), ref.f64(A), ref.f64(B)
    return [(key, f(x, A, B)) for key, f in mistakes]


def vjp_variants(x, W, A, B, scale: float, g, mistakes, mask=None):
    """[(key, (dx, dA, dB) under that mistake)]: the VJP of each mistaken layer, and the two partial dx's."""
    out = [(key, ref.vjp_xab(f, x, A, B, g)) for key, f in mistakes]
    dx, dA, dB = ref.vjp_xab(ref.lora_layer(W, None, scale, mask), x, A, B, g)
    frozen = ref.f64(g) @ ref.f64(W)  # (..., d_in): g W, the frozen path's part of dx
    out.append(("dx_frozen_missing", (dx - frozen, dA, dB)))
    out.append(("dx_lora_missing", (frozen, dA, dB)))
    return out


def merge_variants(W, A, B, scale: float, r: int, alpha: float | None = None, sign: float = 1.0):
    """[(key, W ± ΔW under that mistake)] for merge (sign +1) and unmerge (sign −1)."""
    def fold(s, W=W, A=A, B=B):
        return ref.merge(W, A, B, sign * s)

    out = [("scale_missing", fold(1.0))]
    if alpha is not None:
        out += [("alpha_not_divided", fold(alpha)), ("rslora_for_lora", fold(alpha / math.sqrt(r)))]
    if np.shape(W)[0] == np.shape(W)[1]:
        out.append(("ab_swapped", ref.f64(W) + sign * scale * (ref.f64(B) @ ref.f64(A)).T))
    out.append(("delta_only", sign * scale * (ref.f64(B) @ ref.f64(A))))
    out.append(("unmerge_sign", fold(-scale)))
    return out
