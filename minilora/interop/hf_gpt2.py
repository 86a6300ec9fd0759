"""Hugging Face GPT-2 weights (config.json + model.safetensors, as ``save_pretrained`` writes them) without torch.

The layouts differ only at this boundary (``tensor_map`` is the one table both directions use):

    transformers (Conv1D stores its weight (in, out))          minilora (W is (d_out, d_in))
    [transformer.]wte.weight (V, d), wpe.weight (n_pos, d)      wte, wpe
    h.N.ln_1 / ln_2 .weight, .bias                              blocks.N.ln1 / ln2 .g, .b
    h.N.attn.c_attn.weight (d, 3d), .bias (3d,)                 blocks.N.wq, wk, wv: W = columns [0:d], [d:2d],
                                                                [2d:3d] transposed; b split the same way
    h.N.attn.c_proj.weight (d, d)                               blocks.N.wo.W = its transpose
    h.N.mlp.c_fc.weight (d, m), mlp.c_proj.weight (m, d)        blocks.N.mlp_in.W (m, d), mlp_out.W (d, m)
    ln_f.weight, .bias                                          ln_f.g, ln_f.b
    lm_head.weight: tied to wte (absent, or equal to wte)      the output layer is wte

Older files (the hub's own gpt2) have no ``transformer.`` prefix and carry the buffers ``h.N.attn.bias`` (the
causal mask) and ``h.N.attn.masked_bias`` (the fill value); they are checked to be what GPT-2 computes with and
dropped. Anything else in the file is refused by name, so nothing is silently dropped.

Only a config minilora computes exactly is loaded: the tanh GELU, attention scaled by 1/√d_head and nothing
else, a tied head, no cross-attention; n_inner and layer_norm_epsilon are carried into GPTConfig.d_mlp and
ln_eps. The dropout rates (resid_pdrop, embd_pdrop, attn_pdrop) act only while transformers trains and are
ignored: at evaluation the function is the same. Other keys of config.json are not read by transformers' GPT-2
forward and are ignored.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import safetensors.numpy

from ..checkpoint import atomic_write_bytes, atomic_write_json
from ..config import GPTConfig
from ..tree import flatten, unflatten
from ..validate import check_params, expected_param_shapes
from .files import read_finite_tensors, read_json, take_tensor

# The tanh approximation 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))), minilora's ops.gelu, under its three names
# in transformers.activations.ACT2FN: NewGELUActivation, torch's gelu(approximate="tanh"), and its Python twin.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh")
OTHER_ACTIVATIONS = {
    "gelu": "the exact erf GELU", "gelu_python": "the exact erf GELU", "gelu_10": "a clipped erf GELU",
    "gelu_fast": "a tanh GELU with the constant rounded to 0.7978845608 (not √(2/π))",
    "gelu_accurate": "a different approximation of GELU", "quick_gelu": "x·sigmoid(1.702 x)",
}
# Config fields that must hold GPT-2's value for minilora to compute the same function (missing = the default).
REQUIRED = {
    "scale_attn_weights": (True, "minilora always divides the attention scores by √d_head"),
    "scale_attn_by_inverse_layer_idx": (False, "minilora does not divide the scores of block i by i + 1"),
    "reorder_and_upcast_attn": (False, "minilora has no reordered/upcast attention"),
    "add_cross_attention": (False, "minilora is a decoder without cross-attention"),
    "tie_word_embeddings": (True, "minilora's output layer is the token embedding wte (a tied head)"),
}
SHAPE_FIELDS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}
ALIASES = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions", "num_attention_heads": "n_head",
           "num_hidden_layers": "n_layer"}


# ---- config.json <-> GPTConfig --------------------------------------------------------------------------

def _field(hf: dict, name: str, default, where):
    value = hf.get(name, default)
    for alias, canonical in ALIASES.items():
        if canonical == name and alias in hf:
            if name in hf and hf[alias] != hf[name]:
                raise ValueError(f"{where}: {alias}={hf[alias]!r} contradicts {name}={hf[name]!r}")
            value = hf[alias]
    return value


def gpt_config_from_hf(hf: dict, where="config.json") -> GPTConfig:
    """The GPTConfig of a transformers GPT-2 config, or ValueError naming the field minilora cannot represent."""
    if not isinstance(hf, dict):
        raise ValueError(f"{where} must hold a JSON object")
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"{where}: model_type is {hf.get('model_type')!r}; minilora reads GPT-2 ('gpt2') only")
    act = hf.get("activation_function", "gelu_new")
    if act not in TANH_GELU:
        what = OTHER_ACTIVATIONS.get(act, "an activation minilora does not compute")
        raise ValueError(f"{where}: activation_function={act!r} is {what}; minilora computes only the tanh GELU "
                         f"({', '.join(TANH_GELU)}), so this model would compute a different function")
    for name, (want, why) in REQUIRED.items():
        value = hf.get(name, want)
        if value is not want:
            raise ValueError(f"{where}: {name}={value!r} is not supported: {why} (needs {name}={want})")
    if hf.get("pruned_heads"):
        raise ValueError(f"{where}: pruned_heads={hf['pruned_heads']!r}: minilora has no pruned attention heads")
    sizes = {name: _field(hf, name, default, where) for name, default in SHAPE_FIELDS.items()}
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")
    n_inner = hf.get("n_inner")
    if n_inner is not None and (isinstance(n_inner, bool) or not isinstance(n_inner, int) or n_inner <= 0):
        raise ValueError(f"{where}: n_inner must be null (4 * n_embd) or a positive int, got {n_inner!r}")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise ValueError(f"{where}: layer_norm_epsilon must be a positive finite number, got {eps!r}")
    if sizes["n_embd"] % sizes["n_head"]:
        raise ValueError(f"{where}: n_embd={sizes['n_embd']} is not divisible by n_head={sizes['n_head']}")
    return GPTConfig(vocab_size=sizes["vocab_size"], context=sizes["n_positions"], d_model=sizes["n_embd"],
                     n_layer=sizes["n_layer"], n_head=sizes["n_head"], d_mlp=n_inner or 0, ln_eps=float(eps))


def hf_config_from_gpt(config: GPTConfig, dtype) -> dict:
    """The config.json transformers' GPT2LMHeadModel.from_pretrained needs to compute what minilora computes.

    The dropout rates are 0: minilora's base model has no dropout (LoRA's own dropout is the adapter's)."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.context, "n_embd": config.d_model,
        "n_layer": config.n_layer, "n_head": config.n_head,
        "n_inner": None if config.d_mlp == 4 * config.d_model else config.d_mlp,
        "activation_function": "gelu_new", "layer_norm_epsilon": config.ln_eps,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
        **{name: want for name, (want, _) in REQUIRED.items()},
        "bos_token_id": None, "eos_token_id": None, "use_cache": True, "dtype": np.dtype(dtype).name,
    }


