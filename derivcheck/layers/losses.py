"""Losses, each ``L = mean_n l_n`` to match PyTorch's ``reduction="mean"``.

Network outputs are ``(N, K)``. Targets travel as *target columns* ``(N, T)``:

- ``cross_entropy``: logits ``(N, K)`` and class indices, carried as one-hot rows (T = K);
  ``l_n = log sum_k exp(z_k) - z_{y_n}`` (``nn.CrossEntropyLoss``);
- ``mse``: ``l_n = mean_k (y_k - t_k)^2`` (``nn.MSELoss`` averages over all N*K elements);
- ``bce``: probabilities in (0, 1) and targets in [0, 1] (``nn.BCELoss``);
- ``bce_with_logits``: logits and targets in [0, 1] (``nn.BCEWithLogitsLoss``).
"""

from __future__ import annotations


import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.layers.activations import stable_sigmoid
from derivcheck.layers.base import Loss


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits with class-index targets (``nn.CrossEntropyLoss``)."""

    kind = "cross_entropy"

    def check_output_size(self, size: int) -> str | None:
        return None if size >= 2 else "at least 2 outputs (one logit per class)"

    def encode_targets(self, raw: np.ndarray, out_size: int) -> np.ndarray:
        raw = np.asarray(raw)
        if raw.ndim != 1:
            raise ValueError(f"cross_entropy needs one class index per sample, got targets of shape {raw.shape}")
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise ValueError("cross_entropy targets must be integer class indices")
        idx = raw.astype(int)
        bad = idx[(idx < 0) | (idx >= out_size)]
        if bad.size:
            raise ValueError(f"class index {int(bad[0])} is outside 0..{out_size - 1} (the network has {out_size} outputs)")
        return np.eye(out_size)[idx]

    def random_targets(self, rng, n, out_size):
        return np.eye(out_size)[rng.integers(0, out_size, size=n)]

    def sympy_per_sample(self, outputs, targets):
        log_total = sp.log(sp.Add(*[sp.exp(z) for z in outputs]))
        return log_total - sp.Add(*[t * z for t, z in zip(targets, outputs)])

    def numpy_forward(self, y, targets):
        shifted = y - y.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -(targets * log_p).sum(axis=1), (log_p, targets)

    def numpy_backward(self, cache):
        log_p, targets = cache
        return np.exp(log_p) - targets

    def torch_loss(self, y, targets):
        import torch

        return torch.nn.CrossEntropyLoss()(y, targets.argmax(dim=1))


def _check_unit_interval(raw: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(raw)) or raw.min(initial=0) < 0 or raw.max(initial=0) > 1:
        raise ValueError(f"{what} targets must lie in [0, 1]")


def _as_columns(raw: np.ndarray, out_size: int, what: str) -> np.ndarray:
    raw = np.asarray(raw, dtype=float)
    if raw.ndim == 1:
        raw = raw[:, None]
    if raw.ndim != 2 or raw.shape[1] != out_size:
        raise ValueError(f"{what} needs {out_size} target value(s) per sample, got shape {raw.shape}")
    return raw


class MSE(Loss):
    """Mean squared error (``nn.MSELoss``)."""

    kind = "mse"

    def encode_targets(self, raw, out_size):
        columns = _as_columns(raw, out_size, "mse")
        if not np.all(np.isfinite(columns)):
            raise ValueError("mse targets must be finite")
        return columns

    def random_targets(self, rng, n, out_size):
        return rng.standard_normal((n, out_size))

    def sympy_per_sample(self, outputs, targets):
        return sp.Add(*[(y - t) ** 2 for y, t in zip(outputs, targets)]) / len(outputs)

    def numpy_forward(self, y, targets):
        diff = y - targets
        return (diff**2).mean(axis=1), diff

    def numpy_backward(self, cache):
        diff = cache
        return 2 * diff / diff.shape[1]

    def torch_loss(self, y, targets):
        import torch

        return torch.nn.MSELoss()(y, targets)


class BCE(Loss):
    """Binary cross-entropy on probabilities (``nn.BCELoss``); put a sigmoid layer last."""

    kind = "bce"

    def encode_targets(self, raw, out_size):
        columns = _as_columns(raw, out_size, "bce")
        _check_unit_interval(columns, "bce")
        return columns

    def random_targets(self, rng, n, out_size):
        return rng.integers(0, 2, size=(n, out_size)).astype(float)

    def sympy_per_sample(self, outputs, targets):
        terms = [t * sp.log(p) + (1 - t) * sp.log(1 - p) for p, t in zip(outputs, targets)]
        return -sp.Add(*terms) / len(outputs)

    def numpy_forward(self, y, targets):
        # nn.BCELoss clamps each log at -100; the engines agree away from that clamp.
        log_p = np.maximum(np.log(y), -100)
        log_q = np.maximum(np.log1p(-y), -100)
        return -(targets * log_p + (1 - targets) * log_q).mean(axis=1), (y, targets)

    def numpy_backward(self, cache):
        p, t = cache
        return (p - t) / (p * (1 - p)) / p.shape[1]

    def torch_loss(self, y, targets):
        import torch

        return torch.nn.BCELoss()(y, targets)


class BCEWithLogits(Loss):
    """Binary cross-entropy on logits (``nn.BCEWithLogitsLoss``)."""

    kind = "bce_with_logits"

    def encode_targets(self, raw, out_size):
        columns = _as_columns(raw, out_size, "bce_with_logits")
        _check_unit_interval(columns, "bce_with_logits")
        return columns

    def random_targets(self, rng, n, out_size):
        return rng.integers(0, 2, size=(n, out_size)).astype(float)

    def sympy_per_sample(self, outputs, targets):
        terms = [t * sp.log(1 + sp.exp(-z)) + (1 - t) * sp.log(1 + sp.exp(z)) for z, t in zip(outputs, targets)]
        return sp.Add(*terms) / len(outputs)

    def numpy_forward(self, y, targets):
        # softplus(z) - t*z, written to avoid overflow
        per_element = np.maximum(y, 0) - targets * y + np.log1p(np.exp(-np.abs(y)))
        return per_element.mean(axis=1), (y, targets)

    def numpy_backward(self, cache):
        z, t = cache
        return (stable_sigmoid(z) - t) / z.shape[1]

    def torch_loss(self, y, targets):
        import torch

        return torch.nn.BCEWithLogitsLoss()(y, targets)
