"""Golden test vectors: framework-neutral LoRA cases that any implementation can be checked against.

``write_golden(out_dir)`` (the ``minilora golden OUT_DIR`` command) writes ``index.json`` — a conventions
section (weight layout, which factor is A and which B, the scale, where dropout acts, dtypes, how to compare)
and one entry per case with its op, dtype, tolerance and file — and one ``.npz`` per case, readable with
``np.load(path, allow_pickle=False)``. The ops:

    lora_linear      x, W, b, A, B, scale                  -> h = x Wᵀ + b + scale·(x Aᵀ) Bᵀ
    lora_linear_vjp  x, W, b, A, B, scale, g               -> dx, dA, dB   (of L = Σ g ⊙ h)
    merge            W, A, B, scale                        -> W_merged = W + scale·B A
    attention_lora   x, n_head, params.*, lora.*, [mask.*], g -> y, dx, grad.*   (LoRA on wq, wk, wv, wo)
    model_lora       tokens, params.*, lora.*, [mask.*], g -> logits, grad.*      (LoRA on every matrix)

Every input is drawn from an explicit seed and every expected output is computed in float64 from the stored
(already rounded) inputs, then rounded to the case's dtype; the zip members carry a fixed timestamp. A rerun
therefore writes the same bytes. The lora_linear cases are exactly those ``minilora.verify`` checks.
"""

from __future__ import annotations

import io
import json
import math
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import autograd.numpy as anp
import numpy as np
from autograd import grad

from . import __version__
from . import reference as ref
from .cases import SEED, dropout_mask, linear_cases
from .checkpoint import atomic_write_bytes, atomic_write_json
from .config import GPTConfig
from .lora import lora_linear
from .model import BLOCK_MATRICES, Hooks, attention, transformer
from .tree import flatten

FORMAT = "minilora-golden"
FORMAT_VERSION = 1

# The model the attention and model cases use: every width different (d 12, d_h 4, d_mlp 20, V 24, T 6),
# so a transposed matrix or a wrong head split cannot go unnoticed, and small enough for tiny files.
GOLDEN_CONFIG = GPTConfig(vocab_size=24, context=8, d_model=12, n_layer=2, n_head=3, d_mlp=20)
ATTENTION_TARGETS = ("wq", "wk", "wv", "wo")
R, ALPHA, DROPOUT_P = 2, 3.0, 0.2  # p = 0.2: the kept entries are 1/(1-p) = 1.25, exact in float32

# Relative tolerances (max|got − want| ≤ tol · max|want| per array) for the composite ops. A correct float32
# implementation of the attention block is off by a few 1e-7 (softmax and four adapted projections, each a sum
# of at most 12 products; minilora's own float32 path: 6e-7 at most); the whole model stacks two blocks, three
# LayerNorms (each divides by a standard deviation) and the tied head, and minilora's float32 logits and
# gradients are off by up to 4e-6. The tests require minilora's float32 path to stay below a tenth of each
# tolerance, so a correct implementation that sums in another order has a margin of 10 and more. float64 keeps
# ~1e-15; 1e-10 leaves room for any summation order. The single-layer ops use cases.TOLERANCE.
COMPOSITE_TOLERANCE = {("attention_lora", "float32"): 2e-5, ("attention_lora", "float64"): 1e-10,
                       ("model_lora", "float32"): 1e-4, ("model_lora", "float64"): 1e-10}

