"""derivcheck's check_torch beside torch.autograd.gradcheck / gradgradcheck, same run.

1. Time to a verdict on a tanh MLP with ~1e2, ~1e4 and ~1e6 parameters (float64, best of
   3): check_torch (default; ``fast=True``; ``order=2``) vs gradcheck (fast_mode off and
   on) and gradgradcheck. gradcheck without fast mode on 1e6 parameters would take hours:
   it is skipped above 2e4 parameters and reported as such.
2. Detection: a custom Function whose backward is off by a relative error of 1e-1 ... 1e-9
   (and the correct one: no false alarm allowed), and the 1e6-parameter MLP with its
   backward off by 1e-6, for which gradcheck's fast mode is the only peer that finishes.
3. False alarms and detection on random correct compositions of torch ops (the programs
   of tests/programs.py) in float64 and float32, and on the same programs with their
   backward off by 1e-3 -- counted for derivcheck and for gradcheck with its defaults.

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
    print(f"\n== {count} random correct torch programs per dtype (and the same with a 1e-3 error in the backward) ==")
    print(f"{'dtype':>8s} {'derivcheck false alarms':>24s} {'gradcheck false alarms':>23s} {'derivcheck caught':>18s} {'gradcheck caught':>17s} {'derivcheck s':>13s} {'gradcheck s':>12s}")
    for dtype in (torch.float64, torch.float32):
        ours_fa = theirs_fa = ours_caught = theirs_caught = 0
        ours_time = theirs_time = 0.0
        for seed in range(count):
            program = random_program(seed, dtype)
            args = [t.clone().requires_grad_(True) for t in program.inputs]
            bad = lambda *a, program=program: ScaleGrad.apply(program(*a), 1e-3)  # noqa: E731
            start = time.perf_counter()
            ours_fa += not dc.check_torch(program, *program.inputs).ok
            ours_caught += not dc.check_torch(bad, *program.inputs).ok
            ours_time += time.perf_counter() - start
            start = time.perf_counter()
            theirs_fa += flagged(program, *args)
            theirs_caught += flagged(bad, *args)
            theirs_time += time.perf_counter() - start
        name = str(dtype).replace("torch.", "")
        print(f"{name:>8s} {ours_fa:24d} {theirs_fa:23d} {ours_caught:18d} {theirs_caught:17d} {ours_time:13.1f} {theirs_time:12.1f}")
    print("(caught counts include programs whose gradient is zero or at rounding level, where no check can see a 1e-3 error)")


if __name__ == "__main__":
    torch.set_num_threads(2)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    speed()
    detection()
    programs(n)
