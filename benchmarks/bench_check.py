"""derivcheck's check_torch beside torch.autograd.gradcheck / gradgradcheck, same run.

1. Time to a verdict on a tanh MLP with ~1e2, ~1e4 and ~1e6 parameters (float64, best of
   3): check_torch (default; ``fast=True``; ``order=2``) vs gradcheck (fast_mode off and
   on) and gradgradcheck. gradcheck without fast mode on 1e6 parameters would take hours:
   it is skipped above 2e4 parameters and reported as such.
   The small check unit tests run by the hundred: a 49-parameter loss as a function of its
   flat parameters, derivcheck's default check beside gradcheck's.
2. Detection: a custom Function whose backward is off by a relative error of 1e-1 ... 1e-9
   (and the correct one: no false alarm allowed), and the 1e6-parameter MLP with its
   backward off by 1e-6, for which gradcheck's fast mode is the only peer that finishes.
3. False alarms, inconclusive verdicts and detection on random correct compositions of
   torch ops (the programs of tests/programs.py) in float64, float32, and float32 with
   their weights closed over, and on the same programs with their backward off by 1e-3 --
   counted for derivcheck and for gradcheck with its defaults.

Run: ``python benchmarks/bench_check.py [programs per dtype, default 200]``. Not a test.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import derivcheck as dc  # noqa: E402
from programs import ScaleGrad, random_program  # noqa: E402


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(a, b, repeat: int = 9) -> tuple[float, float, float, float]:
    """Min and median times of `a` and `b`, run alternately (the VM's speed drifts by 2x
    within seconds: alternating keeps the ratio honest)."""
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(best(a, 1))
        tb.append(best(b, 1))
    return min(ta), statistics.median(ta), min(tb), statistics.median(tb)


def mlp(width: int, depth: int, n_in: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers, size = [], n_in
    for _ in range(depth):
        layers += [torch.nn.Linear(size, width), torch.nn.Tanh()]
        size = width
    layers.append(torch.nn.Linear(size, 1))
    return torch.nn.Sequential(*layers).double()


def as_function(model: torch.nn.Module, rel: float = 0.0):
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]

    def fn(x, *ps):
        out = torch.func.functional_call(model, dict(zip(names, ps)), (x,))
        return ScaleGrad.apply(out, rel) if rel else out

    return fn, params


def speed() -> None:
    print("== time to a verdict (s), tanh MLP, float64 (best of 3; fast modes: min and median of 9 alternating runs) ==")
    print(f"{'params':>9s} {'mode':>12s} {'derivcheck':>10s} {'order=2':>8s} {'gradcheck':>9s} {'gradgrad':>8s} {'fast=True':>9s} {'gc fast':>8s} {'fast/gc fast (min, median)':>27s}")
    for width, depth, n_in in ((8, 1, 4), (96, 1, 96), (1000, 1, 1000)):
        model = mlp(width, depth, n_in)
        count = sum(p.numel() for p in model.parameters())
        x = torch.randn(2, n_in, dtype=torch.float64, requires_grad=True)
        fn, params = as_function(model)
        mode = dc.check_torch(model, x.detach(), taylor=False).mode
        ours = best(lambda: dc.check_torch(model, x.detach()))
        ours2 = best(lambda: dc.check_torch(model, x.detach(), order=2, taylor=False), repeat=1)
        slow = best(lambda: torch.autograd.gradcheck(fn, (x, *params)), repeat=1) if count <= 20_000 else float("nan")
        gg = best(lambda: torch.autograd.gradgradcheck(fn, (x, *params), fast_mode=True), repeat=1) if count <= 20_000 else float("nan")
        fast_min, fast_med, ours_min, ours_med = interleaved(lambda: torch.autograd.gradcheck(fn, (x, *params), fast_mode=True), lambda: dc.check_torch(model, x.detach(), fast=True))
        print(f"{count:9d} {mode:>12s} {ours:10.3f} {ours2:8.2f} {slow:9.2f} {gg:8.2f} {ours_min:9.3f} {fast_min:8.3f} {ours_min / fast_min:13.2f}, {ours_med / fast_med:.2f}")
    print("(nan: skipped, would take hours; gradgradcheck in fast mode)")


def small_loss() -> None:
    """The check unit tests and Hypothesis examples run by the hundred: the loss of a tanh
    MLP (4-8-1, 49 parameters) as a function of its flat parameters, float64."""
    print("\n== a small check: the loss of a 4-8-1 tanh MLP as a function of its 49 flat parameters (min of 7 alternating runs) ==")
    gen = torch.Generator().manual_seed(0)
    X, Y = torch.randn(16, 4, generator=gen, dtype=torch.float64), torch.randn(16, 1, generator=gen, dtype=torch.float64)

    def loss(theta):
        W1, b1, W2, b2 = theta[:32].view(8, 4), theta[32:40], theta[40:48].view(1, 8), theta[48:49]
        return ((torch.tanh(X @ W1.T + b1) @ W2.T + b2 - Y) ** 2).mean()

    theta = torch.randn(49, generator=gen, dtype=torch.float64) * 0.5
    leaf = theta.clone().requires_grad_(True)
    ours_min, ours_med, peer_min, peer_med = interleaved(lambda: dc.check_torch(loss, theta), lambda: torch.autograd.gradcheck(loss, (leaf,)), repeat=7)
    caught = not dc.check_torch(lambda t: ScaleGrad.apply(loss(t), 1e-6), theta).ok
    peer_caught = flagged(lambda t: ScaleGrad.apply(loss(t), 1e-6), leaf)
    print(f"derivcheck {ours_min * 1e3:.1f} ms (median {ours_med * 1e3:.1f}), gradcheck {peer_min * 1e3:.1f} ms (median {peer_med * 1e3:.1f}): {ours_min / peer_min:.1f}x")
    print(f"a (1 + 1e-6) backward error: derivcheck {'FLAGGED' if caught else 'missed'}, gradcheck {'FLAGGED' if peer_caught else 'missed'}")


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


def flagged(fn, *args, **options) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return not torch.autograd.gradcheck(fn, args, raise_exception=False, **options)
        except Exception:
            return True


def detection() -> None:
    print("\n== seeded bugs: relative error of the backward -> flagged? ==")
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    levels = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9]
    found = {"derivcheck": 0, "fast=True": 0, "gradcheck": 0, "gc fast": 0}
    print(f"{'rel error':>9s} {'derivcheck':>11s} {'fast=True':>10s} {'gradcheck':>10s} {'gc fast':>8s}")
    for rel in [0.0] + levels:
        f = make_function(rel)
        row = {
            "derivcheck": not dc.check_torch(f, x.detach()).ok,
            "fast=True": not dc.check_torch(f, x.detach(), fast=True).ok,
            "gradcheck": flagged(f, x),
            "gc fast": flagged(f, x, fast_mode=True),
        }
        print(f"{rel:9.0e} " + " ".join(f"{('FLAGGED' if v else 'ok'):>{w}s}" for v, w in zip(row.values(), (11, 10, 10, 8))))
        if rel:
            for k, v in row.items():
                found[k] += v
    print(f"flagged of {len(levels)} seeded bugs: " + ", ".join(f"{k} {v}" for k, v in found.items()) + " (0e+00 row: the correct code, must be ok)")
    model = mlp(1000, 1, 1000)
    x = torch.randn(2, 1000, dtype=torch.float64, requires_grad=True)
    fn, params = as_function(model, rel=1e-6)
    ours = not dc.check_torch(fn, x.detach(), *[p.detach() for p in params], fast=True).ok
    print(f"1e6-parameter MLP, backward off by 1e-6: derivcheck fast=True {'FLAGGED' if ours else 'ok'}, gradcheck fast_mode {'FLAGGED' if flagged(fn, x, *params, fast_mode=True) else 'ok'}")


def programs(count: int) -> None:
    print(f"\n== {count} random correct torch programs per kind (and the same with a 1e-3 error in the backward) ==")
    print(f"{'kind':>16s} {'dc false alarms':>16s} {'dc inconclusive':>16s} {'gc false alarms':>16s} {'dc caught':>10s} {'gc caught':>10s} {'dc s':>6s} {'gc s':>6s}")
    for kind in ("float64", "float32", "float32 closure"):
        dtype = torch.float64 if kind == "float64" else torch.float32
        ours_fa = ours_inconclusive = theirs_fa = ours_caught = theirs_caught = 0
        ours_time = theirs_time = 0.0
        for seed in range(count):
            program = random_program(seed, dtype)
            if kind == "float32 closure":  # the weights closed over, as a module holds them
                weights = program.inputs[1:]
                fn, inputs = (lambda x, program=program, weights=weights: program(x, *weights)), program.inputs[:1]
            else:
                fn, inputs = program, program.inputs
            args = [t.clone().requires_grad_(True) for t in inputs]
            bad = lambda *a, fn=fn: ScaleGrad.apply(fn(*a), 1e-3)  # noqa: E731
            start = time.perf_counter()
            verdict = dc.check_torch(fn, *inputs).verdict
            ours_fa += verdict == "mismatch"
            ours_inconclusive += verdict == "inconclusive"
            ours_caught += not dc.check_torch(bad, *inputs).ok
            ours_time += time.perf_counter() - start
            start = time.perf_counter()
            theirs_fa += flagged(fn, *args)
            theirs_caught += flagged(bad, *args)
            theirs_time += time.perf_counter() - start
        print(f"{kind:>16s} {ours_fa:16d} {ours_inconclusive:16d} {theirs_fa:16d} {ours_caught:10d} {theirs_caught:10d} {ours_time:6.1f} {theirs_time:6.1f}")
    print("(caught counts include programs whose gradient is zero or at rounding level, where no check can see a 1e-3 error;")
    print(" gradcheck in float32 flags correct and wrong programs alike)")


if __name__ == "__main__":
    torch.set_num_threads(2)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    speed()
    small_loss()
    detection()
    programs(n)
