"""Hostile and odd input: every run bounded, every refusal clear, nothing leaked, nothing
silently wrong.

Each class of attack has a test: paths, budgets, valid-but-odd input (solutions linear in
a variable), tracebacks, silently wrong values, injection at each output, the cache, the
API and signals. Command-line runs go through a subprocess with a timeout and a memory
limit where a hang or an allocation is what could go wrong; the rest call ``cli.main``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from helpers import CASES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from derivcheck import cli
from derivcheck.kinds.network.case import case_from_dict
from derivcheck.errors import CaseError, DerivcheckError, ExpressionError

SECRET = "hunter2-do-not-leak"
MEMORY_LIMIT = 6 * 1024**3

TINY = """
name = "tiny"
network = [{ layer = "linear", in = 2, out = 3 }, { layer = "tanh" }, { layer = "linear", in = 3, out = 1 }]
loss = "mse"
inputs = { batch = 3 }
engines = ["symbolic", "numpy", "torch"]
"""

PDE = """
name = "pde"
variables = ["x", "y"]
constants = { k = 1 }
solution = "{solution}"
pde = "laplacian(u) + k**2 * u - f"
domain = { x = [-1, 1], y = [-1, 1] }
points = { count = 6 }
network = { widths = [2, 4, 1], activation = "tanh" }
pinn = { boundary = 6, lambda = 1.0 }
quantities = ["u_xx", "u_yy", "laplacian(u)", "forcing", "residual", "hessian(u)", "pinn"]
"""


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def cli_run(*args: str, cwd: Path | None = None, timeout: float = 120, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """``python -m derivcheck ARGS`` in a subprocess with a timeout and a memory limit:
    (exit code, stdout + stderr, seconds)."""
    start = time.monotonic()
    full_env = {**os.environ, "SECRET_MARKER": SECRET, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "derivcheck", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, preexec_fn=_limit_memory, env=full_env)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_clean(output: str) -> None:
    assert "Traceback" not in output and "internal error" not in output, output[-2000:]
    assert SECRET not in output and "root:" not in output, "file contents leaked"
    assert "\x1b" not in output and "\x07" not in output and "\r" not in output, "raw control characters reached the terminal"


# -- paths ---------------------------------------------------------------------------------


def _data_case(folder: Path, csv: str) -> Path:
    return write(folder, "case.toml", f'network = [{{ layer = "linear", in = 2, out = 1 }}]\nloss = "mse"\ndata = {{ csv = "{csv}", target = "y" }}\n')


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    outside = tmp_path / "outside" / "secret.csv"
    outside.parent.mkdir()
    outside.write_text(f"{SECRET},b,y\n1,2,3\n")
    return outside


@pytest.mark.parametrize("how", ["absolute", "dotdot", "link", "etc-passwd", "proc-environ", "dev-zero"])
def test_data_outside_the_case_folder_is_refused_and_never_quoted(capsys, tmp_path, secret_file, how):
    folder = tmp_path / "cases"
    folder.mkdir()
    target = {"absolute": str(secret_file), "dotdot": "../outside/secret.csv", "link": "linked.csv", "etc-passwd": "/etc/passwd", "proc-environ": "/proc/self/environ", "dev-zero": "/dev/zero"}[how]
    if how == "link":
        (folder / "linked.csv").symlink_to(secret_file)
    case = _data_case(folder, target)
    os.environ["SECRET_MARKER"] = SECRET
    code, out = run_main(capsys, "run", str(case))
    assert code == 4
    assert "case file's folder" in out and "key 'data.csv'" in out
    assert_clean(out)


def test_a_data_root_allows_a_folder_outside(capsys, tmp_path, secret_file):
    folder = tmp_path / "cases"
    folder.mkdir()
    case = _data_case(folder, str(secret_file))
    code, out = run_main(capsys, "run", str(case), "--no-cache", "-q")
    assert code == 4 and "case file's folder" in out
    code, out = run_main(capsys, "run", str(case), "--data-root", str(secret_file.parent), "--no-cache", "-q")
    assert code == 0, out  # inside an allowed folder the file is read
    code, out = run_main(capsys, "run", str(case), "--data-root", str(tmp_path / "missing"))
    assert code == 4 and "--data-root must name an existing folder" in out


def test_special_and_oversized_data_files_are_refused(capsys, tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    os.mkfifo(folder / "fifo.csv")
    case = _data_case(folder, "fifo.csv")
    code, out = run_main(capsys, "run", str(case))
    assert code == 4 and "a FIFO" in out
    big = folder / "big.csv"
    with big.open("wb") as handle:
        handle.truncate(65 * 1024 * 1024)
    case = _data_case(folder, "big.csv")
    code, out = run_main(capsys, "run", str(case))
    assert code == 4 and "larger than 64 MiB" in out
    (folder / "dir.csv").mkdir()
    code, out = run_main(capsys, "run", str(_data_case(folder, "dir.csv")))
    assert code == 4 and "a folder" in out


def test_a_case_file_that_is_a_fifo_is_refused(capsys, tmp_path):
    os.mkfifo(tmp_path / "case.toml")
    code, out = run_main(capsys, "run", str(tmp_path / "case.toml"))
    assert code == 4 and "not a regular file" in out


# -- budgets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "network, limit",
    [
        ('[{ layer = "linear", in = 100000, out = 1 }]', "--max-fd-evaluations"),
        ('[{ layer = "linear", in = 100000, out = 100000 }]', "--max-parameters"),
        ("[" + ", ".join(['{ layer = "tanh" }'] * 2500) + ', { layer = "linear", in = 4, out = 1 }]', "--max-layers"),
    ],
    ids=["wide-input", "huge-layer", "2500-layers"],
)
def test_sizes_beyond_the_budget_are_refused_before_allocating(tmp_path, network, limit):
    case = write(tmp_path, "big.toml", f'network = {network}\nloss = "mse"\ninputs = {{ batch = 8 }}\ninput_shape = [{100000 if "100000" in network else 4}]\n')
    code, out, seconds = cli_run("run", str(case), "--no-cache")
    assert code == 4 and limit in out and "too large to run" in out, out[-2000:]
    assert seconds < 60
    assert_clean(out)


def test_a_long_recurrence_is_refused(capsys, tmp_path):
    case = write(
        tmp_path,
        "lstm.toml",
        """
        network = [{ layer = "lstm", input_size = 4, hidden_size = 8 }, { layer = "linear", in = 8, out = 2 }]
        input_shape = [100000, 4]
        loss = "cross_entropy"
        inputs = { batch = 4 }
    """,
    )
    code, out = run_main(capsys, "run", str(case))
    assert code == 4 and "too large to run" in out and "--max-" in out


def test_a_limit_is_raised_from_the_command_line_never_from_the_case(capsys, tmp_path):
    case = write(tmp_path, "case.toml", TINY)
    code, out = run_main(capsys, "run", str(case), "--max-layers", "2")
    assert code == 4 and "layers in one network would be 3" in out and "--max-layers N" in out and "DERIVCHECK_MAX_LAYERS" in out
    code, out = run_main(capsys, "run", str(case), "--max-layers", "3", "-q", "--no-cache")
    assert code == 0
    write(tmp_path, "case.toml", TINY + "limits = { layers = 100 }\n")
    code, out = run_main(capsys, "run", str(case))
    assert code == 4 and "unknown key" in out


def test_a_suite_of_ten_thousand_cases_is_refused_quickly_and_in_little_memory(tmp_path):
    suite = write(
        tmp_path,
        "suite.toml",
        """
        [grid]
        a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        b = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        c = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        d = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        [template]
        name = "c-{a}-{b}-{c}-{d}"
        network = [{ layer = "linear", in = 2, out = 1 }]
        loss = "mse"
        inputs = { batch = 2 }
    """,
    )
    code, out, seconds = cli_run("run", str(suite))
    assert code == 4 and "would be 10,000" in out and "--max-cases" in out
    assert seconds < 60


def test_pde_sizes_are_bounded(capsys, tmp_path):
    names = [f"v{i}" for i in range(30)]
    case = write(
        tmp_path,
        "many.toml",
        f"""
        variables = {json.dumps(names)}
        solution = "{" + ".join(f"sin({n})" for n in names)}"
        pde = "laplacian(u) - f"
        domain = {{ {", ".join(f"{n} = [0, 1]" for n in names)} }}
        quantities = ["hessian(u)"]
    """,
    )
    code, out = run_main(capsys, "run", str(case))
    assert code == 4 and "--max-variables" in out
    nested = write(
        tmp_path,
        "nested.toml",
        PDE.replace('solution = "{solution}"', 'solution = "sin(x)*sin(y)"').replace('"laplacian(u) + k**2 * u - f"', '"d(d(d(d(u, x, 4), x, 4), x, 4), x, 4) - f"').replace("quantities = [", "# ["),
    )
    code, out = run_main(capsys, "run", str(nested))
    assert code == 4 and "total order 16" in out and "key 'pde'" in out


def test_a_solution_simplify_would_hang_on_runs_in_bounded_time(tmp_path):
    case = write(tmp_path, "slow.toml", PDE.replace("{solution}", "((x**100)**100) + sin(x)*sin(y)"))
    code, out, seconds = cli_run("run", str(case), "--no-cache", "-q", timeout=240)
    assert code in (0, 1) and seconds < 200, out[-2000:]
    assert_clean(out)
    code, out, seconds = cli_run("explain", str(case), timeout=120)
    assert code in (0, 1) and seconds < 100
    assert_clean(out)


# -- valid input that used to crash ---------------------------------------------------------


@pytest.mark.parametrize("solution", ["x**2", "sin(x)", "1", "x + y"])
def test_solutions_linear_in_a_variable_work_in_every_engine_and_explain(capsys, tmp_path, solution):
    case = write(tmp_path, "linear.toml", PDE.replace("{solution}", solution))
    code, out = run_main(capsys, "run", str(case), "-q", "--no-cache")
    assert code == 0, out
    code, out = run_main(capsys, "explain", str(case))
    assert code == 0 and "all steps check out" in out, out


# -- bad input: exit 4, never a traceback ---------------------------------------------------


@pytest.mark.parametrize("formula", ["log(0)*x0", "tan(pi/2) + x0", "*".join(["9" * 299] * 6) + "*x0", "1e300*1e300*x0"])
def test_infinite_or_huge_values_in_formulas_are_refused(capsys, tmp_path, formula):
    case = write(tmp_path, "case.toml", TINY.replace("inputs = { batch = 3 }", f'inputs = {{ batch = 3, targets = ["{formula}"] }}'))
    code, out = run_main(capsys, "run", str(case))
    assert code == 4 and "inputs.targets[0]" in out
    assert_clean(out)


@pytest.mark.parametrize("formula", ["log(0) + x", "tan(pi/2)*x"])
def test_infinite_values_in_pde_formulas_are_refused(capsys, tmp_path, formula):
    code, out = run_main(capsys, "run", str(write(tmp_path, "case.toml", PDE.replace("{solution}", formula))))
    assert code == 4 and "infinite or undefined" in out


def test_toml_nested_without_end_is_an_invalid_case(capsys, tmp_path):
    case = tmp_path / "deep.toml"
    case.write_text("a = " + "[" * 50_000 + "]" * 50_000 + "\n")
    for command in ("run", "list", "explain"):
        code, out = run_main(capsys, command, str(case))
        assert code == 4 and "nested too deeply" in out, (command, out)
    from derivcheck.kinds.network.case import read_table

    with pytest.raises(CaseError):  # what the pytest plugin's collection calls
        read_table(case)


@pytest.mark.parametrize("option", ["--json", "--junit"])
def test_outputs_are_checked_before_the_run(capsys, tmp_path, option):
    case = write(tmp_path, "case.toml", TINY)
    (tmp_path / "afile").write_text("x")
    for target, message in ((tmp_path, "is a folder"), (tmp_path / "afile" / "out.json", "is not a folder"), (Path("/proc/derivcheck-out.json"), "cannot write")):
        start = time.monotonic()
        code, out = run_main(capsys, "run", str(case), option, str(target))
        assert code == 4 and message in out, out
        assert "case(s)" not in out  # refused before running anything
        assert time.monotonic() - start < 10


def test_report_output_is_checked_before_the_run(capsys, tmp_path):
    case = write(tmp_path, "case.toml", TINY)
    (tmp_path / "afile").write_text("x")
    code, out = run_main(capsys, "report", str(case), "-o", str(tmp_path / "afile"))
    assert code == 4 and "not a folder" in out


def test_generate_handles_dates_and_refuses_a_file_as_output(capsys, tmp_path):
    suite = write(
        tmp_path,
        "suite.toml",
        """
        description = "made on"
        [grid]
        width = [2, 3]
        [template]
        name = "w{width}"
        network = [{ layer = "linear", in = 2, out = "{width}" }]
        inputs = { batch = 2 }
        quantities = ["dy/dx"]
    """,
    )
    suite.write_text(suite.read_text().replace('quantities = ["dy/dx"]', 'quantities = ["dy/dx"]\nengines = ["symbolic", "numpy"]\n'))
    code, out = run_main(capsys, "generate", str(suite), "-o", str(tmp_path / "out"))
    assert code == 0 and "wrote 2 case file(s)" in out
    (tmp_path / "afile").write_text("x")
    code, out = run_main(capsys, "generate", str(suite), "-o", str(tmp_path / "afile"))
    assert code == 4 and "is a file" in out
    dated = write(tmp_path, "dated.toml", suite.read_text().replace("[grid]", "[grid]\nwhen = [2026-12-02]"))
    dated.write_text(dated.read_text().replace('name = "w{width}"', 'name = "w{width}-{when}"'))
    code, out = run_main(capsys, "generate", str(dated), "-o", str(tmp_path / "dated"))
    assert code == 0, out


# -- the compile cache -----------------------------------------------------------------------


def _damage(entry: Path, how: str) -> None:
    if entry.is_dir() and not entry.is_symlink():
        entry.rmdir()
    else:
        entry.unlink()
    if how == "truncate":
        entry.write_text('{"payload": "{')
    elif how == "not-utf8":
        entry.write_bytes(b"\xff\xfe\x00garbage")
    elif how == "folder":
        entry.mkdir()
    elif how == "fifo":
        os.mkfifo(entry)
    elif how == "dev-zero-link":
        entry.symlink_to("/dev/zero")
    elif how == "nested":
        entry.write_text("[" * 100_000 + "]" * 100_000)
    elif how == "list":
        entry.write_text('["payload", "mac"]')
    elif how == "wrong-record":
        entry.write_text('{"payload": "[1, 2]", "mac": "00"}')


def test_corrupt_cache_entries_of_any_shape_are_rebuilt(tmp_path):
    """Each damaged entry is deleted and rebuilt by the next run (in a fresh process: the
    engines keep what they derived in memory)."""
    case = write(tmp_path, "case.toml", TINY)
    cache = tmp_path / "cache"
    code, out, _ = cli_run("run", str(case), "--cache-dir", str(cache), "-q")
    assert code == 0, out
    entries = sorted(cache.glob("*.json"))
    assert len(entries) >= 3
    damages = ["truncate", "not-utf8", "folder", "fifo", "dev-zero-link", "nested", "list", "wrong-record"]
    for start in range(0, len(damages), len(entries)):
        for entry, how in zip(entries, damages[start : start + len(entries)]):
            _damage(entry, how)
        code, out, seconds = cli_run("run", str(case), "--cache-dir", str(cache), "-q", timeout=60)
        assert code == 0, out
        assert_clean(out)
        for entry in entries:
            assert entry.is_file() and not entry.is_symlink(), entry
            json.loads(entry.read_text())
    for how in ("not-hex", "folder", "dev-zero-link"):  # the folder's MAC key itself
        key = cache / "key"
        _damage(key, {"not-hex": "truncate"}.get(how, how))
        code, out, _ = cli_run("run", str(case), "--cache-dir", str(cache), "-q", timeout=60)
        assert code == 0, out
        assert_clean(out)
        assert key.is_file() and not key.is_symlink()


def test_a_lock_held_by_a_stopped_process_is_waited_on_with_a_bound(tmp_path, capsys, monkeypatch):
    from derivcheck import compile_cache

    key = "cd" * 32
    lock = tmp_path / f".{key}.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import fcntl, os, signal, socket
        fd = os.open({str(lock)!r}, os.O_CREAT | os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, f"{{os.getpid()}} {{socket.gethostname()}}\\n".encode(), 0)
        print("held", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)  # stopped while holding the lock
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("DERIVCHECK_LOCK_TIMEOUT", "1")
        compile_cache.configure(tmp_path)
        start = time.monotonic()
        with compile_cache._building(key):
            pass
        assert time.monotonic() - start < 10
        err = capsys.readouterr().err
        assert "gave up waiting" in err and f"process {holder.pid} on " in err
    finally:
        compile_cache._settings["directory"] = None
        holder.kill()
        holder.wait()


def test_the_lock_wait_names_the_holder(tmp_path, capsys, monkeypatch):
    import fcntl

    from derivcheck import compile_cache

    monkeypatch.setenv("DERIVCHECK_LOCK_TIMEOUT", "0.3")
    compile_cache.configure(tmp_path)
    try:
        key = "ab" * 32
        lock = tmp_path / f".{key}.lock"
        lock.write_text("4242 somehost\n")
        holder = os.open(lock, os.O_RDWR)
        fcntl.flock(holder, fcntl.LOCK_EX)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # any process id; the lock says who
        try:
            start = time.monotonic()
            with compile_cache._building(key):
                pass
            assert time.monotonic() - start < 5
        finally:
            child.kill()
            os.close(holder)
        err = capsys.readouterr().err
        assert "gave up waiting" in err and "process 4242 on somehost" in err and str(lock) in err
    finally:
        compile_cache._settings["directory"] = None


# -- never silently wrong ------------------------------------------------------------------------


@pytest.mark.parametrize("formula", ["sqrt(-1)*x0", "x0**sqrt(-1)", "(-8)**(1/3)*x0", "log(-1)*x0", "acos(2)*x0"])
def test_complex_values_in_targets_are_refused(capsys, tmp_path, formula):
    case = write(tmp_path, "case.toml", TINY.replace("inputs = { batch = 3 }", f'inputs = {{ batch = 3, targets = ["{formula}"] }}'))
    code, out = run_main(capsys, "run", str(case))
    assert code == 4 and "complex value" in out


@pytest.mark.parametrize("formula", ["sqrt(-1)*x", "x**sqrt(-1)", "(-8)**(1/3)*sin(x)"])
def test_complex_values_in_solutions_are_refused(capsys, tmp_path, formula):
    code, out = run_main(capsys, "run", str(write(tmp_path, "case.toml", PDE.replace("{solution}", formula))))
    assert code == 4 and "complex value" in out and "key 'solution'" in out


@pytest.mark.parametrize("name", ["pi", "e", "sin", "d", "laplacian", "lambda"])
def test_reserved_names_cannot_be_redefined(capsys, tmp_path, name):
    case = write(tmp_path, "case.toml", PDE.replace("{solution}", "sin(x)*sin(y)").replace("constants = { k = 1 }", f"constants = {{ k = 1, {name} = 3 }}"))
    code, out = run_main(capsys, "run", str(case))
    assert code == 4 and (f"name {name!r} is reserved" in out or "not a valid name" in out), out


@pytest.mark.parametrize(
    "change, key",
    [
        (("points = { count = 6 }", "points = { values = [[0.1, nan], [0.2, 0.3]] }"), "points.values[0]"),
        (("points = { count = 6 }", "points = { values = [[0.1, inf], [0.2, 0.3]] }"), "points.values[0]"),
        (("constants = { k = 1 }", "constants = { k = 1e308 }"), "constants.k"),
        (("x = [-1, 1]", "x = [-1e308, 1e308]"), "domain.x"),
        (("x = [-1, 1]", "x = [0, nan]"), "domain.x"),
        (("network = {", "finite_diff = { step = 1e-300 }\nnetwork = {"), "finite_diff.step"),
        (("network = {", "finite_diff = { step = 0.9 }\nnetwork = {"), "finite_diff.step"),
    ],
    ids=["nan-point", "inf-point", "huge-constant", "huge-domain", "nan-domain", "tiny-step", "huge-step"],
)
def test_values_out_of_range_are_refused(capsys, tmp_path, change, key):
    case = write(tmp_path, "case.toml", PDE.replace("{solution}", "sin(x)*sin(y)").replace(*change))
    code, out = run_main(capsys, "run", str(case))
    assert code == 4 and f"key {key!r}" in out, out


def _suite(folder: Path, names: list[str], **extra: str) -> Path:
    return write(
        folder,
        "suite.toml",
        f"""
        [grid]
        n = {json.dumps(names)}
        [template]
        name = "{{n}}"
        network = [{{ layer = "linear", in = 2, out = 1 }}]
        inputs = {{ batch = 2 }}
        quantities = ["dy/dx"]
        engines = ["symbolic", "numpy"]
    """,
    )


@pytest.mark.parametrize("names", [["a b", "a_b"], ["Net", "net"], ["x/y", "x_y"]])
def test_generate_refuses_names_that_share_a_file_and_writes_nothing(capsys, tmp_path, names):
    suite = _suite(tmp_path, names)
    out_dir = tmp_path / "out"
    code, out = run_main(capsys, "generate", str(suite), "-o", str(out_dir))
    assert code == 4 and "same file" in out
    assert not out_dir.exists() or not list(out_dir.iterdir())


def test_generate_never_overwrites_without_force_and_never_the_suite(capsys, tmp_path):
    suite = _suite(tmp_path, ["one", "two"])
    out_dir = tmp_path / "out"
    assert run_main(capsys, "generate", str(suite), "-o", str(out_dir))[0] == 0
    code, out = run_main(capsys, "generate", str(suite), "-o", str(out_dir))
    assert code == 4 and "already exists" in out and "--force" in out
    assert run_main(capsys, "generate", str(suite), "-o", str(out_dir), "--force")[0] == 0
    selfish = _suite(tmp_path, ["suite", "other"])
    code, out = run_main(capsys, "generate", str(selfish), "-o", str(tmp_path), "--force")
    assert code == 4 and "overwrite the suite file itself" in out
    assert "[grid]" in selfish.read_text()


def test_generated_names_round_trip_through_toml(capsys, tmp_path):
    suite = _suite(tmp_path, ['say "hi"', "back\\\\slash"])
    out_dir = tmp_path / "out"
    assert run_main(capsys, "generate", str(suite), "-o", str(out_dir))[0] == 0
    code, out = run_main(capsys, "run", str(out_dir), "-q", "--no-cache")
    assert code == 0, out
    bad = _suite(tmp_path, ["carriage\rreturn"])
    code, out = run_main(capsys, "generate", str(bad), "-o", str(tmp_path / "bad"))
    assert code == 4 and "printable" in out


def test_a_solution_outside_its_real_domain_is_refused_with_the_point(capsys, tmp_path):
    case = write(tmp_path, "case.toml", PDE.replace("{solution}", "sqrt(x + 0.5)"))
    code, out = run_main(capsys, "run", str(case))
    assert code == 4 and "not a finite real number at the point x = " in out and "key 'solution'" in out


def test_json_output_is_strict(tmp_path):
    from derivcheck import load_case
    from derivcheck.report.json_report import run_to_json
    from derivcheck.runner import run_any

    results = run_any(load_case(write(tmp_path, "case.toml", TINY)))
    results[0].quantities[0].max_rel_error = float("nan")
    results[0].meta["odd"] = [float("inf"), -float("inf")]

    def refuse(token: str) -> None:
        raise AssertionError(f"non-strict JSON token {token}")

    document = json.loads(run_to_json(results), parse_constant=refuse)
    assert document["cases"][0]["quantities"][0]["max_rel_error"] == "nan"
    assert document["cases"][0]["meta"]["odd"] == ["inf", "-inf"]


# -- injection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["\x1b]0;pwned\x07", "evil\x1b[2K\rall good", "two\nlines", "bidi\u202egnp.exe"])
def test_control_characters_in_names_are_refused(capsys, tmp_path, name):
    case = write(tmp_path, "case.toml", TINY.replace('name = "tiny"', f"name = {json.dumps(name)}"))
    code, out = run_main(capsys, "run", str(case))
    assert code == 4 and "key 'name'" in out and "printable" in out
    assert_clean(out)


def test_control_characters_in_file_names_never_reach_the_terminal_or_the_xml(capsys, tmp_path):
    folder = tmp_path / "cases"
    case = write(folder, "evil\x1b[2K\x07.toml", TINY.replace('name = "tiny"\n', ""))
    junit, out_json = tmp_path / "j.xml", tmp_path / "o.json"
    code, out = run_main(capsys, "run", str(folder), "-v", "--no-cache", "--junit", str(junit), "--json", str(out_json))
    assert code == 0, out
    assert_clean(out)
    assert "\\x1b" in out  # shown as an escape
    ET.parse(junit)
    json.loads(out_json.read_text())
    assert case.exists()


INJECTIONS = [
    "<!-- hide -->",
    "![x](http://evil.example/x.png)",
    "# fake heading",
    "a | b",
    "`code`",
    "[link](http://evil.example)",
    "<script>alert(1)</script>",
    "\\input{/etc/passwd}",
    "\\write18{ls}",
]


def test_markdown_html_junit_and_json_escape_names_and_descriptions(capsys, tmp_path):
    description = " ".join(INJECTIONS)
    case = write(tmp_path, "case.toml", TINY.replace('name = "tiny"', f"name = {json.dumps('n ' + INJECTIONS[0] + INJECTIONS[1])}\ndescription = {json.dumps(description)}"))
    out_dir = tmp_path / "report"
    code, out = run_main(capsys, "report", str(case), "-o", str(out_dir), "--no-plots", "--no-cache")
    assert code == 0, out
    markdown = (out_dir / "report.md").read_text()
    for raw in ("<!--", "![x](", "\n# fake", "<script>", "[link](", "`code`", "a | b"):
        assert raw not in markdown, raw
    page = (out_dir / "index.html").read_text()
    assert "<script>alert" not in page and "<!-- hide" not in page
    json.loads((out_dir / "report.json").read_text())


def test_latex_and_markdown_explain_escape_the_name(capsys, tmp_path):
    case = write(tmp_path, "case.toml", TINY.replace('name = "tiny"', 'name = "\\\\input{/etc/passwd} \\\\write18{ls} 100% $x$ #1 a_b ~ ^ &"'))
    code, out = run_main(capsys, "explain", str(case), "--format", "latex")
    assert code == 0, out
    assert "\\input{" not in out and "\\write18{" not in out and "\\textbackslash{}input\\{/etc/passwd\\}" in out
    code, out = run_main(capsys, "explain", str(case), "--format", "markdown")
    assert code == 0


def test_escaping_functions():
    from derivcheck import escaping

    assert escaping.terminal("a\x1b[2Kb\tc\nd\x07") == "a\\x1b[2Kb\tc\nd\\x07"
    assert escaping.one_line("a\nb") == "a\\x0ab"
    assert "<" not in escaping.markdown("<!-- x -->") and "\\[" in escaping.markdown("[a](b)")
    assert escaping.latex("\\input{x}") == "\\textbackslash{}input\\{x\\}"
    assert escaping.xml("a\x00b\x1bc") == "a\\x00b\\x1bc"
    assert escaping.json_safe({"a": [float("nan"), float("inf"), -float("inf"), 1.0]}) == {"a": ["nan", "inf", "-inf", 1.0]}


# -- API ---------------------------------------------------------------------------------------


def test_api_misuse_is_a_derivcheck_error():
    import torch

    import derivcheck as dc

    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(DerivcheckError, match="seed"):
        dc.check_torch(torch.sin, x, seed=-1)
    with pytest.raises(DerivcheckError):
        dc.check_torch(lambda t: (t * 3).long(), x)
    # torch's generator is reseeded before every call: dropout is checked on one fixed mask
    assert dc.check_torch(lambda t: torch.nn.functional.dropout(t, 0.5, training=True), x).ok
    import numpy as np

    r = dc.check_torch(lambda t: t * (1 + 1e-3 * float(np.random.default_rng().random())), x)  # a generator derivcheck cannot reseed
    assert not r.ok and "non-deterministic" in r.failures()[0]


# -- signals -----------------------------------------------------------------------------------


def test_sigterm_is_like_ctrl_c(tmp_path):
    out_dir = tmp_path / "report"
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-m", "derivcheck", "report", str(CASES), "-o", str(out_dir), "--no-plots", "--cache-dir", str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_limit_memory,
    )
    time.sleep(6)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    leftovers = [p for folder in (out_dir, cache) if folder.exists() for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".entry-")]
    assert not leftovers


# -- fuzz --------------------------------------------------------------------------------------

_TOKENS = st.sampled_from(
    [
        "x0",
        "x1",
        "pi",
        "e",
        "1",
        "0",
        "2.5",
        "1e308",
        "1e-308",
        "9" * 40,
        "-",
        "+",
        "*",
        "/",
        "**",
        "(",
        ")",
        "sin(",
        "log(",
        "sqrt(",
        "exp(",
        "tan(",
        "abs(",
        "max(x0, ",
        ",",
        " ",
        "x2",
        "__class__",
        "[",
        "'",
        "lambda",
        ".",
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TOKENS, min_size=1, max_size=14))
def test_fuzz_target_formulas_load_or_are_refused(tokens):
    formula = "".join(tokens)
    table = {"network": [{"layer": "linear", "in": 2, "out": 1}], "loss": "mse", "inputs": {"batch": 3, "targets": [formula]}, "engines": ["symbolic", "numpy"]}
    try:
        case_from_dict(table, file="fuzz.toml")
    except (CaseError, ExpressionError) as exc:
        assert str(exc)  # a message, nothing else
    except DerivcheckError as exc:  # pragma: no cover - shows which error escaped
        raise AssertionError(f"{type(exc).__name__} instead of CaseError: {exc}") from None


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["layer", "in", "out", "batch", "csv", "target", "loss", "step", "rtol", "count", "values", "widths", "x", "u"]), children, max_size=3)
    ),
    max_leaves=12,
)
_KEYS = st.sampled_from(
    [
        "name",
        "description",
        "dtype",
        "seed",
        "network",
        "loss",
        "data",
        "inputs",
        "quantities",
        "engines",
        "tolerance",
        "finite_diff",
        "input_shape",
        "variables",
        "solution",
        "pde",
        "domain",
        "points",
        "constants",
        "density",
        "generator",
        "sgd",
        "clip",
        "device",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_fuzz_case_trees_load_or_are_refused(table):
    try:
        case_from_dict(table, file="fuzz.toml")
    except (CaseError, ExpressionError):
        pass


def _fuzz_case_text(formula: str) -> str:
    return TINY.replace("inputs = { batch = 3 }", f"inputs = {{ batch = 3, targets = [{json.dumps(formula)}] }}")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(_TOKENS, min_size=1, max_size=10))
def test_fuzz_the_command_line_exits_0_1_or_4(tmp_path_factory, tokens):
    folder = tmp_path_factory.mktemp("fuzz")
    case = folder / "case.toml"
    case.write_text(_fuzz_case_text("".join(tokens)))
    start = time.monotonic()
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", str(case), "-q", "--no-cache"])
    text = out.getvalue() + err.getvalue()
    assert code in (0, 1, 4), text
    assert "Traceback" not in text
    assert time.monotonic() - start < 60


# -- found by the probe harness (a bank of 221 attempts) -----------------------------------------


def test_a_derivative_that_grows_without_bound_is_refused_quickly(capsys, tmp_path):
    solution = "x"
    for _ in range(28):
        solution = f"tanh({solution}*x)"
    case = write(tmp_path, "deep.toml", PDE.replace("{solution}", solution + "*sin(y)").replace('"laplacian(u) + k**2 * u - f"', '"d(u, x, 4) - f"').replace("quantities = [", "# ["))
    start = time.monotonic()
    code, out = run_main(capsys, "run", str(case))
    assert code == 4 and "--max-expression-size" in out and "more than 20,000" in out
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("solution", ["abs(x + asin(x/2))", "abs(tanh(x) + asin(tanh(x)))"])
def test_a_solution_sympy_cannot_differentiate_in_closed_form_is_refused(capsys, tmp_path, solution):
    code, out = run_main(capsys, "run", str(write(tmp_path, "case.toml", PDE.replace("{solution}", solution))))
    assert code == 4 and "closed form" in out
    assert_clean(out)


@pytest.mark.parametrize(
    "change, key",
    [
        (("pinn = { boundary = 6, lambda = 1.0 }", "pinn = { boundary = 6, lambda = inf }"), "pinn.lambda"),
    ],
)
def test_pinn_weights_are_validated(capsys, tmp_path, change, key):
    code, out = run_main(capsys, "run", str(write(tmp_path, "case.toml", PDE.replace("{solution}", "sin(x)*sin(y)").replace(*change))))
    assert code == 4 and f"key {key!r}" in out


def test_data_values_and_input_scales_beyond_range_are_refused(capsys, tmp_path):
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,3\n1e308,-1e308,1\n")
    code, out = run_main(capsys, "run", str(_data_case(tmp_path, "d.csv")))
    assert code == 4 and "row 3, column 'a' is not a finite number" in out
    code, out = run_main(capsys, "run", str(write(tmp_path, "s.toml", TINY.replace("inputs = { batch = 3 }", "inputs = { batch = 3, scale = 1e308 }"))))
    assert code == 4 and "inputs.scale" in out


def test_field_error_estimates_have_a_floor():
    from derivcheck.engines.finite_diff.fields import _with_floor

    errors = np.full(1000, 1e-9)
    errors[7] = 0.0  # two Richardson levels that agree by chance
    floored = _with_floor(errors)
    assert floored[7] == pytest.approx(1e-10) and floored[0] == 1e-9


# -- found by a second review --------------------------------------------------------------------


def test_suite_shorthands_and_grids_are_bounded_before_they_are_built(capsys, tmp_path):
    deep = write(
        tmp_path,
        "deep.toml",
        """
        [grid]
        w = [2, 3]
        [template]
        name = "m{w}"
        network = { mlp = { in = 4, hidden = "{w}", depth = 100000000, out = 3 } }
        inputs = { batch = 2 }
    """,
    )
    start = time.monotonic()
    code, out = run_main(capsys, "list", str(deep))
    assert code == 4 and "--max-layers" in out and time.monotonic() - start < 10
    big = "[" + ", ".join(['{ layer = "tanh" }'] * 3000) + "]"
    wide = write(
        tmp_path,
        "wide.toml",
        f"""
        [grid]
        a = {list(range(100))}
        b = {list(range(100))}
        [template]
        name = "c-{{a}}-{{b}}"
        network = {big}
        inputs = {{ batch = 2 }}
    """,
    )
    start = time.monotonic()
    code, out = run_main(capsys, "run", str(wide))
    assert code == 4 and "--max-cases" in out and time.monotonic() - start < 10


@pytest.mark.parametrize(
    "network, shape",
    [
        ('[{ layer = "transformer_encoder", embed_dim = 4, num_heads = 1, dim_feedforward = 4 }, { layer = "flatten" }, { layer = "linear", in = 32000, out = 1 }]', "[8000, 4]"),
        ('[{ layer = "max_pool2d", kernel_size = 40, stride = 1 }, { layer = "flatten" }, { layer = "linear", in = 25921, out = 1 }]', "[1, 200, 200]"),
        ('[{ layer = "embedding", num_embeddings = 200000, embedding_dim = 1 }, { layer = "flatten" }, { layer = "linear", in = 100, out = 1 }]', "[100]"),
    ],
    ids=["attention", "pooling", "embedding"],
)
def test_what_a_layer_holds_inside_counts_against_the_values_limit(capsys, tmp_path, network, shape):
    case = write(tmp_path, "case.toml", f'network = {network}\ninput_shape = {shape}\nloss = "mse"\ninputs = {{ batch = 8 }}\nquantities = ["L"]\nengines = ["numpy", "torch"]\n')
    start = time.monotonic()
    code, out = run_main(capsys, "list", str(case))
    assert code == 4 and ("--max-values" in out or "--max-work" in out), out
    assert time.monotonic() - start < 10


def test_score_cases_are_budgeted(capsys, tmp_path):
    case = write(tmp_path, "score.toml", (CASES / "score-gaussian-mixture.toml").read_text())
    code, out = run_main(capsys, "list", str(case), "--max-values", "10")
    assert code == 4 and "--max-values" in out and "probe vector" in out


def test_a_linked_case_file_outside_the_folder_is_refused_and_never_quoted(capsys, tmp_path):
    secret = tmp_path / "secret" / "credentials.toml"
    secret.parent.mkdir()
    secret.write_text(f'[registry]\ntoken = "{SECRET}"\n')
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "innocent.toml").symlink_to(secret)
    code, out = run_main(capsys, "run", str(folder))
    assert code == 4 and "link to a file outside" in out
    assert_clean(out)
    code, out = run_main(capsys, "run", str(folder / "innocent.toml"))  # named explicitly: read, but never quoted
    assert code == 4 and "unknown key" in out
    assert_clean(out)


def test_data_rows_are_capped(capsys, tmp_path):
    (tmp_path / "d.csv").write_text("a,b,y\n" + "1,2,3\n" * 100_001)
    code, out = run_main(capsys, "run", str(_data_case(tmp_path, "d.csv")))
    assert code == 4 and "100001 rows" in out


def test_pde_derivatives_are_counted_before_sympy_derives_them(capsys, tmp_path):
    names = list("abcghkmn")
    fields = [f"u{i}" for i in range(150)]
    case = write(
        tmp_path,
        "p.toml",
        f"""
        variables = {json.dumps(names)}
        fields = {json.dumps(fields)}
        solution = {{ {", ".join(f'{f} = "sin(a*b*c*g*h*k*m*n)"' for f in fields)} }}
        pde = {{ {", ".join(f'e{i} = "d({f}, a) - f{i}"' for i, f in enumerate(fields))} }}
        sources = {json.dumps([f"f{i}" for i in range(150)])}
        domain = {{ {", ".join(f"{n} = [0, 1]" for n in names)} }}
        network = false
        check = ["exact"]
    """,
    )
    start = time.monotonic()
    code, out = run_main(capsys, "list", str(case))
    assert code == 4 and "--max-derivatives" in out
    assert time.monotonic() - start < 15


def test_plots_go_with_their_own_case_even_when_names_share_a_prefix(tmp_path):
    import copy

    from derivcheck import load_case
    from derivcheck.report.html import render_html
    from derivcheck.runner import run_any

    (first,) = run_any(load_case(write(tmp_path, "case.toml", TINY)))
    second = copy.deepcopy(first)
    first.name, second.name = "a", "a: b"
    page = render_html([first, second], {}, {"a: gradient norms": b"1", "a: b: gradient norms": b"2"}, owners={"a: gradient norms": 0, "a: b: gradient norms": 1})
    start_a, start_ab = page.index('<section id="case-a">'), page.index('<section id="case-a-b">')
    section_a, section_ab = page[start_a:start_ab], page[start_ab : page.index('<h2 id="environment">')]
    assert section_a.count("<figure>") == 1 and section_ab.count("<figure>") == 1
