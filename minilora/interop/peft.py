"""PEFT LoRA adapters for GPT-2 (adapter_config.json + adapter_model.safetensors), read and written without torch.

PEFT adapts transformers' GPT-2 modules; minilora adapts matrices. The correspondence:

    PEFT module (tensor names "base_model.model.transformer.h.N.<module>.lora_A.weight" (r, in), ".lora_B.weight"
    (out, r))                                  minilora adapter(s) of block N
    attn.c_attn  A (r, d), B (3d, r)           wq, wk, wv, each with the same A and B = rows [0:d], [d:2d], [2d:3d]
    attn.c_proj  A (r, d), B (d, r)            wo
    mlp.c_fc     A (r, d), B (m, r)            mlp_in
    mlp.c_proj   A (r, m), B (d, r)            mlp_out

What is exact and what is not:
- Reading is exact: the minilora adapter computes the same function as PEFT's (same A and B, same scale
  lora_alpha/r or lora_alpha/√r; c_attn's one (3d × d) update is the three stacked per-matrix updates).
- Writing is exact too. minilora's own A's for wq, wk, wv become one c_attn adapter of rank n·r (n = how many
  of the three are adapted): A' = [A_q; A_v] stacked, B' block-structured ([[B_q, 0], [0, 0], [0, B_v]] for
  wq and wv), and lora_alpha' chosen so that PEFT's scale equals minilora's (n·α for α/r, √n·α with rsLoRA;
  the float closest to that whose scale is bit-identical when one exists). wo, mlp_in, mlp_out keep rank r, so
  PEFT's rank_pattern / alpha_pattern give c_attn its rank when both kinds are adapted.
- Not the same in training: PEFT trains the one shared A of c_attn (and the zero blocks of B' fill in), minilora
  trains separate A's; PEFT draws one dropout mask on c_attn's input, minilora one per matrix.
- minilora's LoraConfig has one r and one alpha. A PEFT file whose rank_pattern / alpha_pattern give its
  modules different ranks but one scale (bit for bit) is read with every adapter zero-padded to the largest
  rank: exact, in training too (the zero rows of A meet zero columns of B, so both gradients stay zero).
  Different scales are refused, naming the pattern (never approximated); so is a file that does not adapt the
  same modules in every adapted block.
- Files written here carry minilora's LoraConfig in the safetensors metadata ("minilora"); PEFT ignores it.
  Reading such a file gives back the very tree that was saved (bitwise), after checking that the tensors still
  have the structure written (zero blocks still zero); ``minilora_metadata=False`` reads it as PEFT would.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import safetensors.numpy

from ..checkpoint import atomic_write_bytes, atomic_write_json
from ..config import GPTConfig
from ..lora import LoraConfig
from ..tree import flatten
from ..validate import check_flat, expected_lora_shapes
from .files import read_finite_tensors, read_json, take_tensor
from .peft_config import PeftOptions, options_from_peft

PREFIX = "base_model.model."
QKV = ("wq", "wk", "wv")
MODULES = {"attn.c_attn": QKV, "attn.c_proj": ("wo",), "mlp.c_fc": ("mlp_in",), "mlp.c_proj": ("mlp_out",)}
SUFFIX = {"wo": "attn.c_proj", "mlp_in": "mlp.c_fc", "mlp_out": "mlp.c_proj"}
TARGET_NAME = {"attn.c_attn": "c_attn", "attn.c_proj": "attn.c_proj", "mlp.c_fc": "mlp.c_fc",
               "mlp.c_proj": "mlp.c_proj"}
HINTS = {"lora_magnitude_vector": "DoRA's magnitude vector", "lora_B.bias": "lora_bias",
         "modules_to_save": "modules_to_save", "lora_embedding": "an embedding adapter",
         "original_module": "modules_to_save"}


# ---- GPT-2's module names, as PEFT sees them -------------------------------------------------------------

def gpt2_modules(n_layer: int, root: str) -> list[str]:
    """Every module name of transformers' GPT2LMHeadModel (root "transformer.") or GPT2Model (root "")."""
    names = ["", "transformer"] if root else [""]
    names += [f"{root}{n}" for n in ("wte", "wpe", "drop", "h")]
    for i in range(n_layer):
        h = f"{root}h.{i}"
        names += [h] + [f"{h}.{n}" for n in ("ln_1", "attn", "attn.c_attn", "attn.c_proj", "attn.attn_dropout",
                                             "attn.resid_dropout", "ln_2", "mlp", "mlp.c_fc", "mlp.c_proj",
                                             "mlp.act", "mlp.dropout")]
    names.append(f"{root}ln_f")
    return names + (["lm_head"] if root else [])


