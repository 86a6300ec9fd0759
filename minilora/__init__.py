"""minilora: LoRA (Hu et al., ICLR 2022) on a small GPT-2-style transformer, in NumPy + autograd.

The stable public API:

    GPTConfig, init_params(config, seed), forward(params, tokens, config, lora=None, lora_config=None, *, rng=None)
    LoraConfig, init_lora(config, lora_config, seed), merge(params, lora, lora_config),
    unmerge(params, lora, lora_config), count_params(tree)
    forward_mixed(params, tokens, config, adapters, which, *, impl="loop"|"gather"): a different adapter per row
    combine(adapters, weights, how, *, rank=None): one adapter from several ("cat", "svd", "linear")
    interop: load_hf_gpt2 / save_hf_gpt2 (transformers' GPT-2), load_peft_adapter / save_peft_adapter (PEFT)
    adapters: named adapters on one base (new, add, switch, disable, delete)
"""

from . import adapters, backend, interop
from .combination import combine
from .config import PRESETS, GPTConfig
from .lora import LoraConfig, count_params, delta_weight, init_lora, merge, paper_param_count, unmerge
from .mixed import forward_mixed
from .model import forward, init_params

__version__ = "0.1.0"

__all__ = [
    "backend", "GPTConfig", "PRESETS", "LoraConfig", "init_params", "forward", "init_lora", "merge", "unmerge",
    "count_params", "delta_weight", "paper_param_count", "forward_mixed", "combine", "interop", "adapters",
    "__version__",
]
