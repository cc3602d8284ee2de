"""Parallel runs (-j N), Dask (--dask local) and suite files: same results as a serial run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from derivcheck.kinds.network.case import load_case, load_cases
from derivcheck.cli import EXIT_OK, EXIT_USAGE, main
from derivcheck.errors import CaseError, DerivcheckError
from derivcheck.parallel import CaseRef, case_refs, heavy_first_order, inherited_cases, interleaved_batches, needs_derivation, parse_jobs, spread_order, run_on_dask, run_ref, run_refs, task_batches
from derivcheck.runner import run_any
from derivcheck.suite import expand_suite, to_toml
from helpers import CASES

SUITE = """
description = "tiny grid"
[grid]
width = [2, 3]
activation = ["tanh", "sigmoid"]
[template]
name = "mlp-{activation}-w{width}"
description = "width {width}"
network = { mlp = { in = 2, hidden = "{width}", depth = 1, activation = "{activation}", out = 2 } }
loss = "mse"
inputs = { batch = 3 }
"""


@pytest.fixture
def suite_dir(tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    for name in ("iris-mlp", "sigmoid-bce", "gan-step"):
        shutil.copy(CASES / f"{name}.toml", folder)
    shutil.copytree(CASES / "data", folder / "data")
    (folder / "grid.toml").write_text(SUITE)
    return folder


def _json(tmp_path, name, args):
    out = tmp_path / name
    assert main(["run", *args, "-q", "--json", str(out)]) == EXIT_OK
    return out.read_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork-based pool timing")
def test_jobs_two_gives_byte_identical_json(suite_dir, tmp_path):
    serial = _json(tmp_path, "j1.json", [str(suite_dir)])
    parallel = _json(tmp_path, "j2.json", [str(suite_dir), "-j", "2"])
    assert serial == parallel
    assert serial.count(b'"name": "mlp-') >= 4


def test_suite_expands_in_grid_order_with_typed_values():
    import tomllib

    cases = expand_suite(tomllib.loads(SUITE))
    assert [c["name"] for c in cases] == ["mlp-tanh-w2", "mlp-sigmoid-w2", "mlp-tanh-w3", "mlp-sigmoid-w3"]
    assert cases[2]["network"] == [
        {"layer": "linear", "in": 2, "out": 3, "bias": True}, {"layer": "tanh"}, {"layer": "linear", "in": 3, "out": 2, "bias": True},
    ]  # fmt: skip
    assert cases[0]["description"] == "width 2"
    assert tomllib.loads(to_toml(cases[0])) == cases[0]


def test_generate_writes_loadable_cases(suite_dir, tmp_path):
    out = tmp_path / "generated"
    assert main(["generate", str(suite_dir / "grid.toml"), "-o", str(out)]) == EXIT_OK
    files = sorted(out.glob("*.toml"))
    assert [f.stem for f in files] == ["mlp-sigmoid-w2", "mlp-sigmoid-w3", "mlp-tanh-w2", "mlp-tanh-w3"]
    generated = load_case(out / "mlp-tanh-w3.toml")
    from_suite = load_cases(suite_dir / "grid.toml")[2]
    assert generated.problem.network.describe() == from_suite.problem.network.describe()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[grid]\nw = [1]\n[template]\nname = "x-{v}"', "unknown placeholder {v}"),
        ('[grid]\nw = [1, 2]\n[template]\nname = "same"', "unique name"),
        ('[grid]\nw = []\n[template]\nname = "x"', "non-empty array"),
        ('[template]\nname = "x"', "[grid]"),
        ('[grid]\nw = [1]\n[template]\nname = "x-{w}"\nnetwork = { mlp = { in = 2 } }', "mlp shorthand"),
    ],
)
def test_bad_suites_say_why(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CaseError, match="bad.toml") as info:
        load_cases(path)
    assert fragment in str(info.value)


def test_explain_refuses_a_suite_with_a_hint(suite_dir, capsys):
    assert main(["explain", str(suite_dir / "grid.toml")]) == EXIT_USAGE
    assert "suite file" in capsys.readouterr().err


def test_parse_jobs():
    assert parse_jobs("3") == 3 and parse_jobs("auto") >= 1
    for bad in ("0", "-1", "many"):
        with pytest.raises(DerivcheckError):
            parse_jobs(bad)


def _crash_on_sigmoid(ref: CaseRef, device: str = "cpu"):
    if "sigmoid-bce" in ref.path:
        os._exit(3)
    return run_ref(ref, device)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork-based pool")
def test_a_case_that_kills_its_worker_is_an_error_and_the_rest_completes(suite_dir):
    refs = case_refs([str(suite_dir)], {})
    results = run_refs(refs, jobs=2, task=_crash_on_sigmoid)
    by_name = {r.name: r for r in results}
    crashed = [r for r in results if r.errors]
    assert len(crashed) == 1 and "sigmoid-bce" in crashed[0].name and "died" in crashed[0].errors[0]
    assert all(r.verdict == "agree" for r in results if not r.errors)
    assert "iris-mlp" in by_name and sum(n.startswith("mlp-") for n in by_name) == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork-based pool")
def test_forked_workers_run_the_cases_the_parent_loaded(suite_dir, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(suite_dir, moved)
    refs = case_refs([str(moved)], {})
    cases = [case for path in sorted(moved.glob("*.toml")) for case in load_cases(path)]
    shutil.rmtree(moved)  # the files are gone: only the inherited cases can run
    with inherited_cases(refs, cases):
        results = run_refs(refs, jobs=2)
    assert [r.verdict for r in results] == ["agree"] * len(results) and len(results) == len(refs)
    assert not run_refs(refs[:1], jobs=1)[0].quantities  # outside the block they are reloaded (and missing)
    with pytest.raises(ValueError, match="loaded cases"):
        with inherited_cases(refs, cases[:1]):
            pass


def test_pool_order_starts_workers_far_apart_in_the_suite():
    assert spread_order(list(range(6)), 2) == [0, 3, 1, 4, 2, 5]
    assert spread_order([4, 7, 9], 2) == [4, 9, 7] and spread_order([], 3) == [] and spread_order([1, 2], 1) == [1, 2]
    for count, ways in ((120, 2), (7, 3), (5, 8)):
        assert sorted(spread_order(list(range(count)), ways)) == list(range(count))


def test_cold_runs_start_the_heaviest_derivations_first_one_per_group(suite_dir):
    cases = [c for path in sorted(suite_dir.glob("*.toml")) for c in load_cases(path)]
    order = heavy_first_order(cases)
    names = [cases[i].name for i in order]
    assert sorted(order) == list(range(len(cases)))
    # one case per group and round, the groups by their largest layer's parameter count
    # (iris 4->16 ... the grid's widths 3 and 2 share theirs); the GAN case has no network
    assert names == ["iris-mlp", "sigmoid-bce", "mlp-tanh-w3", "mlp-tanh-w2", "gan-step", "mlp-sigmoid-w3", "mlp-sigmoid-w2"]
    assert heavy_first_order([]) == []


def test_cases_that_need_a_derivation_are_found_from_the_cache(tmp_path, monkeypatch):
    """A case needs a derivation until its whole layers are in the cache folder or compiled
    in this process; cases without the symbolic engine or without a network never do."""
    from derivcheck import compile_cache
    from derivcheck.engines.symbolic import layers as symbolic

    monkeypatch.setitem(compile_cache._settings, "directory", tmp_path / "cache")
    monkeypatch.setitem(compile_cache._settings, "enabled", True)
    monkeypatch.setattr(symbolic, "_COMPILED", {})
    cases = load_cases(CASES / "leaky-logsoftmax-mse.toml") + load_cases(CASES / "leaky-logsoftmax-mse.toml", {"engines": ["numpy", "torch"]}) + load_cases(CASES / "gan-step.toml")
    assert needs_derivation(cases) == {0}
    run_any(cases[0])
    assert needs_derivation(cases) == set()
    symbolic._COMPILED.clear()  # another process: only the cache folder tells
    assert needs_derivation(cases) == set()
    compile_cache.clear()
    assert needs_derivation(cases) == {0}


def test_batches_are_interleaved_and_cover_every_case():
    assert interleaved_batches(7, 3) == [[0, 3, 6], [1, 4], [2, 5]]
    # in a given order: the batches' first cases are the order's first cases
    assert task_batches(5, 2, [4, 3, 2, 1, 0]) == [[4, 2, 0], [3, 1]]
    with pytest.raises(ValueError, match="permutation"):
        task_batches(3, 2, [0, 0, 1])
    # Dask tasks: cases that still need a derivation first and alone, the rest in batches
    assert task_batches(6, 2, [5, 4, 3, 2, 1, 0], alone={1, 4}) == [[4], [1], [5, 2], [3, 0]]
    assert task_batches(3, 8) == [[0], [1], [2]]
    assert interleaved_batches(2, 8) == [[0], [1]] and interleaved_batches(0, 4) == []
    for count, batches in ((120, 8), (5, 1), (9, 9)):
        dealt = interleaved_batches(count, batches)
        assert sorted(i for batch in dealt for i in batch) == list(range(count)) and all(dealt)


def test_a_case_that_raises_is_an_error_result(tmp_path):
    path = tmp_path / "gone.toml"
    (result,) = run_ref(CaseRef(str(path)))
    assert result.verdict == "error" and "case failed" in result.errors[0]


def test_dask_missing_says_what_to_install(monkeypatch, suite_dir):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(DerivcheckError, match=r"derivcheck\[dask\]"):
        run_on_dask(case_refs([str(suite_dir)], {}), "local")


def _die_once(ref: CaseRef, device: str = "cpu"):
    """Kill the worker the first time the iris case runs (a lost worker mid-run)."""
    marker = Path(os.environ["DERIVCHECK_TEST_MARKER"])
    if "iris-mlp" in ref.path and not marker.exists():
        marker.write_text("died once")
        os._exit(1)
    return run_ref(ref, device)


def _always_die(ref: CaseRef, device: str = "cpu"):
    if "gan-step" in ref.path:
        os._exit(1)
    return run_ref(ref, device)


def _record_settings(ref: CaseRef, device: str = "cpu"):
    """Write the worker's Dask settings that :func:`run_on_dask` relaxes, then run the case."""
    import dask

    keys = ["distributed.worker.profile.enabled", "distributed.admin.tick.interval", "distributed.admin.system-monitor.interval", "distributed.worker.memory.monitor-interval"]
    Path(os.environ["DERIVCHECK_TEST_MARKER"]).write_text(json.dumps({k: dask.config.get(k) for k in keys}))
    return run_ref(ref, device)