CONVENTIONS = {
    "layout": "W is (d_out, d_in), as in the LoRA paper and torch.nn.Linear.weight; a linear layer computes "
              "x W^T + b over the last axis of x, whatever the leading dims.",
    "A": "A is (r, d_in): the factor applied first, random at init in the paper (PEFT: lora_A.weight).",
    "B": "B is (d_out, r): the factor applied second, zero at init in the paper (PEFT: lora_B.weight). In these "
         "files B is random, so that every term and every gradient is non-zero.",
    "delta": "Delta W = scale * B @ A, (d_out, d_in); the adapted layer computes x W^T + b + scale * (x A^T) B^T.",
    "scale": "scale = alpha / r (LoRA, the paper's Section 4.1) or alpha / sqrt(r) (rsLoRA). Each case stores "
             "the number itself ('scale', a 0-d float64 array) and, in its index entry, 'alpha', 'r' and "
             "'scale_rule'.",
    "dropout": "LoRA dropout acts on the adapter's input only, while training: x W^T + b + scale * ((x * mask) "
               "A^T) B^T; the frozen path sees x itself. Cases with dropout store the mask explicitly "
               "('mask.<name>', shaped like that matrix's input, holding 0 or 1/(1-p)); cases without it have "
               "no mask (evaluation).",
    "dtype": "Inputs and expected outputs are stored in the case's dtype (float32 or float64); 'scale' is "
             "float64; tokens are int64. Expected outputs are computed in float64 from the stored inputs and "
             "rounded to the dtype once.",
    "gradients": "For an upstream gradient g shaped like the output, every gradient is that of L = sum(g * output) "
                 "with respect to the named input (dx, dA, dB; grad.<path> for a parameter).",
    "comparison": "A result passes when max|got - want| <= tolerance * max|want| for every output array of the case.",
    "attention": "attention_lora: q, k, v = wq(x), wk(x), wv(x), each an adapted linear (d, d); heads are contiguous "
                 "blocks of d_h = d / n_head features; per head P = softmax(q k^T / sqrt(d_h) + M) with the causal "
                 "mask M (0 where key <= query, -inf above); o = P v with the heads concatenated back; "
                 "y = wo(o), adapted too. No LayerNorm and no residual: the sublayer alone.",
    "model": "model_lora: GPT-2 style, pre-LayerNorm. x = wte[tokens] + wpe[:T]; per block: x = x + attn(ln1(x)); "
             "x = x + mlp(ln2(x)); logits = ln_f(x) wte^T (the output layer is tied to the token embedding). "
             "ln(x) = g * (x - mean) / sqrt(var + ln_eps) + b over the last axis (biased variance); "
             "mlp(x) = mlp_out(gelu(mlp_in(x))) with gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); "
             "attn as in 'attention'. Parameter paths are minilora's: params.blocks.<i>.<wq|wk|wv|wo|mlp_in|"
             "mlp_out>.<W|b>, params.blocks.<i>.<ln1|ln2>.<g|b>, params.wte (V, d), params.wpe (context, d), "
             "params.ln_f.<g|b>; adapters lora.blocks.<i>.<name>.<A|B>.",
}


@dataclass
class GoldenCase:
    name: str
    op: str
    dtype: str
    tolerance: float
    inputs: dict
    outputs: dict
    meta: dict = field(default_factory=dict)

    @property
    def file(self) -> str:
        return f"{self.name}.npz"

    def entry(self) -> dict:
        for key, value in self.outputs.items():
            if not np.any(value):
                raise RuntimeError(f"golden case {self.name}: output {key} is all zero (a weak case)")
        return {"name": self.name, "op": self.op, "dtype": self.dtype, "tolerance": self.tolerance,
                "file": self.file, "inputs": list(self.inputs), "outputs": list(self.outputs), **self.meta}


# ---- the single-layer ops ----------------------------------------------------------------------------------

def _layer_meta(c) -> dict:
    s = c.shape
    return {"alpha": s.alpha, "r": s.r, "scale_rule": s.rule, "x_shape": list(c.x.shape),
            "d_in": s.d_in, "d_out": s.d_out}


def layer_cases() -> list[GoldenCase]:
    """lora_linear, lora_linear_vjp and merge on every shape of cases.LINEAR_SHAPES, float32 and float64."""
    out = []
    for c in linear_cases():
        scale = np.float64(c.scale)
        dt, meta = c.dtype, _layer_meta(c)
        base = {"x": c.x, "W": c.W, "b": c.b, "A": c.A, "B": c.B, "scale": scale}
        h = ref.lora_linear(c.x, c.W, c.b, c.A, c.B, c.scale)
        out.append(GoldenCase(f"lora_linear_{c.name}", "lora_linear", dt, c.tol, base, {"h": h.astype(dt)}, meta))
        dx, dA, dB = ref.lora_linear_vjp(c.x, c.W, c.b, c.A, c.B, c.scale, c.g)
        out.append(GoldenCase(f"lora_linear_vjp_{c.name}", "lora_linear_vjp", dt, c.tol, {**base, "g": c.g},
                              {"dx": dx.astype(dt), "dA": dA.astype(dt), "dB": dB.astype(dt)}, meta))
        merged = ref.merge(c.W, c.A, c.B, c.scale)
        out.append(GoldenCase(f"merge_{c.name}", "merge", dt, c.tol, {"W": c.W, "A": c.A, "B": c.B, "scale": scale},
                              {"W_merged": merged.astype(dt)}, {k: meta[k] for k in ("alpha", "r", "scale_rule")}))
    return out


# ---- attention and the whole model, with explicit dropout masks ---------------------------------------------

def explicit_mask_hooks(lora_blocks, scale: float, masks: dict) -> Hooks:
    """LoRA's hook with given dropout masks instead of drawn ones: masks[(i, name)] (shaped like that matrix's
    input) or absent for no dropout. The same computation as model.lora_hooks, with the mask made explicit."""

    def project(i, name, x, layer):
        return lora_linear(x, layer, lora_blocks[i].get(name), scale, masks.get((i, name)))

    return Hooks(project=project)