# ---- tensors: one table for both directions -------------------------------------------------------------

def _transpose(a):
    return np.ascontiguousarray(a.T)


def _split3(a):
    return [np.ascontiguousarray(p) for p in np.split(a, 3, axis=-1)]


def tensor_map(config: GPTConfig) -> list[tuple[str, tuple, list[str], callable, callable]]:
    """[(HF name without prefix, its shape, minilora paths, to_minilora(array) -> [arrays],
    to_hf([arrays]) -> array)] for every tensor of the model."""
    d, m, V = config.d_model, config.d_mlp, config.vocab_size
    same = (lambda a: [a], lambda xs: xs[0])
    conv1d = (lambda a: [_transpose(a)], lambda xs: _transpose(xs[0]))
    fused_w = (lambda a: [_transpose(p) for p in _split3(a)], lambda xs: _transpose(np.concatenate(xs, axis=0)))
    fused_b = (_split3, lambda xs: np.concatenate(xs))
    rows = [("wte.weight", (V, d), ["wte"], *same), ("wpe.weight", (config.context, d), ["wpe"], *same)]
    for i in range(config.n_layer):
        h, b = f"h.{i}", f"blocks.{i}"
        qkv = [f"{b}.{t}" for t in ("wq", "wk", "wv")]
        rows += [
            (f"{h}.ln_1.weight", (d,), [f"{b}.ln1.g"], *same), (f"{h}.ln_1.bias", (d,), [f"{b}.ln1.b"], *same),
            (f"{h}.attn.c_attn.weight", (d, 3 * d), [f"{p}.W" for p in qkv], *fused_w),
            (f"{h}.attn.c_attn.bias", (3 * d,), [f"{p}.b" for p in qkv], *fused_b),
            (f"{h}.attn.c_proj.weight", (d, d), [f"{b}.wo.W"], *conv1d),
            (f"{h}.attn.c_proj.bias", (d,), [f"{b}.wo.b"], *same),
            (f"{h}.ln_2.weight", (d,), [f"{b}.ln2.g"], *same), (f"{h}.ln_2.bias", (d,), [f"{b}.ln2.b"], *same),
            (f"{h}.mlp.c_fc.weight", (d, m), [f"{b}.mlp_in.W"], *conv1d),
            (f"{h}.mlp.c_fc.bias", (m,), [f"{b}.mlp_in.b"], *same),
            (f"{h}.mlp.c_proj.weight", (m, d), [f"{b}.mlp_out.W"], *conv1d),
            (f"{h}.mlp.c_proj.bias", (d,), [f"{b}.mlp_out.b"], *same),
        ]
    rows += [("ln_f.weight", (d,), ["ln_f.g"], *same), ("ln_f.bias", (d,), ["ln_f.b"], *same)]
    return rows


