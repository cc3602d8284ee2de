"""Scale-out benchmark: compile cache cold vs warm, -j 2 vs -j 1, Dask LocalCluster vs -j 2.

Runs ``derivcheck run`` on a generated suite (default ``benchmarks/suite-wide-grid.toml``:
120 cases, engines symbolic/numpy/torch -- finite differences cost the same with or
without the cache) as subprocesses, so every timing includes interpreter start-up, and
prints the ratios measured in this one run::

    python benchmarks/bench_scale.py [SUITE] [--repeat N]

Cold runs start from an empty cache folder each; warm runs are the best of ``--repeat``
(default 3) runs, because a shared 2-core machine varies 10-20% between runs. The start-up
every run pays (Python, derivcheck and torch imports) is measured too: it is the part no
number of workers shortens. Not a test.
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
        subprocess.run([sys.executable, "-c", "import derivcheck.cli, torch"], check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite", nargs="?", default=str(ROOT / "benchmarks" / "suite-wide-grid.toml"))
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    try:
        import distributed  # noqa: F401

        has_dask = True
    except ImportError:
        has_dask = False
    print(f"suite: {options.suite}")
    with tempfile.TemporaryDirectory() as cold1, tempfile.TemporaryDirectory() as cold2:
        suite = options.suite
        print("cold cache (empty folder):")
        cold = timed([suite, "--cache-dir", cold1])
        cold_j2 = timed([suite, "--cache-dir", cold2, "-j", "2"])
        print(f"warm cache (best of {options.repeat}):")
        warm = best([suite, "--cache-dir", cold1], options.repeat)
        warm_j2 = best([suite, "--cache-dir", cold1, "-j", "2"], options.repeat)
        dask = best([suite, "--cache-dir", cold1, "--dask", "local", "--dask-workers", "2"], options.repeat) if has_dask else None
    fixed = start_up(options.repeat)
    print(f"start-up (python -c 'import derivcheck.cli, torch', best of {options.repeat}): {fixed:.2f} s")
    print()
    print(f"cold / warm cache (-j 1):                 {cold / warm:5.1f}x   (target >= 10x)")
    print(f"-j 1 / -j 2, cold cache:                  {cold / cold_j2:5.2f}x   (target >= 1.7x)")
    print(f"-j 1 / -j 2, warm cache:                  {warm / warm_j2:5.2f}x")
    print(f"  the same without start-up:              {(warm - fixed) / max(warm_j2 - fixed, 1e-9):5.2f}x")
    if dask is not None:
        print(f"dask local (2 workers) / -j 2, warm:      {dask / warm_j2:5.2f}    (target <= 1.2)")
    else:
        print("dask: not installed (pip install 'derivcheck[dask]')")


if __name__ == "__main__":
    main()
