"""Random compositions of torch ops, for the no-false-alarm sweeps (a Hypothesis strategy).

A program is a chain of steps applied to its first input: matmul with a further input,
smooth elementwise functions, softmax / log_softmax / layer_norm over the last axis,
products with a further input, saturating chains of sigmoids, and a final reduction.
Inputs are drawn at scales from 0.5 to 10, so that chains saturate and softmaxes go
one-hot, in float64 or float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

UNARY = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "sin": torch.sin,
    "silu": F.silu,
    "gelu": F.gelu,
    "square": lambda t: t * t,
    "log1p_square": lambda t: torch.log1p(t * t),
    "exp_tanh": lambda t: torch.exp(torch.tanh(t)),
    "elu": F.elu,
    "softsign": F.softsign,
}
ENDS = ("none", "sum", "mean", "logsumexp")


@dataclass
class Program:
    """``steps`` applied to ``inputs[0]``; calling it runs the chain."""

    steps: list[tuple[str, object]]
    inputs: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        h = args[0]
        for op, arg in self.steps:
            if op == "matmul":
                h = h @ args[arg]
            elif op == "unary":
                h = UNARY[arg](h)
            elif op == "mul":
                h = h * args[arg]
            elif op == "softmax":
                h = torch.softmax(h, -1)
            elif op == "log_softmax":
                h = torch.log_softmax(h, -1)
            elif op == "layer_norm":
                h = F.layer_norm(h, h.shape[-1:])
            elif op == "end":
                h = {"none": lambda t: t, "sum": lambda t: t.sum(-1), "mean": lambda t: t.mean(), "logsumexp": lambda t: torch.logsumexp(t, -1)}[arg](h)
        return h

    def __repr__(self) -> str:
        shapes = [tuple(t.shape) for t in self.inputs]
        return " -> ".join(f"{op}({arg})" if arg is not None else op for op, arg in self.steps) + f" on {shapes} {self.inputs[0].dtype}"


@st.composite
def programs(draw: st.DrawFn, dtype: torch.dtype | None = None) -> Program:
    dtype = dtype or draw(st.sampled_from([torch.float64, torch.float32]))
    batch, width = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    scale = draw(st.sampled_from([0.5, 1.0, 3.0, 10.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(batch, width, generator=gen, dtype=torch.float64).to(dtype) * scale]
    steps: list[tuple[str, object]] = []
    k = width
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["matmul", "unary", "unary", "softmax", "log_softmax", "layer_norm", "mul", "saturate"]))
        if op == "matmul":
            k2 = draw(st.integers(1, 4))
            inputs.append(torch.randn(k, k2, generator=gen, dtype=torch.float64).to(dtype))
            steps.append(("matmul", len(inputs) - 1))
            k = k2
        elif op == "mul":
            inputs.append(torch.randn(batch, k, generator=gen, dtype=torch.float64).to(dtype))
            steps.append(("mul", len(inputs) - 1))
        elif op == "unary":
            steps.append(("unary", draw(st.sampled_from(sorted(UNARY)))))
        elif op == "saturate":
            steps += [("unary", "sigmoid")] * draw(st.integers(2, 4))
        else:
            steps.append((op, None))
    steps.append(("end", draw(st.sampled_from(ENDS))))
    return Program(steps, inputs)


def random_program(seed: int, dtype: torch.dtype) -> Program:
    """The same kind of program as :func:`programs`, from a plain seed (for benchmarks)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    batch, width = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    scale = float(rng.choice([0.5, 1.0, 3.0, 10.0]))
    inputs = [torch.randn(batch, width, generator=gen, dtype=torch.float64).to(dtype) * scale]
    steps: list[tuple[str, object]] = []
    k = width
    for _ in range(int(rng.integers(1, 6))):
        op = str(rng.choice(["matmul", "unary", "unary", "softmax", "log_softmax", "layer_norm", "mul", "saturate"]))
        if op == "matmul":
            k2 = int(rng.integers(1, 5))
            inputs.append(torch.randn(k, k2, generator=gen, dtype=torch.float64).to(dtype))
            steps.append(("matmul", len(inputs) - 1))
            k = k2
        elif op == "mul":
            inputs.append(torch.randn(batch, k, generator=gen, dtype=torch.float64).to(dtype))
            steps.append(("mul", len(inputs) - 1))
        elif op == "unary":
            steps.append(("unary", str(rng.choice(sorted(UNARY)))))
        elif op == "saturate":
            steps += [("unary", "sigmoid")] * int(rng.integers(2, 5))
        else:
            steps.append((op, None))
    steps.append(("end", str(rng.choice(ENDS))))
    return Program(steps, inputs)


class ScaleGrad(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by ``1 + rel``: a seeded bug."""

    @staticmethod
    def forward(ctx, x, rel):
        ctx.rel = rel
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * (1 + ctx.rel), None

    @staticmethod
    def jvp(ctx, t, _):
        return t  # forward mode stays right: an independent reference for the seeded bug
