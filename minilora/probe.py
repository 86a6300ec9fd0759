"""Linear probes on a frozen model: is a task's class already linearly readable from the base's activations?

The paper's rank-1 result presupposes a base model that already represents the task; a probe measures that
before any adapter is trained. Features are taken at the position that predicts the first answer byte:

* ``"block i"``: the input of block i's attention (LayerNorm'd residual stream, what W_q and W_v read), taken
  through the model's one extension point (``Hooks.project``), so nothing of the transformer is copied;
* ``"logits"``: the output logits, a linear function of the final LayerNorm'd state (the tied head has rank
  d_model), so a probe on them is a probe on the last layer.

The probe is multinomial logistic regression (NumPy, full-batch gradient descent with Nesterov momentum on the
convex, L2-regularised loss), its L2 strength chosen by k-fold cross-validation on the training split only.
"""

from __future__ import annotations

import numpy as np

from .model import Hooks, frozen_project, transformer

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def answer_features(params, config, x, answer_at, batch_size: int = 64, pooled: bool = False) -> dict:
    """{"block 0": (n, d), ..., "logits": (n, V)} at the answer positions of the prompts x (n, T); with
    ``pooled`` also "block i mean": block i's input averaged over the prompt's positions (what attention could
    gather for the answer position)."""
    feats: dict = {}
    for s in range(0, len(x), batch_size):
        xb, at = x[s:s + batch_size], answer_at[s:s + batch_size]
        T = int(at.max()) + 1  # causal: later positions change nothing at the answer position
        rows = np.arange(len(xb))
        seen = {}

        def project(i, name, h, layer, seen=seen):
            if name == "wq":
                seen[f"block {i}"] = h  # (b, T, d): LayerNorm'd input of block i's attention
            return frozen_project(i, name, h, layer)

        logits = transformer(params, xb[:, :T], config, Hooks(project=project))  # (b, T, V)
        seen["logits"] = logits
        upto = (np.arange(T)[None, :] <= at[:, None]).astype(np.float64)  # (b, T): the prompt's positions
        for key, h in seen.items():
            h = np.asarray(h, np.float64)
            feats.setdefault(key, []).append(h[rows, at])  # (b, d)
            if pooled and key != "logits":
                mean = (h * upto[:, :, None]).sum(1) / upto.sum(1, keepdims=True)  # (b, d)
                feats.setdefault(f"{key} mean", []).append(mean)
    return {k: np.concatenate(v) for k, v in feats.items()}


def fit_logistic(X, y, n_classes: int, l2: float, steps: int = 300):
    """Multinomial logistic regression on standardised X (n, f): returns (W (f, C), b (C,), mean, std)."""
    X = np.asarray(X, np.float64)
    mean, std = X.mean(0), X.std(0) + 1e-8
    Z = (X - mean) / std  # (n, f)
    Y = np.eye(n_classes)[y]  # (n, C)
    W, b = np.zeros((Z.shape[1], n_classes)), np.zeros(n_classes)
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    lr = 1.0 / (0.25 * np.linalg.norm(Z, 2) ** 2 / len(Z) + l2)  # 1 / Lipschitz bound of the gradient
    for _ in range(steps):
        gW_at, gb_at = W + 0.9 * vW, b + 0.9 * vb  # Nesterov look-ahead
        logits = Z @ gW_at + gb_at  # (n, C)
        P = np.exp(logits - logits.max(1, keepdims=True))
        P /= P.sum(1, keepdims=True)
        gW = Z.T @ (P - Y) / len(Z) + l2 * gW_at
        gb = (P - Y).mean(0)
        vW, vb = 0.9 * vW - lr * gW, 0.9 * vb - lr * gb
        W, b = W + vW, b + vb
    return W, b, mean, std


def predict_logistic(model, X) -> np.ndarray:
    """Class indices (n,) that a model from fit_logistic predicts for the rows of X (standardised as in fitting)."""
    W, b, mean, std = model
    return (((np.asarray(X, np.float64) - mean) / std) @ W + b).argmax(1)


def cross_validated_l2(X, y, n_classes: int, folds: int = 5, grid=L2_GRID, seed: int = 0) -> float:
    """The L2 strength with the best k-fold accuracy on (X, y): chosen without looking at any held-out split."""
    order = np.random.default_rng(seed).permutation(len(y))
    parts = np.array_split(order, folds)
    scores = []
    for l2 in grid:
        hits = 0
        for k in range(folds):
            train = np.concatenate([p for j, p in enumerate(parts) if j != k])
            model = fit_logistic(X[train], y[train], n_classes, l2)
            hits += int((predict_logistic(model, X[parts[k]]) == y[parts[k]]).sum())
        scores.append(hits / len(y))
    return float(grid[int(np.argmax(scores))])


def linear_probe(task, params, config, pooled: bool = False, keys=None) -> dict:
    """Held-out accuracy of a linear probe on each feature set of the frozen base, for a PromptClassTask.

    keys: the feature sets to probe (default: all of ``answer_features``). Returns {feature set: {"accuracy",
    "train_accuracy", "l2"}} plus "chance" (1 / number of classes).
    """
    n_classes = len(task.labels)
    x_tr, _, _, at_tr, y_tr = task.split("train")
    x_ev, _, _, at_ev, y_ev = task.split("eval")
    f_tr = answer_features(params, config, x_tr, at_tr, pooled=pooled)
    f_ev = answer_features(params, config, x_ev, at_ev, pooled=pooled)
    out = {"chance": 1.0 / n_classes}
    unknown = set(keys or ()) - set(f_tr)
    if unknown:
        raise ValueError(f"keys: unknown feature sets {sorted(unknown)}; choose from {sorted(f_tr)}")
    for key in keys or f_tr:
        l2 = cross_validated_l2(f_tr[key], y_tr, n_classes)
        model = fit_logistic(f_tr[key], y_tr, n_classes, l2)
        out[key] = {"accuracy": float((predict_logistic(model, f_ev[key]) == y_ev).mean()),
                    "train_accuracy": float((predict_logistic(model, f_tr[key]) == y_tr).mean()), "l2": l2}
    return out