def _module_shape(suffix: str, config: GPTConfig) -> tuple[int, int]:
    """(out, in) of a GPT-2 Conv1D layer."""
    d, m = config.d_model, config.d_mlp
    return {"attn.c_attn": (3 * d, d), "attn.c_proj": (d, d), "mlp.c_fc": (m, d), "mlp.c_proj": (d, m)}[suffix]


def _split_key(key: str, root: str) -> tuple[int, str] | None:
    """(block index, module suffix) of an adaptable module name, else None."""
    head = f"{root}h."
    if not key.startswith(head):
        return None
    index, _, suffix = key[len(head):].partition(".")
    return (int(index), suffix) if suffix in MODULES else None


def _root_of(names, where) -> str:
    for name in names:
        if not name.startswith(PREFIX):
            raise ValueError(f"{where}: tensor {name!r} does not start with {PREFIX!r} as PEFT's names do")
    return "" if any(n.startswith(f"{PREFIX}h.") for n in names) else "transformer."


# ---- reading ---------------------------------------------------------------------------------------------

def _matched(opts: PeftOptions, config: GPTConfig, root: str, where) -> dict:
    """{(block, suffix): (key, r, alpha)} of the modules PEFT adapts under these options."""
    modules = {}
    for key in gpt2_modules(config.n_layer, root):
        if not opts.matches(key):
            continue
        place = _split_key(key, root)
        if place is None:
            raise ValueError(f"{where}: target_modules {opts.target_modules!r} matches module {key!r}, which "
                             f"minilora cannot adapt (only {', '.join(MODULES)} of each block)")
        modules[place] = (key, *opts.rank_alpha(key))
    if not modules:
        raise ValueError(f"{where}: target_modules {opts.target_modules!r} matches no module of this GPT-2")
    return modules


def _take_tensors(arrays: dict, modules: dict, config: GPTConfig, where) -> dict:
    """{(block, suffix): (A, B)}, refusing a missing, unexpected or misshapen tensor by name."""
    arrays = dict(arrays)
    out = {}
    for place, (key, r, _) in modules.items():
        d_out, d_in = _module_shape(place[1], config)
        out[place] = tuple(take_tensor(arrays, f"{PREFIX}{key}.{factor}.weight", shape, where,
                                       why=f" (the config adapts {key} with r={r})")
                           for factor, shape in (("lora_A", (r, d_in)), ("lora_B", (d_out, r))))
    if arrays:
        name = sorted(arrays)[0]
        hint = next((f" ({what}, which minilora does not support)" for k, what in HINTS.items() if k in name), "")
        raise ValueError(f"{where}: unexpected tensor {name}{hint}; the config adapts only "
                         f"{sorted(k for k, _, _ in modules.values())[:4]} ...")
    return out


def _alpha_for(scale: float, r: int, use_rslora: bool) -> float | None:
    """An alpha whose scale at rank r is ``scale`` bit for bit (among the floats nearest scale·r), or None."""
    of = (lambda a: a / math.sqrt(r)) if use_rslora else (lambda a: a / r)
    first = scale * (math.sqrt(r) if use_rslora else r)
    candidates, down, up = [first], first, first
    for _ in range(4):
        down, up = math.nextafter(down, 0.0), math.nextafter(up, math.inf)
        candidates += [up, down]
    return next((a for a in candidates if of(a) == scale), None)


