"""Command line: ``derivcheck run``, ``report``, ``list``, ``explain``, ``generate`` and ``cache``.

Exit codes follow pytest: 0 every case agrees (kinks allowed), 1 some disagreement or
non-finite value, 2 interrupted, 3 internal error (an engine crashed), 4 usage error or
invalid case file, 5 no case found.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from derivcheck.errors import DerivcheckError
from derivcheck.escaping import terminal as _terminal

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_CASES = 0, 1, 2, 3, 4, 5


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 4 (usage error) instead of 2."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    from derivcheck._version import __version__
    from derivcheck.engines import ENGINE_NAMES

    parser = _Parser(prog="derivcheck", description="Prove derivatives right: symbolic, finite-difference, numpy and torch engines compared.")
    parser.add_argument("--version", action="version", version=f"derivcheck {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run case files and compare the engines", description="Run case files (or folders of them) and compare every engine on every quantity.")
    run.add_argument("paths", nargs="+", help="case files or folders (searched recursively for *.toml)")
    run.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    run.add_argument("--junit", metavar="FILE", help="also write JUnit XML to FILE (verdict and max error as properties)")
    run.add_argument("--engines", metavar="LIST", help=f"comma-separated subset of {','.join(ENGINE_NAMES)} (at least two)")
    run.add_argument("--dtype", choices=("float64", "float32"), help="precision of the numpy and torch engines (overrides the case)")
    run.add_argument("--seed", type=int, help="seed for parameters and random inputs (overrides the case)")
    run.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of the torch engine (default cpu)")
    run.add_argument("-v", "--verbose", action="store_true", help="show every engine pair, also for agreeing quantities")
    _scale_options(run)
    _input_options(run)
    run.add_argument("-q", "--quiet", action="store_true", help="print only the final summary line")
    run.add_argument("--annotations", choices=("github",), help="print GitHub Actions ::error lines for failing cases (::warning for kinks)")

    rep = sub.add_parser("report", help="write Markdown, HTML and JSON reports with plots", description="Run case files and write report.md, index.html, report.json and plots/ (atomically).")
    rep.add_argument("paths", nargs="+", help="case files or folders")
    rep.add_argument("-o", "--output", default="reports", metavar="DIR", help="output folder (default: reports/)")
    rep.add_argument("--engines", metavar="LIST", help="comma-separated subset of engines (at least two)")
    rep.add_argument("--dtype", choices=("float64", "float32"), help="precision of the numpy and torch engines")
    rep.add_argument("--seed", type=int, help="seed for parameters and random inputs")
    rep.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of the torch engines")
    rep.add_argument("--no-plots", action="store_true", help="skip the plots (they need matplotlib)")
    _scale_options(rep)
    _input_options(rep)

    gen = sub.add_parser("generate", help="expand a suite file (a [grid] and a [template]) into case files", description="Write one case file per combination of a suite's grid.")
    gen.add_argument("suite", help="a suite file")
    gen.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the generated case files")
    gen.add_argument("--force", action="store_true", help="overwrite case files that already exist in the folder")
    _input_options(gen)

    cache = sub.add_parser("cache", help="show or clear the compile cache", description="The on-disk cache of SymPy derivations compiled with lambdify.")
    cache.add_argument("action", choices=("info", "clear"))
    cache.add_argument("--cache-dir", metavar="DIR", help="cache folder (default: $DERIVCHECK_CACHE_DIR or the platform's user cache folder)")

    exp = sub.add_parser(
        "explain",
        help="a step-by-step derivation of a small case, every step checked",
        description="Print the derivation of a case: forward pass, local derivatives, vector chain rule, total derivative (or, for PDE cases, the operators, the manufactured forcing and the autograd graph), each step checked numerically.",
    )
    exp.add_argument("path", help="one case file")
    exp.add_argument("--format", choices=("text", "markdown", "latex"), default="text", help="output format (default text)")
    _input_options(exp)

    lst = sub.add_parser("list", help="list cases with their quantities", description="List case files: name, description, network and quantities.")
    lst.add_argument("paths", nargs="+", help="case files or folders")
    lst.add_argument("--json", action="store_true", help="print the listing as JSON")
    _input_options(lst)
    return parser


def _input_options(command: argparse.ArgumentParser) -> None:
    """``--data-root`` and the ``--max-...`` limits of :mod:`derivcheck.budget`."""
    from derivcheck.budget import LIMITS

    command.add_argument("--data-root", action="append", metavar="DIR", help="a folder case files may read data from besides their own (repeatable)")
    group = command.add_argument_group("limits", "refuse a case (exit 4) whose estimated cost exceeds a limit; 0 switches a limit off; case files cannot raise them")
    for limit in LIMITS.values():
        group.add_argument(limit.option, type=_non_negative_int, metavar="N", dest=_limit_dest(limit.name), help=f"{limit.what} (default {limit.default:,})")


def _limit_dest(name: str) -> str:
    return "max_" + name.replace("-", "_")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _configure_inputs(args: argparse.Namespace) -> None:
    from derivcheck import budget, data_paths

    budget.configure({name: getattr(args, _limit_dest(name), None) for name in budget.LIMITS})
    data_paths.configure(getattr(args, "data_root", None))


def _scale_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("-j", "--jobs", default="1", metavar="N", help="run cases in N worker processes ('auto': one per CPU); output is the same for every N")
    command.add_argument("--dask", metavar="ADDRESS", help="shard cases over a Dask cluster: a scheduler address (tcp://host:8786) or 'local' for a LocalCluster (needs derivcheck[dask])")
    command.add_argument("--dask-workers", type=int, default=2, metavar="N", help="worker processes of --dask local (default 2)")
    command.add_argument("--cache-dir", metavar="DIR", help="compile cache folder (default: $DERIVCHECK_CACHE_DIR or the platform's user cache folder)")
    command.add_argument("--no-cache", action="store_true", help="derive everything afresh (do not read or write the compile cache)")


def _cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from derivcheck.loading import load_case_at
    from derivcheck.parallel import case_refs

    _configure_inputs(args)
    refs = case_refs(args.paths, {})  # a missing path is an error before anything else
    _require_case_count(len(refs))
    # one case at a time: a large suite is summarised without holding every case
    summaries = [load_case_at(ref.path, ref.index).summary() for ref in refs]
    if not summaries:
        print("no case files found", file=sys.stderr)
        return EXIT_NO_CASES
    if args.json:
        from derivcheck.escaping import json_safe

        print(json.dumps(json_safe(summaries), indent=2, allow_nan=False))
        return EXIT_OK
    for s in summaries:
        print(f"{s['name']}  ({s['file']})")
        if s["description"]:
            print(f"  {s['description']}")
        if s["kind"] == "pde":
            for equation, text in s["pde"].items():
                print(f"  pde:        {equation} = {text}")
            print(f"  fields:     {', '.join(s['fields'])}; {s['samples']} points, dtype {s['dtype']}, engines: {', '.join(s['engines'])}")
        else:
            print(f"  network:    {s['network']}" + (f"  loss: {s['loss']}" if s["loss"] else ""))
            print(f"  samples:    {s['samples']}, dtype {s['dtype']}, engines: {', '.join(s['engines'])}")
        print(f"  quantities: {', '.join(s['quantities'])}")
    print(tabulate([[s["name"], len(s["quantities"]), s["file"]] for s in summaries], headers=["case", "quantities", "file"]))
    return EXIT_OK


def _require_case_count(count: int) -> None:
    from derivcheck import budget

    budget.require("cases", count, file=None, detail="every file, and every combination of a suite's grid")


KEEP_BYTES = 512 * 1024 * 1024
"""...and while the arrays they hold (inputs, parameters, points) stay under 512 MiB."""


def _case_bytes(case: Any) -> int:
    """Bytes of the numpy arrays a loaded case holds (its inputs, targets, parameters and
    points), found by walking its problem(s) one level deep."""
    import numpy as np

    total = 0
    listed = getattr(case, "problems", None)  # PDE cases hold a list; score cases build theirs when run
    problems = (list(listed) if isinstance(listed, (list, tuple)) else []) + [getattr(case, "problem", None)]
    for problem in problems:
        for value in vars(problem).values() if problem is not None and hasattr(problem, "__dict__") else ():
            if isinstance(value, np.ndarray):
                total += value.nbytes
            elif isinstance(value, dict):
                total += sum(v.nbytes for v in value.values() if isinstance(v, np.ndarray))
    return total


KEEP_LOADED = 256
"""Up to this many cases stay in memory between validation and run; beyond it each is
validated, dropped, and loaded again when its turn comes (memory stays bounded)."""


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output path is checked before the run starts (not after an hour of it)."""
    from derivcheck.outputs import check_output_file, check_output_folder

    for option in ("json", "junit"):
        value = getattr(args, option, None)
        if isinstance(value, str):
            check_output_file(value, f"--{option}")
    if getattr(args, "command", None) == "report":
        check_output_folder(args.output, "-o/--output")


