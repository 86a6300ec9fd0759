"""Files of the other LoRA implementations, read and written without torch: Hugging Face GPT-2 weights
(``load_hf_gpt2``, ``save_hf_gpt2``) and PEFT LoRA adapters for them (``load_peft_adapter``,
``save_peft_adapter``). The layout conversions (Conv1D's (in, out), the fused c_attn) live here and nowhere else.
"""

from .hf_gpt2 import load_hf_gpt2, save_hf_gpt2
from .peft import load_peft_adapter, save_peft_adapter

__all__ = ["load_hf_gpt2", "save_hf_gpt2", "load_peft_adapter", "save_peft_adapter"]