def _common_rank_alpha(modules: dict, opts: PeftOptions, where) -> tuple[int, float]:
    """The one (r, alpha) of every adapted module; or, where the ranks differ but every module has the same
    scale (bit for bit), the largest rank and an alpha giving that scale: the smaller adapters are then
    zero-padded, which changes neither the function nor training (zero rows of A meet zero columns of B, so
    both gradients stay zero)."""
    values = {(r, alpha) for _, r, alpha in modules.values()}
    if len(values) == 1:
        return next(iter(values))
    scales = {opts.scale(key) for key, _, _ in modules.values()}
    R = max(r for r, _ in values)
    alpha = _alpha_for(next(iter(scales)), R, opts.use_rslora) if len(scales) == 1 else None
    if alpha is not None:
        return R, alpha
    (key1, *ra1), (key2, *ra2) = next(((a, b) for a in modules.values() for b in modules.values()
                                      if opts.scale(a[0]) != opts.scale(b[0])), (None, None))
    patterns = {n: dict(p) for n, p in (("rank_pattern", opts.rank_pattern), ("alpha_pattern",
                                                                               opts.alpha_pattern)) if p}
    raise ValueError(f"{where}: {patterns or 'the patterns'} give {key1} (r, alpha) = {tuple(ra1)} but "
                     f"{key2} {tuple(ra2)}, different scales; minilora's LoraConfig has one r and one alpha "
                     "for every adapted matrix, so this adapter cannot be represented exactly")


def _check_uniform(modules: dict, opts: PeftOptions, where) -> tuple[int, float, tuple]:
    """(r, alpha, layers) when every adapted block adapts the same modules, with one scale: the adapters
    minilora's LoraConfig can represent."""
    r, alpha = _common_rank_alpha(modules, opts, where)
    layers = sorted({i for i, _ in modules})
    suffixes = sorted({s for _, s in modules})
    for i in layers:
        for s in suffixes:
            if (i, s) not in modules:
                raise ValueError(f"{where}: block {i} does not adapt {s} while another block does; minilora "
                                 "adapts the same matrices in every adapted block")
    return r, alpha, tuple(layers)


def _as_minilora(pairs: dict, opts: PeftOptions, modules: dict, config: GPTConfig, where) -> tuple[dict, LoraConfig]:
    """PEFT's adapter as minilora's: c_attn's one A copied to wq, wk, wv and its B split in three."""
    r, alpha, layers = _check_uniform(modules, opts, where)
    d = config.d_model
    blocks = [{} for _ in range(config.n_layer)]
    targets = set()
    for (i, suffix), (A, B) in pairs.items():
        pad = r - A.shape[0]  # > 0 only for a smaller rank with the same scale: zero rows of A, columns of B
        A, B = np.pad(A, ((0, pad), (0, 0))), np.pad(B, ((0, 0), (0, pad)))  # (r, d_in), (d_out, r)
        for k, t in enumerate(MODULES[suffix]):
            rows = B[k * d:(k + 1) * d] if suffix == "attn.c_attn" else B  # (d_out, r)
            blocks[i][t] = {"A": A.copy(), "B": np.ascontiguousarray(rows)}
            targets.add(t)
    lora_config = LoraConfig(r=r, alpha=float(alpha), targets=tuple(targets), dropout=opts.lora_dropout,
                             use_rslora=opts.use_rslora,
                             layers=None if layers == tuple(range(config.n_layer)) else layers)
    try:
        lora_config.check_against(config)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    lora = {"blocks": blocks}
    check_flat(flatten(lora), expected_lora_shapes(config, lora_config), f"adapter {where}")
    return lora, lora_config


