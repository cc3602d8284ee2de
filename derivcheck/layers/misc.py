"""``Dropout`` with an explicit seeded mask, and ``Embedding``.

- ``Dropout(p, mode, seed)``: in ``mode = "train"`` sample ``n``'s entry ``j`` is kept
  (and scaled by ``1 / (1 - p)``) where a ``numpy.random.default_rng(seed)`` draw of shape
  ``(N, features)`` is ``>= p``. Every engine applies that same mask -- the symbolic engine
  as per-sample constants, the numpy engine in its forward and backward, the torch engine
  in a small module (``nn.Dropout`` draws its own mask from torch's generator, which
  cannot be handed a mask). In ``mode = "eval"`` it is the identity (the real
  ``nn.Dropout`` in eval mode).
- ``Embedding(num_embeddings, embedding_dim)``: samples are ``T`` indices; the output
  ``(T, D)`` is the looked-up rows of ``weight`` ``(V, D)``. The inputs are not
  differentiable (dL/dx and dy/dx do not exist); the weight gradient reaches only the rows
  used (scatter-add in numpy; one-hot per-sample constants in SymPy; ``nn.Embedding``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.layers.base import Layer, Option, positive_int


def dropout_mask(seed: int, shape: tuple[int, int], p: float) -> np.ndarray:
    """The scaled keep-mask ``(N, features)``: ``1/(1-p)`` where kept, 0 where dropped."""
    keep = np.random.default_rng(seed).random(shape) >= p
    return keep / (1.0 - p)


class Dropout(Layer):
    """See the module docstring."""

    kind = "dropout"
    ELEMENTWISE = True
    OPTIONS = (
        Option("p", float, default=0.5, check=lambda v: None if 0 <= v < 1 else "a number in [0, 1)"),
        Option("mode", str, default="train", check=lambda v: None if v in ("train", "eval") else "'train' or 'eval'"),
        Option("seed", int, default=0, check=lambda v: None if v >= 0 else "an integer >= 0"),
    )

    @property
    def training(self) -> bool:
        return self.options["mode"] == "train"

    @property
    def n_sample_constants(self) -> int:  # type: ignore[override]
        return self.in_size if self.training else 0

    def sample_constants(self, x: np.ndarray) -> np.ndarray | None:
        return dropout_mask(self.options["seed"], x.shape, self.options["p"]) if self.training else None

    def sympy_forward(self, inputs, params):
        if not self.training:
            return list(inputs)
        return [a * k for a, k in zip(inputs, params["@constants"])]

    def numpy_forward(self, x, params):
        if not self.training:
            return x, None
        mask = dropout_mask(self.options["seed"], x.shape, self.options["p"]).astype(x.dtype)
        return x * mask, mask

    def numpy_backward(self, grad_y, cache, params):
        return (grad_y if cache is None else grad_y * cache), {}

    def torch_module(self) -> Any:
        import torch

        if not self.training:
            return torch.nn.Dropout(self.options["p"]).eval()
        seed, p = self.options["seed"], self.options["p"]

        class SeededDropout(torch.nn.Module):
            def forward(self, x: Any) -> Any:
                flat = x.reshape(x.shape[0], -1)
                mask = torch.as_tensor(dropout_mask(seed, tuple(flat.shape), p), dtype=x.dtype, device=x.device)
                return (flat * mask).reshape(x.shape)

        return SeededDropout()


class Embedding(Layer):
    """See the module docstring."""

    kind = "embedding"
    input_is_differentiable = False
    OPTIONS = (
        Option("num_embeddings", int, check=positive_int, help="vocabulary size V"),
        Option("embedding_dim", int, check=positive_int, help="vector size D"),
    )

    @property
    def vocab(self) -> int:
        return int(self.options["num_embeddings"])

    def held_values_per_sample(self) -> float:
        """One-hot codes: T x V per sample (and the symbolic form's T x V terms)."""
        return float(self.in_size) * self.vocab

    def work_per_sample(self) -> float:
        return self.held_values_per_sample() + super().work_per_sample()

    @property
    def dim(self) -> int:
        return int(self.options["embedding_dim"])

    def output_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ValueError(f"embedding expects a sequence of T indices per sample (input_shape = [T]), got {in_shape}")
        return (in_shape[0], self.dim)

    def param_shapes(self):
        return {"weight": (self.vocab, self.dim)}

    def init_params(self, rng):
        return {"weight": rng.standard_normal((self.vocab, self.dim))}

    def random_inputs(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(0, self.vocab, size=(n, self.in_size)).astype(np.float64)

    def indices(self, x: np.ndarray) -> np.ndarray:
        """Integer indices from the (float) inputs; raises ValueError for non-indices."""
        index = np.rint(x)
        if not np.all(np.abs(x - index) == 0) or index.min(initial=0) < 0 or index.max(initial=0) >= self.vocab:
            bad = x[(np.abs(x - index) != 0) | (index < 0) | (index >= self.vocab)].ravel()[:1]
            raise ValueError(f"embedding inputs must be integer indices in 0..{self.vocab - 1}, got {float(bad[0])!r}")
        return index.astype(np.int64)

    @property
    def n_sample_constants(self) -> int:  # type: ignore[override]
        return self.in_size * self.vocab

    def sample_constants(self, x: np.ndarray) -> np.ndarray:
        index = self.indices(x)
        one_hot = np.zeros((x.shape[0], self.in_size, self.vocab))
        np.put_along_axis(one_hot, index[..., None], 1.0, axis=2)
        return one_hot.reshape(x.shape[0], -1)

    def sympy_forward(self, inputs, params):
        one_hot = np.asarray(params["@constants"], dtype=object).reshape(self.in_size, self.vocab)
        weight = params["weight"]
        return [sp.Add(*[one_hot[t, v] * weight[v, d] for v in range(self.vocab)]) for t in range(self.in_size) for d in range(self.dim)]

    def numpy_forward(self, x, params):
        index = self.indices(x)
        return params["weight"][index].reshape(x.shape[0], -1), index

    def numpy_backward(self, grad_y, cache, params):
        index = cache
        grad_w = np.zeros_like(params["weight"], dtype=grad_y.dtype)
        np.add.at(grad_w, index.ravel(), grad_y.reshape(-1, self.dim))
        return np.zeros(index.shape, dtype=grad_y.dtype), {"weight": grad_w}

    def torch_module(self):
        import torch

        return torch.nn.Embedding(self.vocab, self.dim, dtype=torch.float64)

    def torch_input(self, x):
        return x.round().long()