@pytest.fixture
def dask_available():
    pytest.importorskip("distributed")


@pytest.mark.usefixtures("dask_available")
def test_local_dask_workers_run_without_profiler_and_with_relaxed_monitors(tmp_path, monkeypatch):
    """The workers' profiler and 20 ms event-loop ticks took the GIL from the cases."""
    monkeypatch.setenv("DERIVCHECK_TEST_MARKER", str(tmp_path / "settings.json"))
    refs = case_refs([str(CASES / "iris-mlp.toml")], {})
    assert run_on_dask(refs, "local", workers=1, task=_record_settings)[0].verdict == "agree"
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings == {
        "distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
        "distributed.admin.system-monitor.interval": "1s", "distributed.worker.memory.monitor-interval": "1s",
    }  # fmt: skip


@pytest.mark.usefixtures("dask_available")
def test_dask_local_gives_byte_identical_json(suite_dir, tmp_path):
    serial = _json(tmp_path, "j1.json", [str(suite_dir)])
    sharded = _json(tmp_path, "dask.json", [str(suite_dir), "--dask", "local"])
    assert serial == sharded


@pytest.mark.usefixtures("dask_available")
def test_dask_worker_lost_mid_run_is_retried_and_a_killer_case_is_an_error(suite_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DERIVCHECK_TEST_MARKER", str(tmp_path / "marker"))
    refs = case_refs([str(suite_dir)], {})
    results = run_on_dask(refs, "local", task=_die_once)
    assert (tmp_path / "marker").exists()
    assert len(results) == len(refs) and all(r.verdict == "agree" for r in results)
    results = run_on_dask(refs, "local", task=_always_die)
    errors = [r for r in results if r.errors]
    assert len(errors) == 1 and "gan-step" in errors[0].name
    assert sum(1 for r in results if r.verdict == "agree") == len(refs) - 1


def test_pytest_plugin_spreads_a_suite_over_xdist_workers(pytester_suite):
    result = pytester_suite
    assert result.ret == 0
    assert "4 passed" in result.stdout.str()


@pytest.fixture
def pytester_suite(pytester):
    pytest.importorskip("xdist")
    (pytester.path / "grid.toml").write_text(SUITE)
    return pytester.runpytest_subprocess("--derivcheck", "grid.toml", "-n", "2", "-p", "no:cacheprovider")


pytest_plugins = ["pytester"]


DEVICE_SUITE = """
[grid]
device = ["cpu", "cuda"]
[template]
name = "tanh-{device}"
device = "{device}"
network = { mlp = { in = 2, hidden = 3, depth = 1, activation = "tanh", out = 2 } }
loss = "mse"
inputs = { batch = 3 }
"""


def test_devices_are_a_grid_axis_and_missing_cuda_skips(tmp_path, capsys):
    from derivcheck.engines import cuda_available

    (tmp_path / "devices.toml").write_text(DEVICE_SUITE)
    cases = load_cases(tmp_path / "devices.toml")
    assert [(c.name, c.device) for c in cases] == [("tanh-cpu", "cpu"), ("tanh-cuda", "cuda")]
    junit, report = tmp_path / "junit.xml", tmp_path / "run.json"
    assert main(["run", str(tmp_path / "devices.toml"), "--json", str(report), "--junit", str(junit)]) == EXIT_OK
    out = capsys.readouterr().out
    summary = json.loads(report.read_text())["summary"]
    by_name = {c["name"]: c for c in json.loads(report.read_text())["cases"]}
    assert by_name["tanh-cpu"]["verdict"] == "agree" and by_name["tanh-cpu"]["meta"]["device"] == "cpu"
    if cuda_available():
        assert by_name["tanh-cuda"]["verdict"] == "agree" and by_name["tanh-cuda"]["meta"]["device"] == "cuda"
    else:
        assert by_name["tanh-cuda"]["verdict"] == "skipped" and "torch.cuda.is_available() is False" in by_name["tanh-cuda"]["skipped"]
        assert summary["skipped"] == 1 and "1 agree, 1 skipped" in out and "tanh-cuda: SKIPPED" in out
        assert 'skipped="1"' in junit.read_text() and "<skipped message=" in junit.read_text()


def test_an_unknown_device_names_the_key(tmp_path):
    (tmp_path / "tpu.toml").write_text(DEVICE_SUITE.replace('"cuda"]', '"tpu"]'))
    with pytest.raises(CaseError, match=r"key 'device'.*unknown device.*tpu.*cpu, cuda"):
        load_cases(tmp_path / "tpu.toml")


def test_pytest_plugin_skips_a_case_for_a_missing_device(pytester):
    from derivcheck.engines import cuda_available

    (pytester.path / "devices.toml").write_text(DEVICE_SUITE)
    result = pytester.runpytest_subprocess("--derivcheck", "devices.toml", "-p", "no:cacheprovider", "-rs")
    assert result.ret == 0
    assert ("2 passed" if cuda_available() else "1 passed, 1 skipped") in result.stdout.str()


@pytest.mark.parametrize("address", ["foo", "tcp://host", "http://127.0.0.1:8786", "tcp://127.0.0.1:99999", "tcp://two words:1"])
def test_a_malformed_dask_address_is_a_usage_error_at_once(address, tmp_path, capsys):
    from derivcheck import cli

    (tmp_path / "case.toml").write_text((CASES / "tanh-regression.toml").read_text())
    start = time.monotonic()
    assert cli.main(["run", str(tmp_path), "--dask", address]) == 4
    err = capsys.readouterr().err
    assert time.monotonic() - start < 5
    assert "is not a Dask address; allowed: 'local', or a scheduler address" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_unreachable_dask_scheduler_is_one_line_and_exit_4(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    (tmp_path / "case.toml").write_text((CASES / "tanh-regression.toml").read_text())
    env = {**os.environ, "DERIVCHECK_DASK_TIMEOUT": "1"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "derivcheck", "run", str(tmp_path), "--dask", "tcp://127.0.0.1:1"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert time.monotonic() - start < 30
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "no Dask scheduler answered within 1 s" in proc.stderr and "Traceback" not in proc.stderr
