"""Running many cases: in this process, in worker processes (``-j N``) or on Dask (``--dask``).

The unit of work is a :class:`CaseRef` -- a case file, the index of the case in it (suites
hold many) and the command line's overrides -- so that a worker loads and validates its
case itself and only results travel back. Results are always returned in the order of the
refs, whatever order they finish in, so the table, the JSON and the exit code do not depend
on the number of workers. A case whose run raises, or whose worker dies, becomes an
``error`` result naming the case; the rest of the suite completes.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import DerivcheckError

DASK_HINT = "--dask needs Dask's distributed scheduler: pip install 'derivcheck[dask]'"


@dataclass(frozen=True)
class CaseRef:
    """Case `index` of the file `path`, loaded with `overrides` (dtype, seed, engines)."""

    path: str
    index: int = 0
    overrides: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or (f"{self.path}#{self.index}" if self.index else self.path)


def case_refs(paths: Sequence[Any], overrides: dict[str, Any]) -> list[CaseRef]:
    """One ref per case under `paths` (folders searched like ``derivcheck run``)."""
    from .case import case_count, discover

    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None))
    refs = []
    for path in discover(paths):
        count = case_count(path)
        refs.extend(CaseRef(str(path), i, frozen, f"{path}#{i}" if count > 1 else str(path)) for i in range(count))
    return refs


def run_ref(ref: CaseRef, device: str = "cpu") -> list[Any]:
    """Load and run one case; an exception becomes an ``error`` result (never raised)."""
    from .case import load_case_at
    from .runner import run_any

    single_threaded_torch()
    try:
        overrides = {k: (list(v) if isinstance(v, tuple) else v) for k, v in ref.overrides}
        return run_any(load_case_at(ref.path, ref.index, overrides), device=device)
    except Exception as exc:  # reported as this case's error, the suite goes on
        return [error_result(ref, "case failed: " + traceback.format_exception_only(type(exc), exc)[-1].strip())]


def error_result(ref: CaseRef, message: str) -> Any:
    from .runner import CaseResult

    return CaseResult(name=ref.name, quantities=[], engines=[], file=ref.path, errors=[message])


def single_threaded_torch() -> None:
    """One torch thread per process: workers do not oversubscribe the machine, and torch's
    reductions sum in the same order whatever ``-j`` is (bitwise-identical reports)."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def parse_jobs(value: str) -> int:
    """``-j N`` or ``-j auto`` (the CPUs this process may use)."""
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    try:
        jobs = int(value)
    except ValueError:
        raise DerivcheckError(f"-j must be a positive integer or 'auto', got {value!r}") from None
    if jobs < 1:
        raise DerivcheckError(f"-j must be a positive integer or 'auto', got {value!r}")
    return jobs


Progress = Callable[[int, int, list[Any]], None]
"""Called as ``progress(done, total, results of the case just finished)``."""


def run_refs(refs: Sequence[CaseRef], *, device: str = "cpu", jobs: int = 1, progress: Progress | None = None, task: Callable[..., list[Any]] = run_ref) -> list[Any]:
    """Run every ref, in this process (``jobs == 1``) or in `jobs` worker processes;
    results in ref order."""
    done: list[list[Any] | None] = [None] * len(refs)
    if jobs <= 1 or len(refs) <= 1:
        for i, ref in enumerate(refs):
            done[i] = task(ref, device)
            if progress:
                progress(i + 1, len(refs), done[i])  # type: ignore[arg-type]
        return [r for results in done for r in results]  # type: ignore[union-attr]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    method = "fork" if sys.platform.startswith("linux") else "spawn"
    context = multiprocessing.get_context(method)
    pending = list(range(len(refs)))
    while pending:  # a crashed worker breaks the pool: run what is left in a new one
        with ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=context, initializer=single_threaded_torch) as pool:
            futures = {pool.submit(task, refs[i], device): i for i in pending}
            broken = []
            for future in as_completed(futures):
                i = futures[future]
                try:
                    done[i] = future.result()
                except BrokenProcessPool:
                    broken.append(i)
                    continue
                except Exception as exc:  # the task itself never raises; a pickling problem might
                    done[i] = [error_result(refs[i], f"worker failed: {type(exc).__name__}: {exc}")]
                if progress:
                    progress(sum(d is not None for d in done), len(refs), done[i])  # type: ignore[arg-type]
        if broken and len(broken) == len(pending):
            # nothing finished in this round: run the rest one at a time, so the case that kills
            # its worker is found and reported instead of taking the others down again
            for i in broken:
                done[i] = _isolated(refs[i], device, task, context)
                if progress:
                    progress(sum(d is not None for d in done), len(refs), done[i])  # type: ignore[arg-type]
            broken = []
        pending = broken
    return [r for results in done for r in results]  # type: ignore[union-attr]


def _isolated(ref: CaseRef, device: str, task: Callable[..., list[Any]], context: Any) -> list[Any]:
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=single_threaded_torch) as pool:
        try:
            return pool.submit(task, ref, device).result()
        except BrokenProcessPool:
            return [error_result(ref, "the worker process running this case died (crash, out of memory or killed)")]


def run_on_dask(refs: Sequence[CaseRef], address: str, *, device: str = "cpu", workers: int = 2, progress: Progress | None = None, task: Callable[..., list[Any]] = run_ref) -> list[Any]:
    """Shard the refs over a Dask cluster (``"local"``: a ``LocalCluster`` of `workers`
    single-threaded worker processes; else a scheduler address such as
    ``tcp://scheduler:8786``, whose workers must have derivcheck installed). Results stream
    back as they finish; a task whose worker is lost is retried on another; one that kills
    workers is reported as an ``error`` result."""
    try:
        import dask
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise DerivcheckError(DASK_HINT) from None

    done: list[list[Any] | None] = [None] * len(refs)
    with dask.config.set({"distributed.scheduler.allowed-failures": 2, "distributed.logging.distributed": "error"}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) if address == "local" else None
        try:
            with Client(cluster if cluster is not None else address) as client:
                if cluster is not None:
                    client.run(single_threaded_torch)
                futures = [client.submit(task, ref, device, key=f"derivcheck-case-{i}", pure=False, retries=1) for i, ref in enumerate(refs)]
                index = {future.key: i for i, future in enumerate(futures)}
                suspects = []
                for future in as_completed(futures):
                    i = index[future.key]
                    try:
                        done[i] = future.result()
                    except Exception:  # KilledWorker: this case, or one that shared its workers, kills them
                        suspects.append(i)
                        continue
                    if progress:
                        progress(sum(d is not None for d in done), len(refs), done[i])  # type: ignore[arg-type]
                # a case queued on a worker that another case killed is blamed too: run each
                # suspect alone, so only the case that really kills workers is an error
                for i in sorted(suspects):
                    try:
                        done[i] = client.submit(task, refs[i], device, key=f"derivcheck-case-{i}-alone", pure=False).result()
                    except Exception as exc:
                        done[i] = [error_result(refs[i], f"the case could not run on the cluster (its worker died each time): {type(exc).__name__}: {exc}")]
                    if progress:
                        progress(sum(d is not None for d in done), len(refs), done[i])  # type: ignore[arg-type]
        finally:
            if cluster is not None:
                cluster.close()
    return [r for results in done for r in results]  # type: ignore[union-attr]