def _run_cases(args: argparse.Namespace) -> list[Any] | int:
    """Validate every case, then run them; an exit code instead when there is nothing to run."""
    from derivcheck.case_fields import validate_engine_names
    from derivcheck.runner import run_case

    overrides: dict[str, Any] = {"dtype": args.dtype, "seed": args.seed}
    if args.seed is not None and args.seed < 0:
        raise DerivcheckError("--seed must be a non-negative integer")
    if args.engines:
        names = [e.strip() for e in args.engines.split(",") if e.strip()]
        validate_engine_names(names, key="--engines")
        overrides["engines"] = names
    if args.device == "cuda":
        from derivcheck.engines import cuda_available

        if not cuda_available():
            print("derivcheck: error: --device cuda was requested but torch.cuda.is_available() is False on this machine (no GPU or a CPU-only torch build); use --device cpu", file=sys.stderr)
            return EXIT_USAGE
    _configure_inputs(args)
    _check_outputs(args)
    from derivcheck import compile_cache
    from derivcheck.loading import load_case_at
    from derivcheck.parallel import case_refs, heavy_first_order, inherited_cases, needs_derivation, parse_jobs, prepare_worker, run_on_dask, run_ref, run_refs

    counted = case_refs(args.paths, overrides)  # a missing path is an error before anything else
    _require_case_count(len(counted))
    # validate everything before running anything; keep the cases only while they are few
    keep = len(counted) <= KEEP_LOADED
    cases: list[Any] | None = [] if keep else None
    held = 0
    for ref in counted:
        case = load_case_at(ref.path, ref.index, overrides)
        if cases is not None:
            held += _case_bytes(case)
            cases.append(case)
            if held > KEEP_BYTES:  # too much to hold between validation and run
                cases = None
    if not counted:
        print("no case files found", file=sys.stderr)
        return EXIT_NO_CASES

    compile_cache.configure(args.cache_dir, enabled=False if args.no_cache else None)
    # worker processes (and Dask workers on this machine) read the settings from the environment
    if args.cache_dir:
        os.environ[compile_cache.ENV_DIR] = args.cache_dir
    if args.no_cache:
        os.environ[compile_cache.ENV_SWITCH] = "off"
    jobs = parse_jobs(args.jobs)
    refs = case_refs(args.paths, overrides)
    if len(refs) != len(counted):  # a file changed between the two reads
        raise DerivcheckError(f"the case files changed while derivcheck was reading them ({len(counted)} cases, then {len(refs)}); run again")
    quiet = getattr(args, "quiet", False)

    def progress(done: int, total: int, finished: list[Any]) -> None:
        if not quiet:
            for result in finished:
                print(f"[{done}/{total}] {result.name}: {result.verdict}", file=sys.stderr, flush=True)

    if args.dask:
        if args.dask_workers < 1:
            raise DerivcheckError("--dask-workers must be at least 1")
        order = heavy_first_order(cases) if cases is not None else None
        return run_on_dask(refs, args.dask, device=args.device, workers=args.dask_workers, progress=progress, order=order, alone=needs_derivation(cases) if cases is not None else set())
    if jobs == 1:
        prepare_worker()  # as in the workers: the same numbers whatever -j is
        if cases is not None:
            return [r for case in cases for r in run_case(case, device=args.device)]
        return [r for ref in refs for r in run_ref(ref, device=args.device)]
    with inherited_cases(refs, cases):
        return run_refs(refs, device=args.device, jobs=jobs, progress=progress, order=heavy_first_order(cases) if cases is not None else None)


