"""The hot ops of the model, each an autograd primitive with a hand-derived VJP beside its forward.

The VJP makers of the multi-argument ops receive ``argnums``, the positions of the arguments autograd is
tracing (``defvjp_argnums``), and compute a gradient for those and nothing else. autograd calls a VJP maker
while it records the forward pass, so the work of the backward pass (recomputing P, x̂, GELU's derivative) is
done inside the returned closure, when the gradient is actually needed.

In LoRA training the base weights are never traced, so ``dW`` for a
frozen matrix is never computed: that skipped work is LoRA's training speed-up.
"""

from .attention import causal_attention
from .cross_entropy import cross_entropy
from .embedding import embedding
from .gelu import gelu
from .layer_norm import layer_norm
from .linear import linear
from .lora_delta import lora_delta

__all__ = ["causal_attention", "cross_entropy", "embedding", "gelu", "layer_norm", "linear", "lora_delta"]
