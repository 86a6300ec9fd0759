"""GPTConfig: the shape of the transformer, one field per architectural choice; and the field checks that every
config of the package (GPTConfig, LoraConfig, TrainConfig, AdamW) runs on its values."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

# ---- field checks shared by every config (GPTConfig, LoraConfig, TrainConfig, AdamW) --------------------------
# Each returns the value in its canonical Python type or raises ValueError naming "Owner.field", what was
# expected and what was given (an empty owner names the field alone, for function arguments). numpy scalars
# are accepted (a sweep over np.arange gives them); bools are not numbers here; None and strings are neither
# numbers nor bools.


def _label(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _bounds_text(more_than, at_least, less_than, at_most) -> str:
    bounds = zip((">", ">=", "<", "<="), (more_than, at_least, less_than, at_most), strict=True)
    return " and ".join(f"{op} {v:g}" for op, v in bounds if v is not None)


def real_number(owner: str, name: str, value, *, more_than=None, at_least=None, less_than=None,
                at_most=None) -> float:
    """``value`` as a float: a finite real number (not a bool, None or a string) within the bounds given."""
    try:
        v = float(value) if _is_real(value) else math.nan
    except OverflowError:  # an int beyond float's range
        v = math.nan
    ok = math.isfinite(v)
    if ok:
        ok = ((more_than is None or v > more_than) and (at_least is None or v >= at_least)
              and (less_than is None or v < less_than) and (at_most is None or v <= at_most))
    if not ok:
        bounds = _bounds_text(more_than, at_least, less_than, at_most)
        raise ValueError(f"{_label(owner, name)} must be a finite number{' ' + bounds if bounds else ''}, "
                         f"got {value!r}")
    return v


def whole_number(owner: str, name: str, value, *, at_least: int = 0) -> int:
    """``value`` as an int: an integer (Python or numpy, not a bool or a float) >= at_least."""
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))) or value < at_least:
        kind = "a positive int" if at_least == 1 else f"an int >= {at_least}"
        raise ValueError(f"{_label(owner, name)} must be {kind}, got {value!r}")
    return int(value)


def boolean(owner: str, name: str, value) -> bool:
    """``value`` as a bool: True or False only ("false", 0 and None are refused, not guessed)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{_label(owner, name)} must be True or False, got {value!r}")
    return bool(value)


def choice(owner: str, name: str, value, options) -> str:
    """``value`` if it is one of ``options``, else a ValueError naming owner.name and the options."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{_label(owner, name)} must be one of {tuple(options)}, got {value!r}")
    return value


def check_fields(cls, data) -> dict:
    """``data`` as a dict of fields of the dataclass ``cls``; unknown names are an error, not silently dropped."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}.from_dict needs a dict, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    return dict(data)


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 256
    """Number of token ids. 256 = one per byte: the byte-level tokenizer needs no vocabulary file."""
    context: int = 128
    """Longest sequence the model reads; it sizes the learned position table wpe (context, d_model)."""
    d_model: int = 128
    """Width of the residual stream; every adapted matrix is d_model wide on at least one side."""
    n_layer: int = 4
    """Number of transformer blocks (L in the paper's parameter formula)."""
    n_head: int = 4
    """Attention heads; each has d_model / n_head dimensions. W_q, W_k, W_v stay single (d, d) matrices, as in
    the paper, and are split into heads only inside attention."""
    d_mlp: int = 0
    """Hidden width of the MLP; 0 means 4 · d_model, GPT-2's ratio."""
    ln_eps: float = 1e-5
    """LayerNorm epsilon, GPT-2's value; matters when comparing against transformers to 1e-5."""

    def __post_init__(self):
        for name in ("vocab_size", "context", "d_model", "n_layer", "n_head", "d_mlp"):
            value = whole_number("GPTConfig", name, getattr(self, name), at_least=0 if name == "d_mlp" else 1)
            object.__setattr__(self, name, value)  # numpy ints become ints: the config is saved as JSON
        if self.d_model % self.n_head:
            raise ValueError(
                f"GPTConfig.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        object.__setattr__(self, "ln_eps", real_number("GPTConfig", "ln_eps", self.ln_eps, more_than=0, less_than=1))
        if self.d_mlp == 0:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)

    @property
    def d_head(self) -> int:
        """Width of one attention head, d_model / n_head."""
        return self.d_model // self.n_head

    def matrix_shape(self, name: str) -> tuple[int, int]:
        """(d_out, d_in) of an adaptable matrix of one block."""
        d, m = self.d_model, self.d_mlp
        shapes = {"wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, d), "mlp_in": (m, d), "mlp_out": (d, m)}
        if name not in shapes:
            raise ValueError(f"matrix name must be one of {sorted(shapes)}, got {name!r}")
        return shapes[name]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GPTConfig":
        return cls(**check_fields(cls, data))

    @classmethod
    def preset(cls, name: str) -> "GPTConfig":
        """A named configuration; see PRESETS."""
        if name not in PRESETS:
            raise ValueError(f"preset name must be one of {sorted(PRESETS)}, got {name!r}")
        return PRESETS[name]


PRESETS = {
    # Gradient checks and unit tests: every shape distinct enough to catch a transposed matrix, tiny enough for
    # float64 finite differences over all parameters.
    "tiny": GPTConfig(vocab_size=256, context=16, d_model=16, n_layer=2, n_head=2, d_mlp=24),
    # The shipped base checkpoint (minilora/assets/base.safetensors): byte-level, 842,496 parameters, 3.4 MB.
    "base": GPTConfig(vocab_size=256, context=128, d_model=128, n_layer=4, n_head=4),
    # The configuration the benchmark times (issue 2): same widths as base, 64-token context.
    "bench": GPTConfig(vocab_size=256, context=64, d_model=128, n_layer=4, n_head=4),
    # GPT-2 small's shapes (124M parameters): for reading HF GPT-2 weights, never trained here.
    "gpt2": GPTConfig(vocab_size=50257, context=1024, d_model=768, n_layer=12, n_head=12),
    # GPT-3 175B's shapes (d_model 12288, 96 layers): for parameter counts only. init_lora works on it because
    # it allocates A and B alone; init_params would need 700 GB.
    "gpt3-175b": GPTConfig(vocab_size=50257, context=2048, d_model=12288, n_layer=96, n_head=96),
}
