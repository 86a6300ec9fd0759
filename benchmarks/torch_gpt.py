"""The minilora GPT-2 model written again in PyTorch (CPU, eager): the yardstick bench_step.py times against.

Same architecture, op for op: token + learned position embedding, pre-LN blocks with separate q, k, v, o
nn.Linear layers, causal softmax attention, GELU (tanh approximation), a final LayerNorm and an output layer
tied to the token embedding. LoRA adds s · B A x to an adapted layer as ``(x @ A.T) @ B.T * s`` with A, B
nn.Parameters; in the LoRA model every base weight has requires_grad False, so autograd skips their dW just as
minilora's VJPs do.

``from_minilora`` copies a minilora parameter tree (W stored (d_out, d_in), as nn.Linear stores it) and
optionally an adapter, so both models compute the same loss from the same numbers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MATRICES = ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out")


class LoraLinear(nn.Module):
    """nn.Linear plus an optional low-rank term: y = x W^T + b [+ s · (x A^T) B^T]."""

    def __init__(self, d_in: int, d_out: int, r: int = 0, scale: float = 0.0):
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.scale = float(scale)
        if r > 0:
            self.A = nn.Parameter(torch.zeros(r, d_in))  # (r, d_in)
            self.B = nn.Parameter(torch.zeros(d_out, r))  # (d_out, r)
        else:
            self.A = self.B = None

    def forward(self, x):  # x (..., d_in) -> (..., d_out)
        y = self.base(x)
        if self.A is not None:
            y = y + (x @ self.A.T) @ self.B.T * self.scale
        return y


class Block(nn.Module):
    def __init__(self, d: int, n_head: int, d_mlp: int, eps: float, adapted=(), r: int = 0, scale: float = 0.0):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        shapes = {"wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, d), "mlp_in": (d, d_mlp),
                  "mlp_out": (d_mlp, d)}
        for name, (d_in, d_out) in shapes.items():
            rank = r if name in adapted else 0
            setattr(self, name, LoraLinear(d_in, d_out, rank, scale))

    def attention(self, x, mask):  # x (B, T, d)
        B, T, d = x.shape
        H = self.n_head
        dh = d // H

        def heads(t):  # (B, T, d) -> (B, H, T, d_h)
            return t.view(B, T, H, dh).transpose(1, 2)

        q, k, v = heads(self.wq(x)), heads(self.wk(x)), heads(self.wv(x))
        s = (q * (1.0 / math.sqrt(dh))) @ k.transpose(-2, -1) + mask  # (B, H, T, T)
        p = torch.softmax(s, dim=-1)
        o = (p @ v).transpose(1, 2).reshape(B, T, d)  # (B, T, d)
        return self.wo(o)

    def forward(self, x, mask):
        x = x + self.attention(self.ln1(x), mask)
        return x + self.mlp_out(F.gelu(self.mlp_in(self.ln2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    def __init__(self, cfg, lora_config=None):
        super().__init__()
        d = cfg.d_model
        adapted_layers = set()
        targets, r, scale = (), 0, 0.0
        if lora_config is not None:
            adapted_layers = set(lora_config.adapted_layers(cfg))
            targets, r, scale = lora_config.targets, lora_config.r, lora_config.scale
        self.wte = nn.Parameter(torch.zeros(cfg.vocab_size, d))
        self.wpe = nn.Parameter(torch.zeros(cfg.context, d))
        self.blocks = nn.ModuleList(
            Block(d, cfg.n_head, cfg.d_mlp, cfg.ln_eps, targets if i in adapted_layers else (), r, scale)
            for i in range(cfg.n_layer)
        )
        self.ln_f = nn.LayerNorm(d, eps=cfg.ln_eps)
        self._masks = {}

    def mask(self, T, dtype, device=None):
        key = (T, dtype, device)
        if key not in self._masks:
            self._masks[key] = torch.triu(torch.full((T, T), float("-inf"), dtype=dtype, device=device), diagonal=1)
        return self._masks[key]

    def forward(self, tokens):  # tokens (B, T) int64 -> logits (B, T, V)
        T = tokens.shape[1]
        x = self.wte[tokens] + self.wpe[:T]
        mask = self.mask(T, x.dtype, x.device)  # on the activations' device (benchmarks/gpu_check.py: CUDA)
        for block in self.blocks:
            x = block(x, mask)
        return F.linear(self.ln_f(x), self.wte)  # tied output layer

    def loss(self, tokens, targets):
        logits = self(tokens)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def lora_parameters(self):
        return [p for n, p in self.named_parameters() if n.endswith((".A", ".B"))]


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float32))).clone()


@torch.no_grad()
def from_minilora(params, cfg, lora=None, lora_config=None) -> TorchGPT:
    """A TorchGPT holding minilora's numbers. With an adapter: only A and B are trainable (the LoRA setting);
    without: every parameter is (full fine-tuning)."""
    model = TorchGPT(cfg, lora_config if lora is not None else None)
    model.wte.copy_(_t(params["wte"]))
    model.wpe.copy_(_t(params["wpe"]))
    for i, (blk, p) in enumerate(zip(model.blocks, params["blocks"], strict=True)):
        for ln in ("ln1", "ln2"):
            getattr(blk, ln).weight.copy_(_t(p[ln]["g"]))
            getattr(blk, ln).bias.copy_(_t(p[ln]["b"]))
        for name in MATRICES:
            layer = getattr(blk, name)
            layer.base.weight.copy_(_t(p[name]["W"]))  # (d_out, d_in), nn.Linear's layout
            layer.base.bias.copy_(_t(p[name]["b"]))
            if layer.A is not None:
                layer.A.copy_(_t(lora["blocks"][i][name]["A"]))
                layer.B.copy_(_t(lora["blocks"][i][name]["B"]))
    model.ln_f.weight.copy_(_t(params["ln_f"]["g"]))
    model.ln_f.bias.copy_(_t(params["ln_f"]["b"]))
    if lora is not None:
        for n, prm in model.named_parameters():
            prm.requires_grad_(n.endswith((".A", ".B")))
    return model


def lora_grads_as_tree(model: TorchGPT, lora_config, cfg) -> dict:
    """The A, B gradients in minilora's adapter layout, as numpy arrays."""
    layers = set(lora_config.adapted_layers(cfg))
    blocks = []
    for i, blk in enumerate(model.blocks):
        entry = {}
        if i in layers:
            for t in lora_config.targets:
                layer = getattr(blk, t)
                entry[t] = {"A": layer.A.grad.numpy(), "B": layer.B.grad.numpy()}
        blocks.append(entry)
    return {"blocks": blocks}


def full_grads_as_tree(model: TorchGPT) -> dict:
    """Every gradient in minilora's parameter layout, as numpy arrays."""
    blocks = []
    for blk in model.blocks:
        entry = {ln: {"g": getattr(blk, ln).weight.grad.numpy(), "b": getattr(blk, ln).bias.grad.numpy()}
                 for ln in ("ln1", "ln2")}
        for name in MATRICES:
            layer = getattr(blk, name).base
            entry[name] = {"W": layer.weight.grad.numpy(), "b": layer.bias.grad.numpy()}
        blocks.append(entry)
    return {
        "wte": model.wte.grad.numpy(),
        "wpe": model.wpe.grad.numpy(),
        "blocks": blocks,
        "ln_f": {"g": model.ln_f.weight.grad.numpy(), "b": model.ln_f.bias.grad.numpy()},
    }