def _exit_code(results: Sequence[Any]) -> int:
    if any(r.crashed for r in results):
        return EXIT_INTERNAL
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def _count_line(results: Sequence[Any]) -> str:
    """``"12 case(s): 11 agree, 1 skipped"``."""
    from derivcheck.runner import verdict_counts

    line = f"{len(results)} case(s): " + ", ".join(f"{n} {v}" for v, n in verdict_counts(results).items() if n)
    skipped = sum(1 for r in results for q in r.quantities if q.verdict == "skipped")
    if skipped:
        line += f" ({skipped} quantit{'y' if skipped == 1 else 'ies'} skipped: fewer than two of the chosen engines compute {'it' if skipped == 1 else 'them'}; -v says which)"
    return line


def _cmd_report(args: argparse.Namespace) -> int:
    from derivcheck.report.writer import write_report

    results = _run_cases(args)
    if isinstance(results, int):
        return results
    from derivcheck.outputs import writing

    with writing(f"the report to {args.output!r}"):
        written = write_report(results, args.output, with_plots=not args.no_plots)
    print(_count_line(results))
    print(
        f"wrote {len(written)} file(s) to {args.output.rstrip('/') or '/'}/: "
        + ", ".join(sorted(p.name for p in written if p.parent.name != "plots"))
        + f" and {sum(1 for p in written if p.parent.name == 'plots')} plot(s)"
    )
    return _exit_code(results)