def _linear_params(rng, d_out, d_in):
    return {"W": rng.standard_normal((d_out, d_in)) / math.sqrt(d_in), "b": 0.2 * rng.standard_normal(d_out)}


def _adapter(rng, d_out, d_in, scale):
    return {"A": rng.standard_normal((R, d_in)) / math.sqrt(d_in),
            "B": 0.5 * rng.standard_normal((d_out, R)) / (scale * math.sqrt(R))}


def _round(tree, dtype):
    """Every array of the tree rounded to dtype and held in float64 (the inputs the case stores)."""
    if isinstance(tree, dict):
        return {k: _round(v, dtype) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_round(v, dtype) for v in tree]
    return tree.astype(dtype).astype(np.float64)


def _store(prefix, tree, dtype) -> dict:
    return {f"{prefix}.{k}": v.astype(dtype) for k, v in flatten(tree).items()}


def _composite(op, index, dtype, rule, dropout) -> tuple[str, float, dict]:
    scale = ALPHA / (R if rule == "alpha/r" else math.sqrt(R))
    name = f"{op}_{index:02d}_{dtype}"
    meta = {"alpha": ALPHA, "r": R, "scale_rule": rule, "dropout_p": DROPOUT_P if dropout else 0.0}
    return name, scale, meta


def attention_case(index: int, dtype: str, rule: str, dropout: bool) -> GoldenCase:
    name, scale, meta = _composite("attention_lora", index, dtype, rule, dropout)
    cfg = GOLDEN_CONFIG
    rng = np.random.default_rng([SEED, 1000 + index])
    d, shape = cfg.d_model, (2, 5, cfg.d_model)
    x = _round(rng.standard_normal(shape), dtype)
    params = _round({t: _linear_params(rng, d, d) for t in ATTENTION_TARGETS}, dtype)
    lora = _round({t: _adapter(rng, d, d, scale) for t in ATTENTION_TARGETS}, dtype)
    masks = {t: _round(dropout_mask(rng, shape, DROPOUT_P, np.float64), dtype)
             for t in ATTENTION_TARGETS} if dropout else {}
    g = _round(rng.standard_normal(shape), dtype)

    def y_of(x, lora):
        hooks = explicit_mask_hooks([lora], scale, {(0, t): m for t, m in masks.items()})
        return attention(x, 0, params, hooks, cfg)  # (2, 5, d)

    y = y_of(x, lora)
    dx, dlora = grad(lambda x, lora: anp.sum(g * y_of(x, lora)), argnum=(0, 1))(x, lora)
    inputs = {"x": x.astype(dtype), "n_head": np.int64(cfg.n_head), **_store("params", params, dtype),
              **_store("lora", lora, dtype), **{f"mask.{t}": m.astype(dtype) for t, m in masks.items()},
              "scale": np.float64(scale), "g": g.astype(dtype)}
    outputs = {"y": y.astype(dtype), "dx": dx.astype(dtype), **_store("grad", dlora, dtype)}
    return GoldenCase(name, "attention_lora", dtype, COMPOSITE_TOLERANCE[("attention_lora", dtype)], inputs,
                      outputs, {**meta, "n_head": cfg.n_head, "targets": list(ATTENTION_TARGETS)})


def golden_model_params(rng) -> dict:
    """Random parameters for GOLDEN_CONFIG in minilora's tree layout, every one of them non-trivial (LayerNorm
    gains away from 1, non-zero biases), float64."""
    cfg, d = GOLDEN_CONFIG, GOLDEN_CONFIG.d_model

    def ln():
        return {"g": 1.0 + 0.2 * rng.standard_normal(d), "b": 0.2 * rng.standard_normal(d)}

    blocks = []
    for _ in range(cfg.n_layer):
        block = {"ln1": ln(), "ln2": ln()}
        block.update({t: _linear_params(rng, *cfg.matrix_shape(t)) for t in BLOCK_MATRICES})
        blocks.append(block)
    return {"wte": 0.5 * rng.standard_normal((cfg.vocab_size, d)), "wpe": 0.2 * rng.standard_normal((cfg.context, d)),
            "blocks": blocks, "ln_f": ln()}


