"""Scale-out benchmark: compile cache cold vs warm, -j 2 vs -j 1, Dask LocalCluster vs -j 2.

Runs ``derivcheck run`` on a generated suite (default ``benchmarks/suite-wide-grid.toml``:
120 cases, engines symbolic/numpy/torch -- finite differences cost the same with or
without the cache) as subprocesses, so every timing includes interpreter start-up, and
prints the ratios measured in this one run::

    python benchmarks/bench_scale.py [SUITE]

Not a test: timings vary about 10-20% between runs on a shared 2-core machine.
"""

from __future__ import annotations

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
    print(f"  {elapsed:7.1f} s  derivcheck run {' '.join(args)}   ({done.stdout.strip().splitlines()[-1]})", flush=True)
    return elapsed


def main() -> None:
    suite = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "benchmarks" / "suite-wide-grid.toml")
    with tempfile.TemporaryDirectory() as tmp:
        cache = ["--cache-dir", tmp]
        print(f"suite: {suite}")
        cold = timed([suite, *cache])
        warm = timed([suite, *cache])
        j2 = timed([suite, *cache, "-j", "2"])
        try:
            import distributed  # noqa: F401

            dask = timed([suite, *cache, "--dask", "local", "--dask-workers", "2"])
        except ImportError:
            dask = None
            print("  (Dask not installed: pip install 'derivcheck[dask]')")
    print()
    print(f"cold / warm cache (-j 1):          {cold / warm:5.1f}x   (target >= 10x)")
    print(f"-j 1 / -j 2 (warm):                {warm / j2:5.2f}x   (target >= 1.7x)")
    if dask is not None:
        print(f"dask local (2 workers) / -j 2:     {dask / j2:5.2f}    (target <= 1.2)")


if __name__ == "__main__":
    main()
