"""Speed of derivcheck's engines on MLPs, beside the peers, measured in the same run.

For a 20->20->20 tanh net and a 4->64->64->3 tanh net (batch 16, float64):

- symbolic build time (derive + compile, cold cache) -- target < 5 s for 20->20->20;
- evaluation time of each engine for the full set of quantities (warm);
- the compiled symbolic per-sample Jacobian beside ``torch.func.vmap(jacrev)`` and
  ``torch.autograd.functional.jacobian`` (target: the compiled reference is faster);
- ``torch.autograd.gradcheck`` on the same loss w.r.t. all parameters, for scale.

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


def bench(widths: list[int]) -> list[tuple[str, float]]:
    problem = build(widths)
    qs = expand_quantities(["L", "dL/dparams", "dL/dx", "dy/dx"], problem)
    jac = expand_quantities(["dy/dx"], problem)
    rows: list[tuple[str, float]] = []

    symbolic_module._COMPILED.clear()
    symbolic_module._COMPILED_LOSSES.clear()
    start = time.perf_counter()
    SymbolicEngine().compute(problem, qs)
    rows.append(("symbolic build (derive + lambdify cse, cold)", time.perf_counter() - start))

    for engine in (SymbolicEngine(), NumpyBackprop(), TorchAutograd(), FiniteDifferences()):
        rows.append((f"{engine.name}: all quantities", timed(lambda e=engine: e.compute(problem, qs), repeat=3)))

    rows.append(("symbolic: dy/dx (compiled reference)", timed(lambda: SymbolicEngine().compute(problem, jac))))

    model = problem.network.torch_model(problem.params)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.tensor(problem.x)

    def single(xi):
        return torch.func.functional_call(model, params, (xi.unsqueeze(0),)).squeeze(0)

    rows.append(("torch.func.vmap(jacrev): dy/dx", timed(lambda: torch.func.vmap(torch.func.jacrev(single))(x))))
    rows.append(("torch.autograd.functional.jacobian: dy/dx", timed(lambda: torch.autograd.functional.jacobian(model, x))))

    targets = torch.tensor(problem.targets)
    flat = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]

    def loss_of(*ps):
        out = torch.func.functional_call(model, dict(zip(names, ps)), (x,))
        return torch.nn.functional.mse_loss(out, targets)

    rows.append(("torch.autograd.gradcheck: dL/dparams", timed(lambda: torch.autograd.gradcheck(loss_of, flat), repeat=1)))
    rows.append(("torch.autograd.gradcheck(fast_mode=True)", timed(lambda: torch.autograd.gradcheck(loss_of, flat, fast_mode=True), repeat=3)))
    return rows


def main() -> None:
    torch.set_num_threads(1)
    for widths in ([20, 20, 20], [4, 64, 64, 3]):
        rows = bench(widths)
        times = dict(rows)
        print(f"\n== {'->'.join(map(str, widths))} tanh MLP, batch 16, float64 ==")
        print(f"{'what':48s} {'time':>10s}")
        for name, seconds in rows:
            print(f"{name:48s} {seconds * 1e3:9.2f} ms")
        ref = times["symbolic: dy/dx (compiled reference)"]
        print(f"ratio torch.func.vmap(jacrev) / compiled symbolic dy/dx: {times['torch.func.vmap(jacrev): dy/dx'] / ref:.2f}x")
        print(f"ratio autograd.functional.jacobian / compiled symbolic dy/dx: {times['torch.autograd.functional.jacobian: dy/dx'] / ref:.2f}x")
        grad = times["torch.autograd.gradcheck: dL/dparams"]
        print(f"ratio gradcheck / derivcheck finite_diff (Richardson): {grad / times['finite_diff: all quantities']:.2f}x")
        print(f"ratio gradcheck / derivcheck symbolic+numpy+torch (warm): {grad / (times['symbolic: all quantities'] + times['numpy: all quantities'] + times['torch: all quantities']):.2f}x")


if __name__ == "__main__":
    main()
