"""Speed of derivcheck's engines on MLPs, beside the peers, measured in the same run.

For tanh MLPs ``4 -> W -> W -> 3`` at widths W = 20, 64, 256 and the digits MLP
``64 -> 128 -> 128 -> 10`` (batch 16, float64):

- symbolic build time (derive + compile, compile cache off, after SymPy is imported) --
  target: under 1 s at any width (a dense layer is one derived product term);
- the compiled symbolic ``dy/dx`` beside ``torch.func.vmap(jacrev)`` and the symbolic
  all-parameter gradient beside ``torch.func.grad`` -- target: at least as fast (ratio >= 1);
- each engine's time for the full set of quantities, and ``torch.autograd.gradcheck`` at
  width 20 for scale.

Run: ``python benchmarks/bench_mlp.py``. Prints a table of times and ratios. Not a test.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from derivcheck.engines import FiniteDifferences, NumpyBackprop, SymbolicEngine, TorchAutograd  # noqa: E402
from derivcheck.engines.symbolic import layers as symbolic_module  # noqa: E402
from derivcheck.layers import LAYERS, LOSSES  # noqa: E402
from derivcheck.problem import Network, Problem  # noqa: E402
from derivcheck.quantities import expand_quantities  # noqa: E402


def timed(fn, repeat: int = 5) -> float:
    """Median wall time of `repeat` calls after one warm-up."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def build(widths: list[int], batch: int = 16) -> Problem:
    layers = []
    for i in range(len(widths) - 1):
        layers.append(LAYERS["linear"](**{"in": widths[i], "out": widths[i + 1], "bias": True}))
        if i < len(widths) - 2:
            layers.append(LAYERS["tanh"]())
    network = Network.build(layers)
    rng = np.random.default_rng(0)
    loss = LOSSES["mse"]()
    return Problem(network, network.init_params(0), rng.standard_normal((batch, widths[0])), loss, loss.random_targets(rng, batch, widths[-1]))


def cold_build(problem: Problem, qs) -> float:
    """Derive and compile everything the symbolic engine needs, nothing cached."""
    from derivcheck import compile_cache
    from derivcheck.engines.symbolic import rules as symbolic_rules

    compile_cache.configure(enabled=False)
    for table in (symbolic_module._COMPILED, symbolic_module._COMPILED_LOSSES, symbolic_rules._CELLS):
        table.clear()
    start = time.perf_counter()
    SymbolicEngine().compute(problem, qs)
    return time.perf_counter() - start


def bench(widths: list[int], gradcheck: bool) -> list[tuple[str, float]]:
    problem = build(widths)
    qs = expand_quantities(["L", "dL/dparams", "dL/dx", "dy/dx"], problem)
    jac = expand_quantities(["dy/dx"], problem)
    grads = expand_quantities(["dL/dparams"], problem)
    rows: list[tuple[str, float]] = [("symbolic build (derive + lambdify, cold)", cold_build(problem, qs))]

    engines = [SymbolicEngine(), NumpyBackprop(), TorchAutograd()] + ([FiniteDifferences()] if max(widths) <= 64 else [])  # full FD at width 256: a minute
    for engine in engines:
        rows.append((f"{engine.name}: all quantities", timed(lambda e=engine: e.compute(problem, qs), repeat=3)))

    rows.append(("symbolic: dy/dx (compiled reference)", timed(lambda: SymbolicEngine().compute(problem, jac))))
    rows.append(("symbolic: dL/dparams (compiled reference)", timed(lambda: SymbolicEngine().compute(problem, grads))))

    model = problem.network.torch_model(problem.params)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.tensor(problem.x)

    def single(xi):
        return torch.func.functional_call(model, params, (xi.unsqueeze(0),)).squeeze(0)

    rows.append(("torch.func.vmap(jacrev): dy/dx", timed(lambda: torch.func.vmap(torch.func.jacrev(single))(x))))

    targets = torch.tensor(problem.targets)
    names = [n for n, _ in model.named_parameters()]

    def loss_of(ps):
        out = torch.func.functional_call(model, ps, (x,))
        return torch.nn.functional.mse_loss(out, targets)

    rows.append(("torch.func.grad: dL/dparams", timed(lambda: torch.func.grad(loss_of)(params))))
    if gradcheck:
        flat = [p.detach().clone().requires_grad_(True) for p in model.parameters()]

        def loss_flat(*ps):
            return loss_of(dict(zip(names, ps)))

        rows.append(("torch.autograd.gradcheck: dL/dparams", timed(lambda: torch.autograd.gradcheck(loss_flat, flat), repeat=1)))
    return rows


def main() -> None:
    torch.set_num_threads(1)
    import sympy  # noqa: F401 - imported once, outside the timed builds

    for widths in ([4, 20, 20, 3], [4, 64, 64, 3], [4, 256, 256, 3], [64, 128, 128, 10]):
        rows = bench(widths, gradcheck=widths[1] == 20)
        times = dict(rows)
        print(f"\n== {'->'.join(map(str, widths))} tanh MLP, batch 16, float64 ==")
        print(f"{'what':48s} {'time':>10s}")
        for name, seconds in rows:
            print(f"{name:48s} {seconds * 1e3:9.2f} ms")
        print(f"ratio torch.func.vmap(jacrev) / symbolic dy/dx: {times['torch.func.vmap(jacrev): dy/dx'] / times['symbolic: dy/dx (compiled reference)']:.2f}x (target >= 1)")
        print(f"ratio torch.func.grad / symbolic dL/dparams: {times['torch.func.grad: dL/dparams'] / times['symbolic: dL/dparams (compiled reference)']:.2f}x (target >= 1)")
        if "torch.autograd.gradcheck: dL/dparams" in times:
            print(f"ratio gradcheck / derivcheck finite_diff (Richardson): {times['torch.autograd.gradcheck: dL/dparams'] / times['finite_diff: all quantities']:.2f}x")


if __name__ == "__main__":
    main()
