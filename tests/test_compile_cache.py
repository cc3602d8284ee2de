"""The on-disk compile cache: hits, invalidation, tampering, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import sys

import numpy as np
import pytest

from derivcheck import compile_cache
from derivcheck.cli import main
from derivcheck.engines.symbolic import layers as symbolic, rules as symbolic_rules
from derivcheck.problem import Network
from helpers import CASES, layer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder and empty in-process caches (so derivations hit the disk)."""
    monkeypatch.setitem(compile_cache._settings, "directory", tmp_path / "cache")
    monkeypatch.setitem(compile_cache._settings, "enabled", True)
    saved = [dict(t) for t in (symbolic._COMPILED, symbolic._COMPILED_LOSSES, symbolic_rules._CELLS)]
    for t in (symbolic._COMPILED, symbolic._COMPILED_LOSSES, symbolic_rules._CELLS):
        t.clear()
    yield tmp_path / "cache"
    for t, old in zip((symbolic._COMPILED, symbolic._COMPILED_LOSSES, symbolic_rules._CELLS), saved):
        t.clear()
        t.update(old)


def _forget():
    for t in (symbolic._COMPILED, symbolic._COMPILED_LOSSES, symbolic_rules._CELLS):
        t.clear()


def _linear(n_in=3, n_out=2, **options):
    lin = layer("linear", **{"in": n_in, "out": n_out, **options})
    Network.build([lin])
    return lin


def _entries(folder):
    return sorted(folder.glob("*.json"))


def test_restored_layer_computes_the_same_as_a_fresh_derivation(cache):
    lin = _linear(4, 3)
    fresh = symbolic.compile_layer(lin, 4, whole=True)
    assert len(_entries(cache)) == 1
    _forget()
    before = compile_cache.stats()["hits"]
    restored = symbolic.compile_layer(lin, 4, whole=True)
    assert compile_cache.stats()["hits"] == before + 1
    assert type(restored) is type(fresh) and restored is not fresh
    rng = np.random.default_rng(0)
    a, params, g = rng.standard_normal((4, 5)), list(rng.standard_normal(15)), rng.standard_normal((3, 5))
    np.testing.assert_array_equal(restored.forward(a, params), fresh.forward(a, params))
    np.testing.assert_array_equal(restored.jacobian(a, params), fresh.jacobian(a, params))
    for x, y in zip(restored.vjp(a, params, g), fresh.vjp(a, params, g)):
        np.testing.assert_array_equal(x, y)
    assert restored.jacobian_exprs == fresh.jacobian_exprs  # derived again on demand


def test_cells_and_losses_are_cached_and_warm_runs_derive_nothing(cache):
    from derivcheck.kinds.network.case import load_case
    from derivcheck.runner import run_any

    case = load_case(CASES / "lstm-classifier.toml")
    (cold,) = run_any(case)
    written = len(_entries(cache))
    assert written >= 3  # cells of the LSTM, the linear read-out, the loss
    _forget()
    writes = compile_cache.stats()["writes"]
    (warm,) = run_any(load_case(CASES / "lstm-classifier.toml"))
    assert compile_cache.stats()["writes"] == writes and len(_entries(cache)) == written
    assert warm.to_dict() == cold.to_dict()


def test_changed_case_misses(cache):
    symbolic.compile_layer(_linear(3, 2), 3, whole=True)
    symbolic.compile_layer(_linear(3, 2, bias=False), 3, whole=True)
    symbolic.compile_layer(_linear(3, 4), 3, whole=True)
    assert len(_entries(cache)) == 3


def test_changed_version_misses(cache, monkeypatch):
    lin = _linear()
    symbolic.compile_layer(lin, 3, whole=True)
    _forget()
    real = compile_cache.versions()
    monkeypatch.setattr(compile_cache, "versions", lambda: {**real, "sympy": "99.0"})
    misses = compile_cache.stats()["misses"]
    symbolic.compile_layer(lin, 3, whole=True)
    assert compile_cache.stats()["misses"] == misses + 1
    assert len(_entries(cache)) == 2


