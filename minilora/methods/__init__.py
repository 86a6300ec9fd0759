"""The fine-tuning methods of the paper's comparison (Section 5.1), each a small module on the same GPT and
trained by the same loop (train.train(..., method=setup)). See base.py for the interface:

    setup = METHODS["prelayer"].build(params, config, seed=0, l_p=8)
    result = train(task, params, config, TrainConfig(...), method=setup)
"""

from __future__ import annotations

from .adapter_h import ADAPTER_H
from .adapter_l import ADAPTER_L
from .base import Method, Setup, join, split
from .bitfit import BITFIT
from .files import load_method, save_method
from .finetune import FT, FT_TOP2
from .lora import LORA, LORA_PLUS
from .lora_fa import LORA_FA
from .preembed import PREEMBED
from .prelayer import PRELAYER

METHODS = {m.name: m for m in (FT, FT_TOP2, BITFIT, PREEMBED, PRELAYER, ADAPTER_H, ADAPTER_L, LORA, LORA_PLUS,
                               LORA_FA)}
"""Every method by name, in the paper's order."""


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "Setup", "get_method", "join", "load_method", "save_method", "split"]
