"""The hot ops of the model, each an autograd primitive with a hand-derived VJP beside its forward.

The VJP makers of the multi-argument ops receive ``argnums``, the positions of the arguments autograd is
tracing (``defvjp_argnums``), and compute a gradient for those and nothing else. autograd calls a VJP maker
while it records the forward pass, so the work of the backward pass (recomputing x̂, GELU's derivative) is
done inside the returned closure, when the gradient is actually needed. Attention keeps P instead: it is the
output of its own primitive (attention_probs), and autograd hands every VJP maker its primitive's output.

In LoRA training the base weights are never traced, so ``dW`` for a
frozen matrix is never computed: that skipped work is LoRA's training speed-up.

The element-wise work (GELU, layer norm, the softmaxes of attention and cross-entropy, and their VJPs) is
written as row kernels: functions of a block of rows that write their result into ``out``. They run through
``backend.rowwise``, which cuts a large array into row blocks for a small thread pool (the result is
bit-identical to one thread; ``MINILORA_THREADS=1`` or ``backend.set_threads(1)`` turns the pool off).
"""

from .attention import attend, attention_probs, causal_attention
from .cross_entropy import cross_entropy
from .embedding import embedding
from .gelu import gelu
from .layer_norm import layer_norm
from .linear import linear
from .lora_delta import lora_delta

__all__ = [
    "attend", "attention_probs", "causal_attention", "cross_entropy", "embedding", "gelu", "layer_norm", "linear",
    "lora_delta",
]