def _cmd_generate(args: argparse.Namespace) -> int:
    from derivcheck.loading import read_table
    from derivcheck.suite import write_suite

    _configure_inputs(args)
    written = write_suite(read_table(args.suite), args.output, args.suite, force=args.force)
    print(f"wrote {len(written)} case file(s) to {args.output.rstrip('/') or '/'}/")
    return EXIT_OK


def _cmd_cache(args: argparse.Namespace) -> int:
    from derivcheck import compile_cache

    compile_cache.configure(args.cache_dir)
    if args.action == "clear":
        print(f"removed {compile_cache.clear()} entr(ies) from {compile_cache.cache_dir()}")
        return EXIT_OK
    info = compile_cache.info()
    print(f"directory: {info['directory']}")
    print(f"enabled:   {info['enabled']}")
    print(f"entries:   {info['entries']} ({info['bytes'] / 1e6:.2f} MB)")
    print("key:       " + ", ".join(f"{k} {v[:12]}" for k, v in info["versions"].items()))
    return EXIT_OK


def _cmd_explain(args: argparse.Namespace) -> int:
    from derivcheck.loading import load_case
    from derivcheck.explain_steps import explain

    _configure_inputs(args)
    result = explain(load_case(args.path))
    render = {"text": result.to_text, "markdown": result.to_markdown, "latex": result.to_latex}[args.format]
    sys.stdout.write(render())
    return EXIT_OK if result.ok else EXIT_FAILED


def _cmd_run(args: argparse.Namespace) -> int:
    from derivcheck.report.json_report import write_json
    from derivcheck.report.table import terminal_report

    results = _run_cases(args)
    if isinstance(results, int):
        return results
    if not args.quiet:
        print(terminal_report(results, verbose=args.verbose))
    from derivcheck.outputs import writing

    if args.json:
        with writing(f"--json {args.json!r}"):
            write_json(args.json, results)
    if args.junit:
        from derivcheck.report.junit import write_junit

        with writing(f"--junit {args.junit!r}"):
            write_junit(args.junit, results)
    from derivcheck.report.github import append_step_summary, workflow_annotations

    if args.annotations == "github":
        for line in workflow_annotations(results):
            print(line)
    with writing("the GitHub step summary ($GITHUB_STEP_SUMMARY)"):
        append_step_summary(results)
    print("\n" + _count_line(results))
    return _exit_code(results)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``derivcheck`` command; returns the exit code."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _EscapingStream(sys.stdout), _EscapingStream(sys.stderr)
    saved = _process_settings()
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = streams
        _restore_process_settings(saved)


def _process_settings() -> tuple[dict[str, str], dict[str, Any], dict[str, int]]:
    """What a command changes for itself and its workers (``DERIVCHECK_*`` variables, the
    cache and limit settings), so that :func:`main` called in-process (tests, notebooks)
    leaves the caller's process as it found it."""
    from derivcheck import budget, compile_cache

    return ({k: v for k, v in os.environ.items() if k.startswith("DERIVCHECK_")}, dict(compile_cache._settings), dict(budget._overrides))