def _from_metadata(pairs: dict, opts: PeftOptions, modules: dict, info: dict, config: GPTConfig, where):
    """The tree minilora saved, recovered exactly from the layout save_peft_adapter wrote."""
    hint = "; pass minilora_metadata=False to read it as a plain PEFT adapter"
    if not isinstance(info, dict) or info.get("kind") != "peft_adapter" or info.get("version") != 1:
        raise ValueError(f"{where}: the 'minilora' metadata is not a version-1 PEFT adapter record{hint}")
    lora_config = LoraConfig.from_dict(info["lora_config"])
    planned = _plan(lora_config, config)
    got = {place: (r, alpha) for place, (_, r, alpha) in modules.items()}
    want = {place: (rank, alpha) for place, (_, rank, alpha) in planned.items()}
    if got != want or opts.use_rslora != lora_config.use_rslora or opts.lora_dropout != lora_config.dropout:
        raise ValueError(f"{where}: adapter_config.json no longer matches the minilora LoraConfig recorded in "
                         f"the file's metadata ({lora_config}){hint}")
    r, d = lora_config.r, config.d_model
    blocks = [{} for _ in range(config.n_layer)]
    for place, (targets, _, _) in planned.items():
        A, B = pairs[place]
        for j, t in enumerate(targets):
            blocks[place[0]][t] = {"A": np.ascontiguousarray(A[j * r:(j + 1) * r])}
        for k in range(len(MODULES[place[1]])):
            rows = B[k * d:(k + 1) * d] if place[1] == "attn.c_attn" else B  # (d_out, n r)
            for j, t in enumerate(targets):
                cols = np.ascontiguousarray(rows[:, j * r:(j + 1) * r])  # (d_out, r)
                if MODULES[place[1]][k] == t:
                    blocks[place[0]][t]["B"] = cols
                elif np.any(cols):
                    raise ValueError(f"{where}: {modules[place][0]}.lora_B.weight has nonzero values where the "
                                     f"adapter minilora wrote keeps zeros (rows of {MODULES[place[1]][k]}, "
                                     f"columns of {t}){hint}")
    return {"blocks": blocks}, lora_config


def load_peft_adapter(path, config: GPTConfig, *, allow_nonfinite: bool = False,
                      minilora_metadata: bool = True) -> tuple[dict, LoraConfig]:
    """(lora, lora_config) from a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) of a
    GPT-2 whose shape is ``config``.

    F16/BF16 tensors are widened exactly to float32. Refuses, naming it, any option, module, tensor name or shape
    minilora does not represent exactly, and NaN/inf (``allow_nonfinite=True`` loads those anyway).
    """
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    path = Path(path)
    config_file, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not weights.is_file() and (path / "adapter_model.bin").is_file():
        raise ValueError(f"{path} has only adapter_model.bin, a pickle, which minilora never loads; re-save it "
                         "with PEFT's save_pretrained (safe_serialization=True writes adapter_model.safetensors)")
    opts = options_from_peft(read_json(config_file), str(config_file))
    arrays, _, metadata = read_finite_tensors(weights, allow_nonfinite)
    modules = _matched(opts, config, _root_of(arrays, weights), str(config_file))
    pairs = _take_tensors(arrays, modules, config, str(weights))
    dtype = np.result_type(*{a.dtype for pair in pairs.values() for a in pair})
    pairs = {k: (A.astype(dtype, copy=False), B.astype(dtype, copy=False)) for k, (A, B) in pairs.items()}
    if minilora_metadata and "minilora" in metadata:
        try:
            info = json.loads(metadata["minilora"])
        except json.JSONDecodeError:
            info = None
        return _from_metadata(pairs, opts, modules, info, config, str(weights))
    return _as_minilora(pairs, opts, modules, config, str(path))


# ---- writing ---------------------------------------------------------------------------------------------

def _c_attn_alpha(lora_config: LoraConfig, n: int) -> float:
    """lora_alpha for c_attn at rank n·r whose PEFT scale equals lora_config.scale (bit for bit where one of the
    floats nearest to n·α, or √n·α with rsLoRA, gives it; else that float, within one ulp of the scale)."""
    first = lora_config.alpha * (math.sqrt(n) if lora_config.use_rslora else n)
    exact = _alpha_for(lora_config.scale, n * lora_config.r, lora_config.use_rslora)
    return first if exact is None else exact


