"""The create_graph Laplacian of the PINN case on CUDA beside the CPU, float32 and float64.

Times the torch engine (nested ``autograd.grad(create_graph=True)``) and the torch_func
engine (``vmap(hessian)``) computing ``laplacian(u)`` of ``cases/pde/helmholtz-pinn.toml``'s
[2, 50, 50, 50, 1] network on its 1,000 points, on each device that is present, and
checks that every device and dtype gives the same Laplacian (float64 to 1e-10, float32 to
1e-4 of the float64 CPU values). Prints one line per measurement and the CUDA/CPU ratios.

Run: ``python benchmarks/gpu_timing.py`` (``benchmarks/gpu_check.sh`` runs it). Not a test.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import derivcheck as dc  # noqa: E402
from derivcheck.engines import TorchAutograd, TorchFunc, cuda_available  # noqa: E402
from derivcheck.fields import field_quantities  # noqa: E402


def best(fn, repeat: int = 10) -> float:
    fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    case = dc.load_case(ROOT / "cases" / "pde" / "helmholtz-pinn.toml")
    base = next(p for p in case.problems if p.kind == "network")
    devices = ["cpu"] + (["cuda"] if cuda_available() else [])
    if len(devices) == 1:
        print("no CUDA device here: CPU timings only")
    reference = None
    rows = {}
    failures = 0
    for dtype in ("float64", "float32"):
        problem = base.__class__(**{**base.__dict__, "dtype": dtype}) if hasattr(base, "__dataclass_fields__") else base
        qs = field_quantities(problem, ["laplacian(u)"])
        for device in devices:
            for engine in (TorchAutograd(device=device), TorchFunc(device=device)):
                value = engine.compute(problem, qs)["laplacian(u)"].values
                if reference is None:
                    reference = value
                tolerance = 1e-10 if dtype == "float64" else 1e-4
                error = float(np.max(np.abs(value - reference)) / np.max(np.abs(reference)))
                ok = error <= tolerance
                failures += not ok
                seconds = best(lambda e=engine: e.compute(problem, qs))
                rows[(engine.name, device, dtype)] = seconds
                print(f"{engine.name:10s} {device:4s} {dtype:7s} {seconds * 1e3:9.2f} ms   max rel diff to float64 CPU {error:.1e} {'ok' if ok else 'MISMATCH'}")
    if "cuda" in devices:
        for (name, device, dtype), seconds in rows.items():
            if device == "cuda":
                print(f"ratio CPU / CUDA, {name} {dtype}: {rows[(name, 'cpu', dtype)] / seconds:.2f}x")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