def test_tampered_entry_is_rejected_rebuilt_and_never_executed(cache, tmp_path):
    lin = _linear()
    symbolic.compile_layer(lin, 3, whole=True)
    (entry,) = _entries(cache)
    wrapper = json.loads(entry.read_text())
    payload = json.loads(wrapper["payload"])
    marker = tmp_path / "pwned"
    payload["functions"]["forward"] = payload["functions"]["forward"].replace("return", f"open({str(marker)!r}, 'w')\n    return", 1)
    wrapper["payload"] = json.dumps(payload, sort_keys=True)
    entry.write_text(json.dumps(wrapper))
    _forget()
    rejected = compile_cache.stats()["rejected"]
    compiled = symbolic.compile_layer(lin, 3, whole=True)
    assert compile_cache.stats()["rejected"] == rejected + 1
    assert not marker.exists()
    assert compiled.forward(np.ones((3, 2)), [0.5] * 8).shape == (2, 2)
    _forget()
    hits = compile_cache.stats()["hits"]
    symbolic.compile_layer(lin, 3, whole=True)  # the rebuilt entry is valid again
    assert compile_cache.stats()["hits"] == hits + 1


def test_foreign_or_truncated_files_are_rejected(cache):
    lin = _linear()
    symbolic.compile_layer(lin, 3, whole=True)
    (entry,) = _entries(cache)
    text = entry.read_text()
    for broken in (text[: len(text) // 2], "not json", json.dumps({"payload": json.loads(text)["payload"], "mac": "0" * 64})):
        entry.write_text(broken)
        _forget()
        rejected = compile_cache.stats()["rejected"]
        symbolic.compile_layer(lin, 3, whole=True)
        assert compile_cache.stats()["rejected"] == rejected + 1


@pytest.mark.parametrize(
    "source",
    [
        "import os\ndef f(x):\n    return x",
        "def f(x):\n    return x.__class__",
        "def f(x):\n    return __import__('os')",
        "def f(x):\n    return open('x')()",
        "def f(x):\n    return x\ndef g(y):\n    return y",
        "@decorate\ndef f(x):\n    return x",
    ],
)
def test_source_outside_the_lambdify_shape_is_refused(source):
    with pytest.raises(ValueError):
        compile_cache.check_source(source)


def _write_same_entry(folder: str, rounds: int) -> None:
    compile_cache.configure(folder, enabled=True)
    record = {"functions": {"f": "def f(x):\n    return [x*2]\n"}, "padding": "x" * 200_000}
    for _ in range(rounds):
        compile_cache.store("test", "same-content", record)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses fork")
def test_two_processes_writing_one_entry_leave_one_valid_entry(cache):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_same_entry, args=(str(cache), 30)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert all(w.exitcode == 0 for w in workers)
    assert len(_entries(cache)) == 1 and not list(cache.glob(".entry-*")) and not list(cache.glob(".key-*"))
    record = compile_cache.load("test", "same-content")
    assert record is not None and compile_cache.load_function(record["functions"]["f"])(3) == [6]


class _Doubler:
    """A stand-in for a compiled derivation: building it is logged and slow."""

    def __init__(self, log: str | None = None) -> None:
        if log is not None:
            with open(log, "a") as handle:
                handle.write("built\n")
            import time

            time.sleep(0.5)
        self.fn = compile_cache.load_function("def f(x):\n    return [x*2]\n")

    def to_record(self) -> dict:
        return {"functions": {"f": "def f(x):\n    return [x*2]\n"}}


def _build_or_load(folder: str, log: str, results) -> None:
    compile_cache.configure(folder, enabled=True)
    built = compile_cache.cached("test", "shared-derivation", lambda: _Doubler(log), lambda record: _Doubler())
    results.put(built.fn(5))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses fork")
def test_concurrent_builders_of_one_entry_derive_it_once(cache, tmp_path):
    context = multiprocessing.get_context("fork")
    log, results = tmp_path / "builds.log", context.Queue()
    workers = [context.Process(target=_build_or_load, args=(str(cache), str(log), results)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert all(w.exitcode == 0 for w in workers)
    assert log.read_text() == "built\n"  # one process derived it, the other two waited and loaded
    assert sorted(results.get(timeout=5) for _ in workers) == [[10]] * 3
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0 and not list(cache.glob(".*.lock"))


def test_disabled_cache_neither_reads_nor_writes(cache, monkeypatch):
    monkeypatch.setitem(compile_cache._settings, "enabled", False)
    symbolic.compile_layer(_linear(), 3, whole=True)
    assert not cache.exists() or not _entries(cache)


def test_cache_command_info_and_clear(cache, capsys):
    symbolic.compile_layer(_linear(), 3, whole=True)
    assert main(["cache", "info", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "entries:   1" in out and str(cache) in out
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert not _entries(cache)


def test_environment_variable_sets_the_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(compile_cache._settings, "directory", None)
    monkeypatch.setenv(compile_cache.ENV_DIR, str(tmp_path / "elsewhere"))
    assert compile_cache.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(compile_cache.ENV_DIR)
    assert "derivcheck" in str(compile_cache.cache_dir())


def test_restored_functions_resolve_every_printed_function_as_lambdify_does(cache):
    """The SymPy-free namespace of restored code holds the very objects lambdify's does,
    for every function the parser whitelists (erf is derivcheck's vectorised one)."""
    from derivcheck._lazy import sympy as sp
    from derivcheck.expr import FUNCTIONS, NUMPY_MODULES, make_symbol

    x, y = make_symbol("x"), make_symbol("y")
    exprs = [f.build(*([x, y] if f.min_args == 2 else [x])) for f in FUNCTIONS.values()] + [sp.Heaviside(x), sp.sign(x)]
    fn = sp.lambdify([x, y], exprs, modules=NUMPY_MODULES, cse=True)
    compile_cache.store("test", "all-functions", {"functions": {"f": compile_cache.function_source(fn)}})
    record = compile_cache.load("test", "all-functions")
    assert record is not None
    restored = compile_cache.restore(record, "f")
    points = (np.array([0.3, 0.7, 0.05]), np.array([0.5, 0.2, 0.05]))  # inside every domain; a Max/Min tie
    for got, want in zip(restored(*points), fn(*points)):
        np.testing.assert_array_equal(got, want)


def test_code_whose_globals_would_resolve_differently_is_not_stored(cache, monkeypatch):
    from derivcheck._lazy import sympy as sp
    from derivcheck.expr import NUMPY_MODULES, make_symbol

    x = make_symbol("x")
    fn = sp.lambdify([x], [sp.exp(x)], modules=NUMPY_MODULES, cse=True)
    namespace = compile_cache._fresh_namespace()
    monkeypatch.setattr(compile_cache, "_namespace", {**namespace, "exp": np.exp2})
    compile_cache.store("test", "exp", {"functions": {"f": compile_cache.function_source(fn)}})
    assert _entries(cache) == []
    monkeypatch.setattr(compile_cache, "_namespace", namespace)
    compile_cache.store("test", "exp", {"functions": {"f": compile_cache.function_source(fn)}})
    assert len(_entries(cache)) == 1


def test_a_warm_run_never_imports_sympy(tmp_path):
    """Everything a warm run of an MLP case needs comes from the cache: SymPy (~0.3 s of
    start-up) is not imported at all; a cold run imports it to derive."""
    import subprocess

    script = f"import sys\nfrom derivcheck.cli import main\ncode = main(['run', {str(CASES / 'iris-mlp.toml')!r}, '--quiet', '--cache-dir', {str(tmp_path)!r}])\nprint(code, 'sympy' in sys.modules)\n"
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300) for _ in range(2)]
    assert [r.stdout.split()[-2:] for r in runs] == [["0", "True"], ["0", "False"]], [r.stderr for r in runs]
