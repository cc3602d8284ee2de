"""The finite-difference engine's entrywise dL/dparams beside a peer, same run.

For each network (float64, the shipped cases' batch sizes) this times, best of 3:

- derivcheck's finite differences of every parameter (Richardson: 6 forward passes per
  entry), with the passes stacked along the sample axis (the default), and
- the same with stacking switched off (one forward pass at a time, as before), and
- the peer: ``torch.autograd.gradcheck.get_numerical_jacobian`` of the same loss w.r.t.
  the flattened parameters (plain central differences: 2 torch forward passes per entry).

The ratios printed are peer / derivcheck and one-at-a-time / stacked; per forward pass
the peer does a third of derivcheck's work, so "per pass" divides that out.

Run: ``python benchmarks/bench_fd.py``. Not a test.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from derivcheck import load_case  # noqa: E402
from derivcheck.engines import FiniteDifferences  # noqa: E402
from derivcheck.engines.finite_diff import network as fd_network  # noqa: E402
from derivcheck.quantities import expand_quantities  # noqa: E402
from helpers import make_problem  # noqa: E402


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def derivcheck_fd(problem, stacked: bool) -> float:
    quantities = expand_quantities(["dL/dparams"], problem)
    engine = FiniteDifferences()
    original = fd_network._stackable
    if not stacked:
        fd_network._stackable = lambda problem, start: False  # type: ignore[assignment]
    try:
        return best(lambda: engine.compute(problem, quantities))
    finally:
        fd_network._stackable = original  # type: ignore[assignment]


def gradcheck_fd(problem) -> float:
    """get_numerical_jacobian of the torch loss w.r.t. all parameters, flattened."""
    numerical = sys.modules["torch.autograd.gradcheck"].get_numerical_jacobian
    model = problem.network.torch_model(problem.params, "float64", "cpu")
    named = dict(model.named_parameters())
    shapes = [(name, p.shape) for name, p in named.items()]
    flat = torch.cat([p.detach().reshape(-1) for p in named.values()]).requires_grad_(True)
    x = torch.tensor(problem.x, dtype=torch.float64)
    targets = torch.as_tensor(problem.targets, dtype=torch.float64)

    def loss(inputs):
        (vector,) = inputs
        pieces, offset = {}, 0
        for name, shape in shapes:
            size = int(np.prod(shape))
            pieces[name] = vector[offset : offset + size].reshape(shape)
            offset += size
        return problem.loss.torch_loss(torch.func.functional_call(model, pieces, (x,)), targets).reshape(1)

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return best(lambda: numerical(loss, (flat,), eps=1e-6))


def networks():
    yield "tanh 4-20-20-3, batch 16", make_problem([("linear", {"in": 4, "out": 20}), ("tanh", {}), ("linear", {"in": 20, "out": 20}), ("tanh", {}), ("linear", {"in": 20, "out": 3})], batch=16)
    yield "relu 8-32-32-4, batch 32", make_problem([("linear", {"in": 8, "out": 32}), ("relu", {}), ("linear", {"in": 32, "out": 32}), ("relu", {}), ("linear", {"in": 32, "out": 4})], batch=32)
    for name in ("lenet-digits", "lstm-classifier", "transformer-block"):
        case = load_case(ROOT / "cases" / f"{name}.toml")
        yield f"case {name}", case.problems[0] if hasattr(case, "problems") else case.problem


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'network':34} {'params':>7} {'stacked':>9} {'1-at-a-time':>12} {'gradcheck':>10}  gain  vs gradcheck (per pass)")
    for label, problem in networks():
        params = sum(int(v.size) for v in problem.params.values())
        stacked = derivcheck_fd(problem, True)
        single = derivcheck_fd(problem, False)
        peer = gradcheck_fd(problem)
        print(f"{label:34} {params:7,} {stacked:8.3f}s {single:11.3f}s {peer:9.3f}s {single / stacked:5.1f}x  {peer / stacked:5.2f}x ({3 * peer / stacked:5.2f}x)")


if __name__ == "__main__":
    main()
