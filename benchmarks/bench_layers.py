"""Speed of the symbolic engine on convolution, recurrent, normalisation and attention
layers, at the sizes the shipped cases use and at 4x those sizes, beside torch autograd
and the numpy engine measured in the same run.

For each layer: the symbolic build (derive + compile the local rule's cells, cold cache),
the symbolic evaluation of L, dL/dparams and dL/dx (warm), the numpy engine, and torch
autograd (``loss.backward()`` on the real module) -- plus the ratio symbolic / torch.
Each layer is followed by a linear head with 2 outputs and an MSE loss.
"4x" scales the work: 4x the pixels of an image, 4x the time steps of a sequence, 4x the
positions of an attention block.

Run: ``python benchmarks/bench_layers.py`` (about a minute). Not a test.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from derivcheck.engines import NumpyBackprop, SymbolicEngine, TorchAutograd  # noqa: E402
from derivcheck.engines.symbolic import layers as symbolic_module  # noqa: E402
from derivcheck.engines.symbolic import rules as symbolic_rules  # noqa: E402
from derivcheck.layers import LAYERS, LOSSES  # noqa: E402
from derivcheck.problem import Network, Problem  # noqa: E402
from derivcheck.quantities import expand_quantities  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mlp import timed  # noqa: E402

# (title, layer specs, input shape at the shipped size, input shape at 4x)
CONFIGS = [
    ("conv2d 1->4 k3 p1 (LeNet layer 1)", [("conv2d", dict(in_channels=1, out_channels=4, kernel_size=3, padding=1)), ("tanh", {})], (1, 8, 8), (1, 16, 16)),
    ("max_pool2d k2", [("max_pool2d", dict(kernel_size=2))], (4, 8, 8), (4, 16, 16)),
    ("lstm F=3 H=5", [("lstm", dict(input_size=3, hidden_size=5))], (6, 3), (24, 3)),
    ("gru F=2 H=4 sequence", [("gru", dict(input_size=2, hidden_size=4, output="sequence"))], (5, 2), (20, 2)),
    ("layer_norm D=8", [("layer_norm", dict(normalized_shape=8))], (4, 8), (16, 8)),
    ("batch_norm2d C=4 (train)", [("batch_norm2d", dict(num_features=4))], (4, 4, 4), (4, 8, 8)),
    ("transformer_encoder D=4 h=2 ff=8", [("transformer_encoder", dict(embed_dim=4, num_heads=2, dim_feedforward=8))], (4, 4), (16, 4)),
]


def problem(specs, in_shape, batch: int = 8) -> Problem:
    """The layer(s) under test, then (like every shipped case) a small linear head."""
    layers = [LAYERS[kind].from_spec({"layer": kind, **opts}, file=None, key="bench", type_key="layer") for kind, opts in specs]
    body = Network.build(layers, in_shape=in_shape)
    if len(body.shapes[-1]) > 1:
        layers.append(LAYERS["flatten"]())
    layers.append(LAYERS["linear"](**{"in": body.out_size, "out": 2, "bias": True}))
    network = Network.build(layers, in_shape=in_shape)
    rng = np.random.default_rng(0)
    loss = LOSSES["mse"]()
    return Problem(network, network.init_params(0), rng.standard_normal((batch, network.in_size)), loss, loss.random_targets(rng, batch, network.out_size))


def main() -> None:
    header = f"{'layer':36} {'size':5} {'build s':>8} {'symbolic ms':>12} {'numpy ms':>9} {'torch ms':>9} {'sym/torch':>9}"
    print(header)
    print("-" * len(header))
    symbolic, numpy_engine, torch_engine = SymbolicEngine(), NumpyBackprop(), TorchAutograd()
    for title, specs, shipped, scaled in CONFIGS:
        for label, shape in (("1x", shipped), ("4x", scaled)):
            p = problem(specs, shape)
            qs = expand_quantities(["L", "dL/dparams", "dL/dx"], p)
            symbolic_module._COMPILED.clear()
            symbolic_rules._CELLS.clear()
            start = time.perf_counter()
            symbolic.compute(p, qs)
            build = time.perf_counter() - start
            t_sym = timed(lambda: symbolic.compute(p, qs))
            t_np = timed(lambda: numpy_engine.compute(p, qs))
            t_torch = timed(lambda: torch_engine.compute(p, qs))
            print(f"{title:36} {label:5} {build:8.2f} {t_sym * 1e3:12.2f} {t_np * 1e3:9.2f} {t_torch * 1e3:9.2f} {t_sym / t_torch:9.1f}")


if __name__ == "__main__":
    main()
