"""The engines, by name. Each computes the same named quantities independently."""

from __future__ import annotations

from derivcheck.engines.base import Engine
from derivcheck.engines.finite_diff.network import FiniteDifferences
from derivcheck.engines.numpy_backprop.network import NumpyBackprop
from derivcheck.engines.symbolic.engine import SymbolicEngine
from derivcheck.devices import cuda_available
from derivcheck.engines.torch_autograd.network import TorchAutograd
from derivcheck.engines.torch_func import TorchFunc

ENGINE_NAMES = ("symbolic", "finite_diff", "numpy", "torch", "torch_func")
"""All engines in report order."""

NETWORK_ENGINES = ("symbolic", "finite_diff", "numpy", "torch")
"""The default engines of network (loss) cases."""

__all__ = ["ENGINE_NAMES", "NETWORK_ENGINES", "Engine", "TorchFunc", "make_engines", "FiniteDifferences", "NumpyBackprop", "SymbolicEngine", "TorchAutograd", "cuda_available"]


def make_engines(names: list[str], *, device: str = "cpu", finite_diff: dict | None = None) -> list[Engine]:
    """Build engines by name, in :data:`ENGINE_NAMES` order.

    `device` applies to the torch engine; `finite_diff` holds ``method``/``step`` options.
    """
    factories = {
        "symbolic": lambda: SymbolicEngine(),
        "finite_diff": lambda: FiniteDifferences(**(finite_diff or {})),
        "numpy": lambda: NumpyBackprop(),
        "torch": lambda: TorchAutograd(device=device),
        "torch_func": lambda: TorchFunc(device=device),
    }
    return [factories[name]() for name in ENGINE_NAMES if name in names]
