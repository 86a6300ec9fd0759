"""One adapter from several: ``combine(adapters, weights, how)`` (PEFT's add_weighted_adapter, for LoRA).

With ΔWᵢ = sᵢ Bᵢ Aᵢ the update adapter i makes to a matrix (zero where it does not adapt it):

- "cat": the A's stacked and the B's side by side (rank Σ rᵢ). Exactly Σ wᵢ ΔWᵢ, up to the rounding of
  one multiplication per entry: block i is Aᵢ' = sign(cᵢ)·√|cᵢ|·Aᵢ, Bᵢ' = √|cᵢ|·Bᵢ with cᵢ = wᵢ sᵢ / s, so
  s Σ Bᵢ' Aᵢ' = Σ wᵢ sᵢ Bᵢ Aᵢ.
- "svd": the best rank-k approximation of Σ wᵢ ΔWᵢ in the Frobenius (and spectral) norm, by the truncated
  SVD U_k S_k V_kᵀ (Eckart–Young): A = √(S_k/s) V_kᵀ, B = U_k √(S_k/s). ``rank`` = k, default the largest rᵢ.
- "linear": A and B averaged separately, A = Σ sign(cᵢ)√|cᵢ| Aᵢ, B = Σ √|cᵢ| Bᵢ (the adapters must share r).
  This is NOT Σ wᵢ ΔWᵢ: s B A = Σᵢ wᵢ ΔWᵢ + s Σ_{i≠j} √|cᵢ cⱼ| sign(cⱼ) Bᵢ Aⱼ, the cross terms between
  adapters. It is what PEFT's "linear" computes; use "cat" for the weighted sum.

The result adapts every matrix any input adapts (zero blocks where an input does not). Its LoraConfig is the
first adapter's with the new r and targets, the union of layers, and α scaled with r so that its scale s
equals the first adapter's (α·r'/r, or α·√(r'/r) with rsLoRA). Combining one adapter with weight 1 returns
it unchanged ("cat" and "linear" give it back by the formulas, bit for bit; "svd" returns it, since a rank-r
adapter is its own best rank-r approximation).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .config import GPTConfig
from .lora import TARGETS, LoraConfig
from .tree import flatten
from .validate import check_flat, expected_lora_shapes

HOWS = ("cat", "svd", "linear")


def _shape_config(adapters: list) -> GPTConfig:
    """A GPTConfig with the adapters' matrix shapes (read off their A and B), to check them against."""
    d = m = None
    for k, (lora, _) in enumerate(adapters):
        if not isinstance(lora, dict) or not isinstance(lora.get("blocks"), list):
            raise TypeError(f"adapters[{k}][0] must be a lora tree {{'blocks': [...]}} as from init_lora")
        for block in lora["blocks"]:
            for t, ab in block.items():  # the first A and B seen set the widths; check_flat then checks all
                d_out, d_in = np.shape(ab["B"])[0], np.shape(ab["A"])[1]
                d = d or (d_out if t == "mlp_out" else d_in)
                m = m or (d_out if t == "mlp_in" else d_in if t == "mlp_out" else None)
    if d is None:
        raise ValueError("the adapters adapt no matrix")
    return GPTConfig(vocab_size=1, context=1, d_model=int(d), n_layer=len(adapters[0][0]["blocks"]), n_head=1,
                     d_mlp=int(m or 0))


