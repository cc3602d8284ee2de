"""Running many cases: in this process, in worker processes (``-j N``) or on Dask (``--dask``).

The unit of work is a :class:`CaseRef` -- a case file, the index of the case in it (suites
hold many) and the command line's overrides -- so that a worker loads and validates its
case itself and only results travel back. Results are always returned in the order of the
refs, whatever order they finish in, so the table, the JSON and the exit code do not depend
on the number of workers. A case whose run raises, or whose worker dies, becomes an
``error`` result naming the case; the rest of the suite completes.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
import traceback
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from derivcheck.errors import DerivcheckError

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
    from derivcheck.loading import case_count, discover

    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None))
    refs: list[CaseRef] = []
    for path in discover(paths):
        count = case_count(path)
        refs.extend(CaseRef(str(path), i, frozen, f"{path}#{i}" if count > 1 else str(path)) for i in range(count))
    return refs


_INHERITED: dict[CaseRef, Any] = {}
"""Cases the parent process loaded before forking its workers (see :func:`inherited_cases`):
a forked worker finds its case here instead of reading and validating the file again."""


@contextmanager
def inherited_cases(refs: Sequence[CaseRef], cases: Sequence[Any] | None) -> Iterator[None]:
    """Within the block, processes forked from this one (the ``-j`` pool's workers on
    Linux) run the already loaded `cases` (one per ref) and start with the engines imported,
    instead of importing torch and loading their cases again each. Workers started another
    way (spawn, Dask's fork server, a remote cluster) load their cases from the refs."""
    if cases is not None and len(cases) != len(refs):
        raise ValueError(f"{len(cases)} loaded cases for {len(refs)} refs")
    prefork_imports()
    _INHERITED.update(zip(refs, cases or ()))
    try:
        yield
    finally:
        _INHERITED.clear()


def prefork_imports() -> None:
    """Import what running a case needs (the runner, torch with one thread) once, in the
    process that is about to fork workers, and freeze the heap (:func:`prepare_worker`)."""
    from derivcheck import runner  # noqa: F401

    prepare_worker()


def run_ref(ref: CaseRef, device: str = "cpu") -> list[Any]:
    """Load and run one case; an exception becomes an ``error`` result (never raised)."""
    from derivcheck.loading import load_case_at
    from derivcheck.runner import run_case

    single_threaded_torch()
    try:
        case = _INHERITED.get(ref)
        if case is None:
            overrides = {k: (list(v) if isinstance(v, tuple) else v) for k, v in ref.overrides}
            case = load_case_at(ref.path, ref.index, overrides)
        return run_case(case, device=device)
    except Exception as exc:  # reported as this case's error, the suite goes on
        return [error_result(ref, "case failed: " + traceback.format_exception_only(type(exc), exc)[-1].strip())]


def error_result(ref: CaseRef, message: str) -> Any:
    from derivcheck.runner import CaseResult

    return CaseResult(name=ref.name, quantities=[], engines=[], file=ref.path, errors=[message])


def single_threaded_torch() -> None:
    """One torch thread per process: workers do not oversubscribe the machine, and torch's
    reductions sum in the same order whatever ``-j`` is (bitwise-identical reports)."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def prepare_worker() -> None:
    """Set up a process that is about to run cases: one torch thread, and everything
    allocated so far (torch, Dask, derivcheck's modules) moved out of the garbage
    collector's sight -- its full collections then walk only what the cases allocate
    (~5% of a SymPy derivation; forked workers also share those pages instead of copying
    them as the collector touches them)."""
    import gc

    single_threaded_torch()
    gc.freeze()


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


def spread_order(indices: Sequence[int], ways: int) -> list[int]:
    """`indices` cut into `ways` contiguous blocks and dealt block by block (``0, n/2, 1,
    n/2+1, ...`` for two): workers that start cases at the same moment get cases far apart
    in the suite, which rarely need the same derivation (neighbours in a grid share layers:
    on a cold cache one would wait for the other's build), while each worker's run of cases
    stays within a block (its loaded derivations are reused)."""
    ways = max(1, min(ways, len(indices)))
    size = -(-len(indices) // ways) if indices else 0
    blocks = [list(indices[k * size : (k + 1) * size]) for k in range(ways)]
    return [block[i] for i in range(size) for block in blocks if i < len(block)]


def heavy_first_order(cases: Sequence[Any]) -> list[int]:
    """An order to start `cases` in on a cold cache: cases are grouped by their most
    expensive derivation (the network layer with the most parameters, the part SymPy spends
    longest on) and dealt one group at a time, the most expensive groups first. Workers
    that start together then derive different heavy layers instead of one waiting for the
    other's build, and the longest derivations start early. Cases without a network (PDE,
    score, GAN) form one group, dealt last in each round."""
    groups: dict[Any, list[int]] = {}
    costs: dict[Any, int] = {}
    for i, case in enumerate(cases):
        key, cost = _dominant_layer(case)
        groups.setdefault(key, []).append(i)
        costs[key] = cost
    ranked = sorted(groups, key=lambda k: -costs[k])  # stable: equal costs keep suite order
    longest = max((len(g) for g in groups.values()), default=0)
    return [groups[k][r] for r in range(longest) for k in ranked if r < len(groups[k])]


def needs_derivation(cases: Sequence[Any]) -> set[int]:
    """Indices of the `cases` whose symbolic engine would derive a whole layer that the
    compile cache (this process's folder) does not hold yet."""
    from derivcheck.engines.symbolic.layers import needs_derivation as network_needs

    cold = set()
    for i, case in enumerate(cases):
        network = getattr(getattr(case, "problem", None), "network", None)
        if network is not None and "symbolic" in getattr(case, "engines", ()) and network_needs(network):
            cold.add(i)
    return cold


def _dominant_layer(case: Any) -> tuple[Any, int]:
    network = getattr(getattr(case, "problem", None), "network", None)
    if network is None:
        return None, -1
    best, size = None, 0
    for layer in network.layers:
        count = sum(int(math.prod(shape)) for shape in layer.param_shapes().values())
        if count > size:
            best, size = (type(layer).__name__, repr(sorted(layer.options.items())), tuple(layer.in_shape or ())), count
    return best, size


def run_refs(
    refs: Sequence[CaseRef], *, device: str = "cpu", jobs: int = 1, progress: Progress | None = None, task: Callable[..., list[Any]] = run_ref, order: Sequence[int] | None = None
) -> list[Any]:
    """Run every ref, in this process (``jobs == 1``) or in `jobs` worker processes (started
    in `order`, by default :func:`spread_order`); results in ref order."""
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
            waiting = set(pending)
            todo = [i for i in order if i in waiting] if order is not None else spread_order(pending, jobs * BATCHES_PER_WORKER)
            futures = {pool.submit(task, refs[i], device): i for i in todo}
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


BATCHES_PER_WORKER = 12
"""Cases travel to Dask workers in this many batches per worker: one task per case costs
the scheduler and the workers a few milliseconds each (~1 s on a 120-case suite, 2
workers); a dozen interleaved batches per worker keep the load even (with 4, the last
batch left one worker idle: 1.31x the -j 2 time on benchmarks/suite-mlp-grid.toml, 1.2x
with 12) and the progress lively."""


def interleaved_batches(count: int, batches: int) -> list[list[int]]:
    """Indices ``0..count-1`` dealt round-robin into at most `batches` non-empty batches
    (neighbouring cases of a grid differ little in cost, so batches cost about the same)."""
    batches = min(max(1, batches), count)
    return [list(range(k, count, batches)) for k in range(batches)]


def task_batches(count: int, batches: int, order: Sequence[int] | None = None, alone: Collection[int] = ()) -> list[list[int]]:
    """The Dask tasks for cases ``0..count-1``, in submission order: each case of `alone`
    on its own (in `order`), then the others in at most `batches` batches, dealt round-robin
    in `order` (:func:`interleaved_batches`): batch ``k`` starts with the ``k``-th of them."""
    sequence = list(range(count)) if order is None else list(order)
    if sorted(sequence) != list(range(count)):
        raise ValueError(f"order must be a permutation of 0..{count - 1}")
    rest = [i for i in sequence if i not in alone]
    return [[i] for i in sequence if i in alone] + [[rest[j] for j in batch] for batch in interleaved_batches(len(rest), batches)]


def run_batch(refs: Sequence[CaseRef], device: str, task: Callable[..., list[Any]] = run_ref, cache: tuple[str, bool] | None = None) -> list[list[Any]]:
    """``task(ref, device)`` for each ref (one Dask task), with the compile cache folder and
    switch `cache` (the client's, for workers on its machine) or the worker's own."""
    if cache is not None:
        from derivcheck import compile_cache

        compile_cache.configure(cache[0], enabled=cache[1])
    return [task(ref, device) for ref in refs]


def cluster_size(client: Any, known: int) -> int:
    """The number of workers: `known` for a cluster we started, else what the scheduler
    reports now (at least 1; workers that join later only steal batches)."""
    if known:
        return known
    try:
        return max(1, len(client.scheduler_info()["workers"]))
    except Exception:  # an old or unusual scheduler: fall back to one batch per case
        return 1 << 20


_DASK_ADDRESS = re.compile(r"(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})")
DASK_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")
DASK_CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a scheduler to answer (``$DERIVCHECK_DASK_TIMEOUT``)."""


def check_dask_address(address: str) -> None:
    """Refuse a ``--dask`` value that is neither ``local`` nor a scheduler address
    ``[scheme://]host:port`` (a usage error, before anything runs)."""
    if address == "local":
        return
    match = _DASK_ADDRESS.fullmatch(address)
    allowed = f"'local', or a scheduler address [scheme://]host:port with scheme {', '.join(DASK_SCHEMES)} (e.g. tcp://scheduler:8786)"
    if match is None or (match["scheme"] and match["scheme"] not in DASK_SCHEMES) or not 1 <= int(match["port"]) <= 65535:
        raise DerivcheckError(f"--dask {address!r} is not a Dask address; allowed: {allowed}")


def _connect_timeout() -> float:
    raw = os.environ.get("DERIVCHECK_DASK_TIMEOUT", "")
    try:
        return float(raw) if raw and float(raw) > 0 else DASK_CONNECT_TIMEOUT
    except ValueError:
        return DASK_CONNECT_TIMEOUT


def connect(address: str) -> Any:
    """A Dask ``Client`` of the scheduler at `address`, or a :class:`DerivcheckError`
    (exit 4, one line) when none answers within :data:`DASK_CONNECT_TIMEOUT` seconds."""
    from distributed import Client

    timeout = _connect_timeout()
    try:
        return Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DerivcheckError(
            f"--dask {address!r}: no Dask scheduler answered within {timeout:g} s ({reason}); start one with `dask scheduler` and workers with `dask worker {address}`, or use --dask local"
        ) from None


def uses_fork_server(address: str | None) -> bool:
    """Whether ``--dask ADDRESS`` starts its workers from a fork server (a local cluster,
    on Linux, with Dask installed)."""
    return address == "local" and sys.platform.startswith("linux") and importlib.util.find_spec("distributed") is not None


def start_fork_server() -> None:
    """Start multiprocessing's fork server now, importing torch and derivcheck's runner
    (it does so while this process goes on importing Dask and starting the cluster);
    Dask's workers are then forked from it ready to run cases."""
    import importlib.util
    import multiprocessing
    from multiprocessing import forkserver

    modules = ["numpy", "derivcheck.parallel", "derivcheck.runner"]
    if importlib.util.find_spec("torch") is not None:
        modules.insert(1, "torch")
    if importlib.util.find_spec("distributed") is not None:
        modules.insert(0, "distributed")
    multiprocessing.get_context("forkserver").set_forkserver_preload(modules)
    forkserver.ensure_running()


def run_on_dask(
    refs: Sequence[CaseRef],
    address: str,
    *,
    device: str = "cpu",
    workers: int = 2,
    progress: Progress | None = None,
    task: Callable[..., list[Any]] = run_ref,
    order: Sequence[int] | None = None,
    alone: Collection[int] = (),
) -> list[Any]:
    """Shard the refs over a Dask cluster (``"local"``: a ``LocalCluster`` of `workers`
    single-threaded worker processes; else a scheduler address such as
    ``tcp://scheduler:8786``, whose workers must have derivcheck installed). Results stream
    back as they finish; a task whose worker is lost is retried on another; one that kills
    workers is reported as an ``error`` result.

    Cases travel in batches, dealt round-robin (:func:`interleaved_batches`) in `order` (a
    permutation of the refs' indices such as :func:`heavy_first_order`; default: suite
    order), except the cases in `alone` (those that still need a derivation, see
    :func:`needs_derivation`): they go first, one per task, so that workers take them one at
    a time as a ``-j`` pool does and build different layers side by side. (In batches,
    workers kept starting cases that needed the same layer, one waiting for the other's
    build: 37 s on the cold benchmark grid where ``-j 2`` takes 20 s.)"""
    local_fork_server = uses_fork_server(address)
    if local_fork_server:
        start_fork_server()  # if the caller has not already
    try:
        import dask
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise DerivcheckError(DASK_HINT) from None
    from derivcheck import compile_cache

    done: list[list[Any] | None] = [None] * len(refs)
    settings: dict[str, Any] = {"distributed.scheduler.allowed-failures": 2, "distributed.logging.distributed": "error"}
    if address == "local":
        # the workers' statistical profiler samples every 10 ms: ~5-10% of a 2-core run
        settings["distributed.worker.profile.enabled"] = False
        # and their event loops wake every 20 ms (tick), 100 ms (memory) and 500 ms (system
        # monitor), taking the GIL from the case being computed: ~7% of the evaluation-heavy
        # benchmark suite; once a second still pauses a worker running out of memory in time
        settings.update({"distributed.admin.tick.interval": "1s", "distributed.admin.system-monitor.interval": "1s", "distributed.worker.memory.monitor-interval": "1s"})
        if local_fork_server:
            # workers forked from a fork server that imported torch and derivcheck once start
            # in ~0.1 s, where spawned ones each import everything again (~2 s). Not plain
            # fork: this process runs Dask's event loop in a thread by then, and forking a
            # threaded process can deadlock the child.
            settings["distributed.worker.multiprocessing-method"] = "forkserver"
    with dask.config.set(settings):
        # the fork server was started with this process's environment of that moment: the
        # workers get the derivcheck settings of now
        env = {k: v for k, v in os.environ.items() if k.startswith("DERIVCHECK_")}
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, env=env) if address == "local" else None
        try:
            with Client(cluster) if cluster is not None else connect(address) as client:
                if cluster is not None:
                    client.run(prepare_worker)
                size = cluster_size(client, workers if cluster is not None else 0)
                batches = task_batches(len(refs), size * BATCHES_PER_WORKER, order, alone)
                cache = (str(compile_cache.cache_dir()), compile_cache.enabled()) if cluster is not None else None
                futures = [client.submit(run_batch, [refs[i] for i in batch], device, task, cache, key=f"derivcheck-cases-{batch[0]}-of-{len(refs)}", pure=False, retries=1) for batch in batches]
                members = {future.key: batch for future, batch in zip(futures, batches)}
                suspects = []
                for future in as_completed(futures):
                    batch = members[future.key]
                    try:
                        results = future.result()
                    except Exception:  # KilledWorker: a case of this batch, or one that shared its workers, kills them
                        suspects.extend(batch)
                        continue
                    for i, result in zip(batch, results):
                        done[i] = result
                        if progress:
                            progress(sum(d is not None for d in done), len(refs), result)
                # a case queued on a worker that another case killed is blamed too: run each
                # suspect alone, so only the case that really kills workers is an error
                for i in sorted(suspects):
                    try:
                        (done[i],) = client.submit(run_batch, [refs[i]], device, task, cache, key=f"derivcheck-case-{i}-alone", pure=False).result()
                    except Exception as exc:
                        done[i] = [error_result(refs[i], f"the case could not run on the cluster (its worker died each time): {type(exc).__name__}: {exc}")]
                    if progress:
                        progress(sum(d is not None for d in done), len(refs), done[i])  # type: ignore[arg-type]
        finally:
            if cluster is not None:
                cluster.close()
    return [r for results in done for r in results]  # type: ignore[union-attr]