def model_case(index: int, dtype: str, rule: str, dropout: bool) -> GoldenCase:
    name, scale, meta = _composite("model_lora", index, dtype, rule, dropout)
    cfg = GOLDEN_CONFIG
    rng = np.random.default_rng([SEED, 2000 + index])
    B, T = 2, 6
    params = _round(golden_model_params(rng), dtype)
    lora = _round({"blocks": [{t: _adapter(rng, *cfg.matrix_shape(t), scale) for t in BLOCK_MATRICES}
                              for _ in range(cfg.n_layer)]}, dtype)
    tokens = rng.integers(0, cfg.vocab_size, size=(B, T)).astype(np.int64)
    masks = {}
    if dropout:
        for i in range(cfg.n_layer):
            for t in BLOCK_MATRICES:
                masks[(i, t)] = _round(dropout_mask(rng, (B, T, cfg.matrix_shape(t)[1]), DROPOUT_P, np.float64), dtype)
    g = _round(rng.standard_normal((B, T, cfg.vocab_size)), dtype)

    def logits_of(lora):
        return transformer(params, tokens, cfg, explicit_mask_hooks(lora["blocks"], scale, masks))  # (B, T, V)

    logits = logits_of(lora)
    dlora = grad(lambda lora: anp.sum(g * logits_of(lora)))(lora)
    inputs = {"tokens": tokens, **_store("params", params, dtype), **_store("lora", lora, dtype),
              **{f"mask.blocks.{i}.{t}": m.astype(dtype) for (i, t), m in masks.items()},
              "scale": np.float64(scale), "g": g.astype(dtype)}
    outputs = {"logits": logits.astype(dtype), **_store("grad", dlora, dtype)}
    return GoldenCase(name, "model_lora", dtype, COMPOSITE_TOLERANCE[("model_lora", dtype)], inputs, outputs,
                      {**meta, "config": cfg.to_dict(), "targets": list(BLOCK_MATRICES)})


# (dtype, scale rule, dropout) of the composite cases: each dtype with and without dropout, both rules.
COMPOSITE_SETTINGS = (("float64", "alpha/r", False), ("float64", "alpha/sqrt(r)", True),
                      ("float32", "alpha/r", False), ("float32", "alpha/r", True))


def golden_cases() -> list[GoldenCase]:
    """Every case, in the order index.json lists them."""
    out = layer_cases()
    out += [attention_case(i, *s) for i, s in enumerate(COMPOSITE_SETTINGS)]
    out += [model_case(i, *s) for i, s in enumerate(COMPOSITE_SETTINGS)]
    return out


# ---- writing ---------------------------------------------------------------------------------------------

def npz_bytes(arrays: dict) -> bytes:
    """An .npz (a zip of .npy files, uncompressed) with fixed member timestamps: the same arrays give the same
    bytes. Readable with np.load(..., allow_pickle=False): no array holds Python objects."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, a in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.asarray(a), allow_pickle=False)  # 0-d stays 0-d
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy.getvalue())
    return buf.getvalue()


def index(cases) -> dict:
    return {"format": FORMAT, "version": FORMAT_VERSION, "written_by": f"minilora {__version__}",
            "seed": SEED, "conventions": CONVENTIONS, "cases": [c.entry() for c in cases]}


def write_golden(out_dir) -> Path:
    """Write every golden case into out_dir (created if needed) and return the path of its index.json.

    Each file is written atomically and index.json last, so a reader never finds an index naming a file that
    is missing or half-written. Other files in out_dir are left alone.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT_DIR {out} exists and is not a folder")
    cases = golden_cases()
    body = index(cases)
    for case in cases:
        atomic_write_bytes(out / case.file, npz_bytes({**case.inputs, **case.outputs}))
    return atomic_write_json(out / "index.json", body)


# ---- the command -----------------------------------------------------------------------------------------

def cmd_golden(args) -> None:
    path = write_golden(args.out_dir)
    cases = json.loads(path.read_text())["cases"]
    ops = sorted({c["op"] for c in cases})
    print(f"wrote {len(cases)} golden cases ({', '.join(ops)}) to {path.parent}; conventions and tolerances in {path}")


def add_golden_command(subparsers):
    """Register ``golden OUT_DIR`` on an argparse subparsers object (``minilora golden``)."""
    p = subparsers.add_parser("golden", help="write framework-neutral LoRA test vectors: index.json + one .npz per "
                                             "case (lora_linear, its VJP, merge, attention and model with LoRA)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write into (created if missing)")
    p.set_defaults(func=cmd_golden)
    return p


def main(argv=None) -> int:
    """``python -m minilora.golden OUT_DIR``."""
    import argparse

    parser = argparse.ArgumentParser(prog="minilora")
    add_golden_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["golden", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.func(args)
    except (ValueError, OSError) as err:
        print(f"minilora golden: error: {err}", file=sys.stderr)
        return 2
    return 0



if __name__ == "__main__":
    sys.exit(main())

__all__ = ["write_golden", "golden_cases", "add_golden_command", "main", "CONVENTIONS", "GOLDEN_CONFIG"]