def _check(adapters, weights, how, rank) -> tuple[list, list, GPTConfig]:
    if how not in HOWS:
        raise ValueError(f"how must be one of {HOWS}, got {how!r}")
    if not isinstance(adapters, (list, tuple)) or not adapters:
        raise TypeError("adapters must be a non-empty list of (lora, lora_config) pairs")
    for k, pair in enumerate(adapters):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[1], LoraConfig):
            raise TypeError(f"adapters[{k}] must be a (lora, lora_config) pair with a LoraConfig")
    weights = list(weights) if isinstance(weights, (list, tuple, np.ndarray)) else weights
    if (not isinstance(weights, list) or len(weights) != len(adapters) or
            any(isinstance(w, bool) or not isinstance(w, (int, float, np.number)) or not math.isfinite(w)
                for w in weights)):
        raise ValueError(f"weights must be {len(adapters)} finite numbers, one per adapter, got {weights!r}")
    if rank is not None and (how != "svd" or isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        raise ValueError(f"rank is the k of how='svd' (a positive int), got rank={rank!r} with how={how!r}")
    config = _shape_config(adapters)
    dtypes = set()
    for k, (lora, lora_config) in enumerate(adapters):
        flat = flatten(lora)
        check_flat(flat, expected_lora_shapes(config, lora_config), f"adapters[{k}]")
        dtypes |= {str(a.dtype) for a in flat.values()}
    if len(dtypes) > 1:
        raise TypeError(f"adapters have different dtypes {sorted(dtypes)}; cast them to one")
    if how == "linear" and len({lc.r for _, lc in adapters}) > 1:
        raise ValueError(f"how='linear' averages A and B, so the adapters need one r; got r = "
                         f"{[lc.r for _, lc in adapters]} (use 'cat' or 'svd')")
    return list(adapters), [float(w) for w in weights], config


def _result_config(adapters: list, r: int) -> LoraConfig:
    """The first adapter's config at rank r (its scale kept), adapting what any adapter adapts."""
    first = adapters[0][1]
    ratio = r / first.r
    alpha = first.alpha * (math.sqrt(ratio) if first.use_rslora else ratio)
    targets = tuple(t for t in TARGETS if any(t in lc.targets for _, lc in adapters))
    layers = None if any(lc.layers is None for _, lc in adapters) else \
        tuple(sorted({i for _, lc in adapters for i in lc.layers}))
    return dataclasses.replace(first, r=r, alpha=alpha, targets=targets, layers=layers)


def _factors(c: float) -> tuple[float, float]:
    """(a, b) with a·b = c, |a| = |b| = √|c|: the weight split between A and B (the sign goes to A)."""
    root = math.sqrt(abs(c))
    return math.copysign(root, c), root


def _combine_matrix(parts, how, out: LoraConfig, dtype):
    """{"A", "B"} of one matrix from [(A, B, scale·weight)] of the adapters that adapt it."""
    s = out.scale
    if how == "svd":
        dw = sum(c * (B.astype(np.float64) @ A.astype(np.float64)) for A, B, c in parts)  # (d_out, d_in)
        U, S, Vt = np.linalg.svd(dw, full_matrices=False)  # S descending
        root = np.sqrt(S[:out.r] / s)  # (k,)
        return {"A": (root[:, None] * Vt[:out.r]).astype(dtype), "B": (U[:, :out.r] * root).astype(dtype)}
    As, Bs = [], []
    for A, B, c in parts:
        a, b = _factors(c / s)
        As.append(a * A.astype(np.float64))
        Bs.append(b * B.astype(np.float64))
    if how == "linear":
        return {"A": sum(As).astype(dtype), "B": sum(Bs).astype(dtype)}
    return {"A": np.concatenate(As, axis=0).astype(dtype), "B": np.concatenate(Bs, axis=1).astype(dtype)}


def combine(adapters, weights, how: str, *, rank: int | None = None) -> tuple[dict, LoraConfig]:
    """(lora, lora_config) combining ``adapters`` [(lora, lora_config), ...] with ``weights`` by ``how``:
    "cat" (exactly Σ wᵢ ΔWᵢ), "svd" (its best rank-``rank`` approximation) or "linear" (A and B averaged
    separately: not Σ wᵢ ΔWᵢ). See the module docstring."""
    adapters, weights, config = _check(adapters, weights, how, rank)
    if how == "svd" and len(adapters) == 1 and weights[0] == 1.0 and rank in (None, adapters[0][1].r):
        return adapters[0]
    if how == "cat":
        r = sum(lc.r for _, lc in adapters)
    else:
        r = rank if rank is not None else max(lc.r for _, lc in adapters)
    out = _result_config(adapters, r)
    try:
        out.check_against(config)
    except ValueError as err:
        raise ValueError(f"combine(how={how!r}) gives rank {r}, more than a matrix it adapts can hold: {err}"
                         + ("; 'svd' with a smaller rank fits" if how == "cat" else "")) from None
    dtype = next(iter(flatten(adapters[0][0]).values())).dtype
    layers = set(out.adapted_layers(config))
    blocks = []
    for i in range(config.n_layer):
        block = {}
        for t in out.targets if i in layers else ():
            parts = []
            for (lora, lc), w in zip(adapters, weights, strict=True):
                ab = lora["blocks"][i].get(t)
                if ab is not None:
                    parts.append((ab["A"], ab["B"], w * lc.scale))
                elif how == "cat":  # this adapter's rows of the stack stay zero here
                    d_out, d_in = config.matrix_shape(t)
                    parts.append((np.zeros((lc.r, d_in)), np.zeros((d_out, lc.r)), 0.0))
            if not parts:  # "svd"/"linear": adapted by no input here (union of targets × layers), ΔW = 0
                d_out, d_in = config.matrix_shape(t)
                parts = [(np.zeros((out.r, d_in)), np.zeros((d_out, out.r)), 0.0)]
            block[t] = _combine_matrix(parts, how, out, dtype)
        blocks.append(block)
    return {"blocks": blocks}, out