def _strip_prefix(arrays: dict, where) -> tuple[dict, str]:
    """Names without "transformer." (all of them carry it, or none does; lm_head never does)."""
    body = [k for k in arrays if k != "lm_head.weight"]
    prefixed = [k for k in body if k.startswith("transformer.")]
    if prefixed and len(prefixed) != len(body):
        odd = next(k for k in body if not k.startswith("transformer."))
        raise ValueError(f"{where}: tensor {odd!r} lacks the 'transformer.' prefix the others have")
    prefix = "transformer." if prefixed else ""
    return {(k[len(prefix):] if k != "lm_head.weight" else k): v for k, v in arrays.items()}, prefix


def _check_buffers(arrays: dict, config: GPTConfig, prefix: str, where) -> None:
    """Pop the old causal-mask buffers, refusing any that is not GPT-2's causal mask."""
    for i in range(config.n_layer):
        name = f"h.{i}.attn.bias"
        if name in arrays:
            mask = arrays.pop(name)
            n = mask.shape[-1] if mask.ndim == 4 else -1
            causal = mask.shape == (1, 1, n, n) and np.array_equal(mask[0, 0], np.tril(np.ones((n, n), mask.dtype)))
            if not causal:
                raise ValueError(f"{where}: buffer {prefix}{name} (shape {mask.shape}) is not GPT-2's causal mask "
                                 "(1, 1, n, n) of ones on and below the diagonal, zeros above")
        name = f"h.{i}.attn.masked_bias"
        if name in arrays:
            fill = arrays.pop(name)
            if fill.size != 1 or fill.dtype.kind != "f" or not float(fill.reshape(())) <= -1e4:
                raise ValueError(f"{where}: buffer {prefix}{name} must be one number <= -1e4 (the masked scores' "
                                 f"fill value), got {fill!r}")


def _check_head(arrays: dict, dtypes: dict, prefix: str, where) -> None:
    if "lm_head.weight" in arrays:
        head, wte = arrays.pop("lm_head.weight"), arrays.get("wte.weight")
        if (wte is None or head.shape != wte.shape or dtypes["lm_head.weight"] != dtypes[f"{prefix}wte.weight"]
                or not np.array_equal(head, wte)):
            raise ValueError(f"{where}: lm_head.weight differs from {prefix}wte.weight: an untied output layer, "
                             "which minilora cannot represent (its output layer is wte)")