def _plan(lora_config: LoraConfig, config: GPTConfig) -> dict:
    """{(block, suffix): (minilora targets it holds, rank, lora_alpha)} of the PEFT adapter that equals this one."""
    groups = {}
    qkv = tuple(t for t in QKV if t in lora_config.targets)
    if qkv:
        groups["attn.c_attn"] = (qkv, len(qkv) * lora_config.r, _c_attn_alpha(lora_config, len(qkv)))
    for t in lora_config.targets:
        if t in SUFFIX:
            groups[SUFFIX[t]] = ((t,), lora_config.r, lora_config.alpha)
    return {(i, s): g for i in lora_config.adapted_layers(config) for s, g in groups.items()}


def _plain_number(x: float):
    return int(x) if float(x).is_integer() and abs(x) < 2 ** 53 else x


def peft_config_for(lora_config: LoraConfig, config: GPTConfig) -> dict:
    """The adapter_config.json of the PEFT adapter that equals this minilora adapter."""
    plan = _plan(lora_config, config)
    suffixes = sorted({s for _, s in plan}, key=list(MODULES).index)
    ranks = {s: (rank, alpha) for (_, s), (_, rank, alpha) in plan.items()}
    r, alpha = lora_config.r, lora_config.alpha
    rank_pattern, alpha_pattern = {}, {}
    if "attn.c_attn" in ranks and ranks["attn.c_attn"] != (r, alpha):
        if len(suffixes) == 1:
            r, alpha = ranks["attn.c_attn"]
        else:
            rank_pattern, alpha_pattern = {"c_attn": ranks["attn.c_attn"][0]}, {"c_attn": ranks["attn.c_attn"][1]}
    layers = None if lora_config.layers is None else list(lora_config.adapted_layers(config))
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None, "inference_mode": True,
        "r": r, "lora_alpha": _plain_number(alpha), "target_modules": [TARGET_NAME[s] for s in suffixes],
        "lora_dropout": lora_config.dropout, "use_rslora": lora_config.use_rslora, "fan_in_fan_out": True,
        "bias": "none", "modules_to_save": None, "init_lora_weights": True, "use_dora": False, "lora_bias": False,
        "layers_to_transform": layers, "layers_pattern": None if layers is None else "h",
        "rank_pattern": rank_pattern, "alpha_pattern": {k: _plain_number(v) for k, v in alpha_pattern.items()},
    }


def _peft_tensors(lora: dict, lora_config: LoraConfig, config: GPTConfig) -> dict:
    tensors = {}
    d = config.d_model
    for (i, suffix), (targets, rank, _) in _plan(lora_config, config).items():
        adapters = [lora["blocks"][i][t] for t in targets]
        A = np.concatenate([ab["A"] for ab in adapters], axis=0)  # (n r, d_in): the A's stacked
        d_out = _module_shape(suffix, config)[0]
        B = np.zeros((d_out, rank), dtype=A.dtype)  # (d_out, n r): each B in its own row and column block
        r = lora_config.r
        for j, (t, ab) in enumerate(zip(targets, adapters, strict=True)):
            k = MODULES[suffix].index(t)
            rows = slice(k * d, (k + 1) * d) if suffix == "attn.c_attn" else slice(None)
            B[rows, j * r:(j + 1) * r] = ab["B"]
        key = f"{PREFIX}transformer.h.{i}.{suffix}"
        tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = A, B
    return tensors


def save_peft_adapter(path, lora, lora_config: LoraConfig, config: GPTConfig) -> Path:
    """Write a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) that PEFT's
    PeftModel.from_pretrained(GPT2LMHeadModel, path) loads, computing what minilora computes. Atomic per file."""
    if not isinstance(lora_config, LoraConfig):
        raise TypeError(f"lora_config must be a LoraConfig, got {type(lora_config).__name__}")
    check_flat(flatten(lora), expected_lora_shapes(config, lora_config), "lora")
    tensors = _peft_tensors(lora, lora_config, config)
    info = {"kind": "peft_adapter", "version": 1, "lora_config": lora_config.to_dict()}
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / "adapter_model.safetensors",
                       safetensors.numpy.save(tensors, metadata={"format": "pt", "minilora": json.dumps(info)}))
    atomic_write_json(path / "adapter_config.json", peft_config_for(lora_config, config))
    return path
