"""The golden ops in PyTorch, written from index.json's conventions with torch's own building blocks
(F.linear, F.layer_norm, F.gelu(approximate="tanh"), F.scaled_dot_product_attention(is_causal=True)) and
differentiated by torch.autograd: an implementation that shares nothing with minilora. Imported by
test_golden only when torch is installed."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TARGETS = ("wq", "wk", "wv", "wo", "mlp_in", "mlp_out")


def _tensors(a, dtype):
    return {k: torch.tensor(np.asarray(v), dtype=dtype if v.dtype.kind == "f" else torch.long) for k, v in a.items()}


def adapted(x, W, b, A, B, s, mask=None):
    """x W^T + b + s ((x * mask) A^T) B^T."""
    xd = x if mask is None else x * mask
    return F.linear(x, W, b) + s * F.linear(F.linear(xd, A), B)


def _numpy(tensors: dict) -> dict:
    return {k: v.detach().numpy() for k, v in tensors.items()}


def lora_linear(a, dtype=torch.float64):
    t = _tensors(a, dtype)
    return _numpy({"h": adapted(t["x"], t["W"], t["b"], t["A"], t["B"], float(a["scale"]))})


def lora_linear_vjp(a, dtype=torch.float64):
    t = _tensors(a, dtype)
    x, A, B = (t[k].requires_grad_(True) for k in ("x", "A", "B"))
    adapted(x, t["W"], t["b"], A, B, float(a["scale"])).backward(t["g"])
    return _numpy({"dx": x.grad, "dA": A.grad, "dB": B.grad})


def merge(a, dtype=torch.float64):
    t = _tensors(a, dtype)
    return _numpy({"W_merged": t["W"] + float(a["scale"]) * t["B"] @ t["A"]})


def attention_block(x, t, lora, s, prefix, masks, n_head):
    def proj(name, inp):
        return adapted(inp, t[f"params.{prefix}{name}.W"], t[f"params.{prefix}{name}.b"], *lora[name], s,
                       masks.get(name))

    Bsz, T, d = x.shape
    heads = lambda u: u.reshape(Bsz, T, n_head, d // n_head).transpose(1, 2)  # (B, H, T, d_h)
    o = F.scaled_dot_product_attention(heads(proj("wq", x)), heads(proj("wk", x)), heads(proj("wv", x)),
                                       is_causal=True)
    return proj("wo", o.transpose(1, 2).reshape(Bsz, T, d))


def attention(a, dtype=torch.float64):
    t = _tensors(a, dtype)
    targets = ("wq", "wk", "wv", "wo")
    x = t["x"].requires_grad_(True)
    lora = {n: (t[f"lora.{n}.A"].requires_grad_(True), t[f"lora.{n}.B"].requires_grad_(True)) for n in targets}
    masks = {n: t[f"mask.{n}"] for n in targets if f"mask.{n}" in t}
    y = attention_block(x, t, lora, float(a["scale"]), "", masks, int(a["n_head"]))
    y.backward(t["g"])
    out = {"y": y, "dx": x.grad}
    for n, (A, B) in lora.items():
        out[f"grad.{n}.A"], out[f"grad.{n}.B"] = A.grad, B.grad
    return _numpy(out)


def model(a, dtype=torch.float64, n_layer=2, n_head=3, eps=1e-5):
    t = _tensors(a, dtype)
    s = float(a["scale"])
    lora = {(i, n): (t[f"lora.blocks.{i}.{n}.A"].requires_grad_(True), t[f"lora.blocks.{i}.{n}.B"].requires_grad_(True))
            for i in range(n_layer) for n in TARGETS}
    tokens = t["tokens"]
    d = t["params.wte"].shape[1]
    x = F.embedding(tokens, t["params.wte"]) + t["params.wpe"][: tokens.shape[1]]
    for i in range(n_layer):
        p = f"blocks.{i}."
        ab = {n: lora[(i, n)] for n in TARGETS}
        masks = {n: t[f"mask.{p}{n}"] for n in TARGETS if f"mask.{p}{n}" in t}
        h = F.layer_norm(x, (d,), t[f"params.{p}ln1.g"], t[f"params.{p}ln1.b"], eps)
        x = x + attention_block(h, t, ab, s, p, masks, n_head)
        h = F.layer_norm(x, (d,), t[f"params.{p}ln2.g"], t[f"params.{p}ln2.b"], eps)
        up = adapted(h, t[f"params.{p}mlp_in.W"], t[f"params.{p}mlp_in.b"], *ab["mlp_in"], s, masks.get("mlp_in"))
        up = F.gelu(up, approximate="tanh")
        x = x + adapted(up, t[f"params.{p}mlp_out.W"], t[f"params.{p}mlp_out.b"], *ab["mlp_out"], s,
                        masks.get("mlp_out"))
    logits = F.linear(F.layer_norm(x, (d,), t["params.ln_f.g"], t["params.ln_f.b"], eps), t["params.wte"])
    logits.backward(t["g"])
    out = {"logits": logits}
    for (i, n), (A, B) in lora.items():
        out[f"grad.blocks.{i}.{n}.A"], out[f"grad.blocks.{i}.{n}.B"] = A.grad, B.grad
    return _numpy(out)


TORCH = {"lora_linear": lora_linear, "lora_linear_vjp": lora_linear_vjp, "merge": merge,
         "attention_lora": attention, "model_lora": model}
