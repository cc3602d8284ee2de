"""derivcheck's check_torch beside torch.autograd.gradcheck / gradgradcheck, same run.

1. Time to a verdict on a tanh MLP with ~1e2, ~1e4 and ~1e6 parameters (float64):
   check_torch (order 1; order 2) vs gradcheck (fast_mode off and on) and gradgradcheck.
   gradcheck without fast mode on 1e6 parameters would take hours: it is skipped above
   2e4 inputs and reported as such.
2. Detection: a bank of seeded bugs -- a custom Function whose backward is off by a
   relative error of 1e-1 ... 1e-6 -- plus the correct Function (no false alarm allowed).
   Counts which ones each tool flags.

Run: ``python benchmarks/bench_check.py``. Not a test.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import derivcheck as dc  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def mlp(width: int, depth: int, n_in: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers, size = [], n_in
    for _ in range(depth):
        layers += [torch.nn.Linear(size, width), torch.nn.Tanh()]
        size = width
    layers.append(torch.nn.Linear(size, 1))
    return torch.nn.Sequential(*layers).double()


def as_function(model: torch.nn.Module):
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]

    def fn(x, *ps):
        return torch.func.functional_call(model, dict(zip(names, ps)), (x,))

    return fn, params


def speed() -> None:
    print("== time to a verdict (s), tanh MLP, float64 ==")
    print(f"{'params':>9s} {'mode':>12s} {'check_torch':>12s} {'check o=2':>10s} {'gradcheck':>10s} {'gc fast':>8s} {'gradgrad':>9s} {'ours/gc':>8s} {'ours/fast':>9s}")
    for width, depth, n_in in ((8, 1, 4), (96, 1, 96), (1000, 1, 1000)):
        model = mlp(width, depth, n_in)
        count = sum(p.numel() for p in model.parameters())
        x = torch.randn(2, n_in, dtype=torch.float64, requires_grad=True)
        fn, params = as_function(model)
        mode = dc.check_torch(model, x.detach(), taylor=False).mode
        ours = timed(lambda: dc.check_torch(model, x.detach()))
        ours2 = timed(lambda: dc.check_torch(model, x.detach(), order=2, taylor=False))
        slow = timed(lambda: torch.autograd.gradcheck(fn, (x, *params))) if count <= 20_000 else float("nan")
        fast = timed(lambda: torch.autograd.gradcheck(fn, (x, *params), fast_mode=True))
        gg = timed(lambda: torch.autograd.gradgradcheck(fn, (x, *params), fast_mode=True)) if count <= 20_000 else float("nan")
        print(f"{count:9d} {mode:>12s} {ours:12.2f} {ours2:10.2f} {slow:10.2f} {fast:8.2f} {gg:9.2f} {ours / slow:8.2f} {ours / fast:9.1f}")
    print("(nan: skipped, would take hours; gradgradcheck in fast mode)")


def make_function(rel: float):
    class Softplus(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.nn.functional.softplus(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.sigmoid(x) * (1 + rel)

    return Softplus.apply


def detection() -> None:
    print("\n== seeded bugs: relative error of the backward -> detected? ==")
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    print(f"{'rel error':>9s} {'derivcheck':>11s} {'gradcheck':>10s} {'gc fast':>8s}")
    found = {"derivcheck": 0, "gradcheck": 0, "gc fast": 0}
    levels = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    for rel in [0.0] + levels:
        f = make_function(rel)
        ours = not dc.check_torch(f, x.detach()).ok
        theirs = not torch.autograd.gradcheck(f, (x,), raise_exception=False)
        theirs_fast = not torch.autograd.gradcheck(f, (x,), fast_mode=True, raise_exception=False)
        print(f"{rel:9.0e} {('FLAGGED' if ours else 'ok'):>11s} {('FLAGGED' if theirs else 'ok'):>10s} {('FLAGGED' if theirs_fast else 'ok'):>8s}")
        if rel:
            found["derivcheck"] += ours
            found["gradcheck"] += theirs
            found["gc fast"] += theirs_fast
    print(f"detected of {len(levels)} seeded bugs: " + ", ".join(f"{k} {v}" for k, v in found.items()) + " (0.0 row: must be ok, no false alarm)")


if __name__ == "__main__":
    torch.set_num_threads(2)
    speed()
    detection()
