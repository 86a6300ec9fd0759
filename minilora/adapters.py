"""Named adapters on one untouched base: add, switch, disable, delete (PEFT's add_adapter / set_adapter /
disable_adapter / delete_adapter, as pure functions).

A bank is a plain dict, and every function returns a new one; nothing is modified in place, and the base
parameters are never merged into or copied (each bank shares the same base arrays):

    {"base": params, "config": GPTConfig, "adapters": {name: (lora, lora_config)}, "active": name or None}

Switching tasks is switching which (lora, lora_config) the forward pass uses: the paper's "quickly switch
tasks by swapping the LoRA weights" with the base kept frozen. ``merged(bank)`` gives the active adapter's
merged weights (a new tree) when no extra latency is wanted; ``forward_mixed(bank, tokens, names)`` runs
a different named adapter per row.
"""

from __future__ import annotations

import numpy as np

from .config import GPTConfig
from .lora import LoraConfig, merge
from .mixed import check_adapters
from .mixed import forward_mixed as _forward_mixed
from .model import forward as _forward
from .validate import check_params

KEYS = {"base", "config", "adapters", "active"}


def _check_bank(bank) -> dict:
    if not isinstance(bank, dict) or set(bank) != KEYS:
        raise TypeError(f"bank must be a dict with keys {sorted(KEYS)} (from adapters.new), "
                        f"got {type(bank).__name__}")
    return bank


def _check_name(bank: dict, name, *, known: bool) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"adapter name must be a non-empty string, got {name!r}")
    if known and name not in bank["adapters"]:
        raise KeyError(f"no adapter named {name!r}; the bank holds {sorted(bank['adapters'])}")
    if not known and name in bank["adapters"]:
        raise ValueError(f"an adapter named {name!r} exists already; delete it first to replace it")
    return name


def new(params, config: GPTConfig) -> dict:
    """An empty bank on this base (checked once here)."""
    check_params(params, config)
    return {"base": params, "config": config, "adapters": {}, "active": None}


def add(bank: dict, name: str, lora, lora_config: LoraConfig) -> dict:
    """A bank that also holds adapter ``name`` (checked against the base). The active adapter is unchanged."""
    _check_bank(bank)
    _check_name(bank, name, known=False)
    check_adapters([(lora, lora_config)], bank["base"])
    return {**bank, "adapters": {**bank["adapters"], name: (lora, lora_config)}}


def switch(bank: dict, name: str) -> dict:
    """A bank whose forward pass uses adapter ``name``."""
    return {**_check_bank(bank), "active": _check_name(bank, name, known=True)}


def disable(bank: dict) -> dict:
    """A bank whose forward pass is the base model's; the adapters stay (``switch`` turns one on again)."""
    return {**_check_bank(bank), "active": None}


def delete(bank: dict, name: str) -> dict:
    """A bank without adapter ``name``; deleting the active adapter leaves the base model active."""
    _check_name(_check_bank(bank), name, known=True)
    rest = {k: v for k, v in bank["adapters"].items() if k != name}
    return {**bank, "adapters": rest, "active": None if bank["active"] == name else bank["active"]}


def active(bank: dict):
    """(name, lora, lora_config) of the active adapter, or None when the base model is active."""
    name = _check_bank(bank)["active"]
    return None if name is None else (name, *bank["adapters"][name])


def forward(bank: dict, tokens, *, rng=None):
    """Logits (B, T, V) of the base with the active adapter (unmerged), or of the base alone."""
    current = active(bank)
    if current is None:
        return _forward(bank["base"], tokens, bank["config"])
    _, lora, lora_config = current
    return _forward(bank["base"], tokens, bank["config"], lora, lora_config, rng=rng)


def merged(bank: dict) -> dict:
    """Parameters with the active adapter merged in (a new tree; the bank's base is untouched), or the base."""
    current = active(bank)
    return bank["base"] if current is None else merge(bank["base"], current[1], current[2])


def forward_mixed(bank: dict, tokens, names, *, impl: str = "loop"):
    """Logits where row b uses the adapter named names[b] (None: the base model). See minilora.forward_mixed."""
    _check_bank(bank)
    order = sorted(bank["adapters"])
    if not isinstance(names, (list, tuple)):
        raise TypeError(f"names must be a list with one adapter name (or None) per row, got {type(names).__name__}")
    for n in names:
        if n is not None:
            _check_name(bank, n, known=True)
    which = np.array([-1 if n is None else order.index(n) for n in names], dtype=np.int64)  # (B,)
    return _forward_mixed(bank["base"], tokens, bank["config"], [bank["adapters"][n] for n in order], which,
                          impl=impl)
