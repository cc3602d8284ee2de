"""Scale-out benchmark: compile cache cold vs warm, -j 2 vs -j 1, Dask LocalCluster vs -j 2.

Runs ``derivcheck run`` as subprocesses (every timing includes interpreter start-up) on two
generated 120-case suites and prints the ratios measured in this one run::

    python benchmarks/bench_scale.py [--repeat N] [--quick]

* ``suite-recurrent-grid.toml`` (engines symbolic/numpy/torch, LSTM/GRU/RNN cells over 60
  geometries): the symbolic build dominates a cold run -- the cache's case. (Linear layers
  no longer serve: they are derived once for any width, so a grid of them is start-up.) Cold and warm, each with ``-j 1``,
  ``-j 2`` and Dask.
* ``suite-mlp-grid.toml`` (the default four engines, finite differences included, MLPs up
  to 32 wide, batch 16): the evaluation dominates, as in a CI gate suite -- the workers' case. Warm
  ``-j 1``, ``-j 2`` and Dask. (``--quick`` skips it.)

Cold runs start from an empty cache folder each; warm runs are the best of ``--repeat``
(default 3), because a shared 2-core machine varies 10-20% between runs. Not a test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "derivcheck", "run", *args, "-q"], cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"derivcheck run {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    print(f"  {elapsed:7.2f} s  derivcheck run {' '.join(args)}   ({done.stdout.strip().splitlines()[-1]})", flush=True)
    return elapsed


def best(args: list[str], repeat: int) -> float:
    return min(timed(args) for _ in range(repeat))


def start_up(repeat: int) -> float:
    """Seconds to start Python and import derivcheck and torch (every run pays this once)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import derivcheck.runner, torch"], check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="only the symbolic-heavy suite")
    options = parser.parse_args()
    try:
        import distributed  # noqa: F401

        has_dask = True
    except ImportError:
        has_dask = False
        print("(Dask not installed: pip install 'derivcheck[dask]'; its rows are skipped)")
    repeat = options.repeat
    dask_args = ["--dask", "local", "--dask-workers", "2"]
    wide = str(ROOT / "benchmarks" / "suite-recurrent-grid.toml")
    mlp = str(ROOT / "benchmarks" / "suite-mlp-grid.toml")
    lines = []
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as cache_j2, tempfile.TemporaryDirectory() as cache_dask, tempfile.TemporaryDirectory() as cache_mlp:
        print(f"{wide}: cold cache (empty folder each)")
        cold = timed([wide, "--cache-dir", cache])
        cold_j2 = timed([wide, "--cache-dir", cache_j2, "-j", "2"])
        cold_dask = timed([wide, "--cache-dir", cache_dask, *dask_args]) if has_dask else None
        print(f"{wide}: warm cache (best of {repeat})")
        warm = best([wide, "--cache-dir", cache], repeat)
        warm_j2 = best([wide, "--cache-dir", cache, "-j", "2"], repeat)
        lines += [
            "suite-recurrent-grid (symbolic build dominates):",
            f"  cold / warm cache (-j 1):             {cold / warm:5.1f}x   (target >= 10x)",
            f"  -j 1 / -j 2, cold cache:              {cold / cold_j2:5.2f}x   (target >= 1.7x)",
            f"  -j 1 / -j 2, warm cache:              {warm / warm_j2:5.2f}x",
        ]
        if cold_dask is not None:
            dask = best([wide, "--cache-dir", cache, *dask_args], repeat)
            lines.append(f"  dask local (2 workers) / -j 2, cold:  {cold_dask / cold_j2:5.2f}    (target <= 1.2)")
            lines.append(f"  dask local (2 workers) / -j 2, warm:  {dask / warm_j2:5.2f}    (target <= 1.2)")
        if not options.quick:
            print(f"{mlp}: warm cache (one run to fill it, then best of {repeat})")
            timed([mlp, "--cache-dir", cache_mlp])
            mlp_j1 = best([mlp, "--cache-dir", cache_mlp], repeat)
            mlp_j2 = best([mlp, "--cache-dir", cache_mlp, "-j", "2"], repeat)
            lines += ["suite-mlp-grid (four engines, evaluation dominates):", f"  -j 1 / -j 2, warm cache:              {mlp_j1 / mlp_j2:5.2f}x   (target >= 1.7x)"]
            if has_dask:
                mlp_dask = best([mlp, "--cache-dir", cache_mlp, *dask_args], repeat)
                lines.append(f"  dask local (2 workers) / -j 2, warm:  {mlp_dask / mlp_j2:5.2f}    (target <= 1.2)")
    fixed = start_up(repeat)
    lines.append(f"start-up every run pays (python -c 'import derivcheck.runner, torch', best of {repeat}): {fixed:.2f} s")
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