def _restore_process_settings(saved: tuple[dict[str, str], dict[str, Any], dict[str, int]]) -> None:
    from derivcheck import budget, compile_cache

    environment, cache, limits = saved
    for key in [k for k in os.environ if k.startswith("DERIVCHECK_")]:
        if key not in environment:
            del os.environ[key]
    os.environ.update(environment)
    compile_cache._settings.clear()
    compile_cache._settings.update(cache)
    compile_cache._stuck.clear()
    budget._overrides.clear()
    budget._overrides.update(limits)


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    previous_term = _interrupt_on_sigterm()
    if getattr(args, "dask", None):
        from derivcheck.parallel import check_dask_address, start_fork_server, uses_fork_server

        try:
            check_dask_address(args.dask)
        except DerivcheckError as exc:
            print(f"derivcheck: error: {exc}", file=sys.stderr)
            return EXIT_USAGE

        if uses_fork_server(args.dask):
            # first of all: the fork server imports torch and derivcheck for the Dask workers
            # (~2 s, the longest step of a Dask run) while this process reads the cases
            start_fork_server()
    try:
        if args.command == "list":
            return _cmd_list(args)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "explain":
            return _cmd_explain(args)
        if args.command == "generate":
            return _cmd_generate(args)
        if args.command == "cache":
            return _cmd_cache(args)
        return _cmd_run(args)
    except KeyboardInterrupt:
        _remove_pending()
        print("\nderivcheck: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print("derivcheck: error: ran out of memory; the case is too large for this machine (lower its sizes, or the --max-values / --max-parameters limits)", file=sys.stderr)
        return EXIT_USAGE
    except RecursionError:
        print("derivcheck: error: input nested too deeply to process", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader went away (``derivcheck run | head``): stop quietly
        _silence_stdout()
        return EXIT_INTERRUPTED
    except DerivcheckError as exc:
        print(f"derivcheck: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # a bug of ours: say so, with the traceback
        import traceback

        traceback.print_exc()
        print(f"derivcheck: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        _restore_sigterm(previous_term)


def _interrupt_on_sigterm() -> Any:
    """SIGTERM (a CI job cancelled, ``timeout``) behaves like Ctrl-C: KeyboardInterrupt,
    so temporary files are removed and the exit code is 2. Only in the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        return None


def _restore_sigterm(previous: Any) -> None:
    import signal

    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except (ValueError, OSError):  # pragma: no cover
            pass


def _remove_pending() -> None:
    """Temporary files of an interrupted write (compile-cache entries being stored)."""
    from derivcheck import compile_cache

    compile_cache.remove_pending()


class _EscapingStream:
    """A text stream that shows control characters as escapes (newlines and tabs pass):
    nothing a case file holds can steer the terminal (set its title, erase a line)."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(_terminal(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def entry() -> None:
    """The ``derivcheck`` executable and ``python -m derivcheck``: :func:`main`, then exit.

    Before exiting, every object is moved out of the garbage collector's sight
    (``gc.freeze``): the interpreter's final collections would otherwise walk the whole
    torch/SymPy heap for nothing, ~0.4 s of every run. Exit handlers still run."""
    import gc

    single_threaded_blas()
    code = main()
    gc.freeze()
    sys.exit(code)


BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def single_threaded_blas() -> None:
    """One BLAS thread per process, as torch gets one
    (:func:`derivcheck.parallel.single_threaded_torch`), unless the user set the variable.

    numpy's OpenBLAS otherwise starts a thread per core and uses them on every matrix
    product. On a suite's small products that buys nothing (a 120-case MLP grid, ``-j 1``:
    14.5 s with one thread, 14.9 s with two, using twice the CPU), and under ``-j`` the
    workers' threads fight over the cores (``-j 2``: 13.4 s, 9.3 s with one thread each).
    The numbers are the same whatever ``-j`` is. It has to run before numpy is imported
    (OpenBLAS reads the variables once, when it loads); the worker processes inherit them."""
    for name in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture stdout)
        pass


if __name__ == "__main__":  # pragma: no cover
    entry()
