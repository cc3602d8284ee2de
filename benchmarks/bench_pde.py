"""Speed of derivcheck's PDE operator paths, beside the peers, measured in the same run.

1. Laplacian of a [2, 50, 50, 50, 1] tanh network at 1k and 10k points, float64:
   derivcheck's torch path (the torch engine's evaluation of ``laplacian(u)``) beside
   hand-written nested ``autograd.grad``, ``vmap(hessian)`` and ``vmap(jvp(grad))``
   (target: derivcheck within 1.2x of the fastest).
2. The symbolic engine's Laplacian of the same network (derived product terms and tanh
   units, second-order jets as matrix products) beside nested ``autograd.grad``
   (target: within 3x).
3. The compiled symbolic Laplacian of the Helmholtz manufactured solution at 1e5 points
   beside derivcheck's torch path on the same solution.

Run: ``python benchmarks/bench_pde.py``. Prints times and ratios. Not a test.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from derivcheck import case_from_dict  # noqa: E402
from derivcheck.engines import SymbolicEngine, TorchAutograd  # noqa: E402
from derivcheck.fields import field_quantities  # noqa: E402


def timed(fn, repeat: int = 15) -> float:
    """Best of `repeat` runs after a warm-up: on a shared 2-core machine the median moves
    by 2-5x between identical runs, the minimum is what the code costs."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples)


def case(points: int, widths: list[int], check: list[str]):
    return case_from_dict(
        {
            "variables": ["x", "y"],
            "constants": {"a1": 1, "a2": 4, "k": 1},
            "solution": "sin(a1*pi*x) * sin(a2*pi*y)",
            "pde": "laplacian(u) + k**2*u - f",
            "domain": {"x": [-1, 1], "y": [-1, 1]},
            "points": {"count": points},
            "network": {"widths": widths},
            "check": check,
            "quantities": ["laplacian(u)"],
        }
    )


def network_laplacian(points: int) -> None:
    c = case(points, [2, 50, 50, 50, 1], ["network"])
    (problem,) = c.problems
    qs = field_quantities(problem, ["laplacian(u)"])
    engine = TorchAutograd()
    model = problem.network.torch_model(problem.params)
    params = {k: v.detach() for k, v in model.named_parameters()}
    pts = torch.tensor(problem.points)

    def nested_grad():
        x = pts[:, 0].clone().requires_grad_(True)
        y = pts[:, 1].clone().requires_grad_(True)
        u = model(torch.stack([x, y], dim=1))[:, 0]
        ux, uy = torch.autograd.grad(u.sum(), (x, y), create_graph=True)
        uxx = torch.autograd.grad(ux.sum(), x, create_graph=True)[0]
        uyy = torch.autograd.grad(uy.sum(), y, create_graph=True)[0]
        return uxx + uyy

    def single(p):
        return torch.func.functional_call(model, params, (p.unsqueeze(0),)).squeeze()

    def vmap_hessian():
        return torch.func.vmap(torch.func.hessian(single))(pts).diagonal(dim1=-2, dim2=-1).sum(-1)

    grad_fn = torch.func.grad(single)

    def vmap_jvp_grad():
        def lap(p):
            total = 0.0
            for i in range(2):
                e = torch.zeros(2, dtype=p.dtype)
                e[i] = 1.0
                total = total + torch.func.jvp(grad_fn, (p,), (e,))[1][i]
            return total

        return torch.func.vmap(lap)(pts)

    reference = nested_grad().detach()
    ours = engine.compute(problem, qs)["laplacian(u)"].values
    assert np.allclose(ours, reference.numpy(), rtol=1e-12, atol=1e-12)
    assert torch.allclose(vmap_hessian(), reference, rtol=1e-10, atol=1e-12)
    assert torch.allclose(vmap_jvp_grad(), reference, rtol=1e-10, atol=1e-12)
    symbolic = SymbolicEngine()
    assert np.allclose(symbolic.compute(problem, qs)["laplacian(u)"].values, reference.numpy(), rtol=1e-10, atol=1e-12)
    rows = {
        "derivcheck symbolic (jets)": timed(lambda: symbolic.compute(problem, qs)),
        "derivcheck torch path": timed(lambda: engine.compute(problem, qs)),
        "nested autograd.grad": timed(nested_grad),
        "vmap(hessian)": timed(vmap_hessian),
        "vmap(jvp(grad))": timed(vmap_jvp_grad),
    }
    print(f"\n== Laplacian of a [2,50,50,50,1] tanh net, {points} points, float64 ==")
    fastest = min(rows.values())
    for name, seconds in rows.items():
        print(f"{name:28s} {seconds * 1e3:9.2f} ms   {seconds / fastest:5.2f}x the fastest")
    print(f"ratio symbolic / nested autograd.grad: {rows['derivcheck symbolic (jets)'] / rows['nested autograd.grad']:.2f}x (target <= 3)")


def manufactured(points: int) -> None:
    c = case(points, [2, 4, 1], ["exact"])
    (problem,) = c.problems
    qs = field_quantities(problem, ["laplacian(u)"])
    sym, tor = SymbolicEngine(), TorchAutograd()
    rows = {
        "symbolic (lambdify cse), incl. derive": timed(lambda: sym.compute(problem, qs), repeat=3),
        "derivcheck torch path": timed(lambda: tor.compute(problem, qs), repeat=3),
    }
    print(f"\n== Laplacian of the Helmholtz solution, {points} points, float64 ==")
    for name, seconds in rows.items():
        print(f"{name:40s} {seconds * 1e3:9.2f} ms")
    print(f"ratio torch / symbolic: {rows['derivcheck torch path'] / rows['symbolic (lambdify cse), incl. derive']:.2f}x")


if __name__ == "__main__":
    torch.set_num_threads(2)
    for n in (1_000, 10_000):
        network_laplacian(n)
    manufactured(100_000)