def params_from_hf(arrays: dict, dtypes: dict, config: GPTConfig, where) -> dict:
    """A minilora parameter tree from transformers' GPT-2 tensors (names with or without "transformer.")."""
    arrays, prefix = _strip_prefix(dict(arrays), where)
    _check_buffers(arrays, config, prefix, where)
    _check_head(arrays, dtypes, prefix, where)
    flat = {}
    for name, shape, paths, to_minilora, _ in tensor_map(config):
        a = take_tensor(arrays, name, shape, where, prefix + name, f" (for a GPT-2 with {config})")
        flat.update(zip(paths, to_minilora(a), strict=True))
    if arrays:
        extra = sorted(prefix + k if k != "lm_head.weight" else k for k in arrays)
        raise ValueError(f"{where}: unexpected tensor(s) {extra[:5]}{' ...' if len(extra) > 5 else ''}: "
                         "not part of a GPT-2 minilora can represent")
    dtype = np.result_type(*{a.dtype for a in flat.values()})  # float32, or float64 if any (exact widening)
    order = expected_param_shapes(config)  # init_params' order of keys
    return unflatten({k: flat[k].astype(dtype, copy=False) for k in order})


# ---- files ------------------------------------------------------------------------------------------------

def _read_weights(path: Path, allow_nonfinite: bool) -> tuple[dict, dict, str]:
    """(arrays, file dtypes, description) of model.safetensors or of the shards an index lists."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        arrays, dtypes, _ = read_finite_tensors(single, allow_nonfinite)
        return arrays, dtypes, str(single)
    if index.is_file():
        weight_map = read_json(index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map' object")
        arrays, dtypes = {}, {}
        for shard in sorted(set(weight_map.values())):
            a, d, _ = read_finite_tensors(path / shard, allow_nonfinite)
            stray = [k for k in a if weight_map.get(k) != shard]
            if stray:
                raise ValueError(f"{path / shard}: tensor {stray[0]!r} is not listed for this shard in {index.name}")
            arrays.update(a)
            dtypes.update(d)
        missing = sorted(set(weight_map) - set(arrays))
        if missing:
            raise ValueError(f"{index}: tensor {missing[0]!r} is listed but in no shard")
        return arrays, dtypes, str(index)
    if (path / "pytorch_model.bin").is_file():
        raise ValueError(f"{path} has only pytorch_model.bin, a pickle, which minilora never loads; convert it "
                         "with transformers: GPT2LMHeadModel.from_pretrained(path).save_pretrained(path) "
                         "(writes model.safetensors)")
    raise FileNotFoundError(f"{path} has no model.safetensors (nor model.safetensors.index.json)")


def load_hf_gpt2(path, *, allow_nonfinite: bool = False) -> tuple[dict, GPTConfig]:
    """(params, config) from a transformers GPT-2 folder: config.json + model.safetensors (or its shards).

    F16 and BF16 tensors are widened exactly to float32; float32 and float64 stay as they are. Refuses (naming
    it) a config field minilora cannot compute, a missing, unexpected or misshapen tensor, an untied head, and
    NaN/inf in any tensor (``allow_nonfinite=True`` loads those anyway).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a folder (expected config.json + model.safetensors)")
    config = gpt_config_from_hf(read_json(path / "config.json"), str(path / "config.json"))
    arrays, dtypes, where = _read_weights(path, allow_nonfinite)
    params = params_from_hf(arrays, dtypes, config, where)
    check_params(params, config)
    return params, config


def save_hf_gpt2(path, params, config: GPTConfig) -> Path:
    """Write config.json + model.safetensors that transformers' GPT2LMHeadModel.from_pretrained(path) loads.

    Each file is written atomically (a crash leaves the old file or the new one). Names carry the
    "transformer." prefix, lm_head is left out (tied), tensors keep the parameters' dtype.
    """
    check_params(params, config)
    flat = flatten(params)
    tensors = {f"transformer.{name}": np.ascontiguousarray(to_hf([flat[p] for p in paths]))
               for name, _, paths, _, to_hf in tensor_map(config)}
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / "model.safetensors", safetensors.numpy.save(tensors, metadata={"format": "pt"}))
    atomic_write_json(path / "config.json", hf_config_from_gpt(config, flat["wte"].dtype))
    return path
