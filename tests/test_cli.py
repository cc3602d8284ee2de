"""The command line: exit codes, output, JSON schema, ``python -m derivcheck``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from derivcheck import cli
from derivcheck.engines import cuda_available
from derivcheck.engines.numpy_backprop.network import NumpyBackprop

from helpers import CASES

GOOD = """
name = "tiny"
network = [{ layer = "linear", in = 2, out = 3 }, { layer = "tanh" }, { layer = "linear", in = 3, out = 2 }]
loss = "mse"
inputs = { batch = 3 }
"""


def test_run_all_shipped_cases_exit_0(capsys, tmp_path):
    out_json = tmp_path / "out.json"
    assert cli.main(["run", str(CASES), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "iris-mlp" in out and "seq-16-8-4-2" in out and "disagree" not in out
    doc = json.loads(out_json.read_text())
    assert doc["schema_version"] == 1 and doc["summary"]["disagree"] == 0
    names = {c["name"] for c in doc["cases"]}
    assert {"iris-mlp", "seq-16-8-4-2", "tanh-regression", "sigmoid-bce", "tanh-20-20-20"} <= names
    for case in doc["cases"]:
        assert case["verdict"] == "agree"
        for q in case["quantities"]:
            assert {"name", "verdict", "engines", "max_rel_error"} <= set(q)
            assert q["verdict"] in ("agree", "disagree", "kink", "nonfinite", "error", "skipped")
    # one line per agreeing case, no per-quantity rows for them
    assert "worst margin" in out and "cases that did not simply agree" not in out
    assert len(out.splitlines()) < len(doc["cases"]) + 8


def test_json_is_deterministic(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    case = str(CASES / "seq-16-8-4-2.toml")
    assert cli.main(["run", case, "--json", str(a), "-q"]) == 0
    assert cli.main(["run", case, "--json", str(b), "-q"]) == 0
    assert a.read_bytes() == b.read_bytes()


def test_engine_subset_dtype_and_seed(capsys):
    code = cli.main(["run", str(CASES / "tanh-regression.toml"), "--engines", "symbolic,torch", "--dtype", "float32", "--seed", "9"])
    out = capsys.readouterr().out
    assert code == 0 and "finite_diff" not in out


def test_quantities_a_chosen_subset_cannot_compute_are_skipped_not_errors(capsys, tmp_path):
    """The README's example: the PINN gradient quantities only torch computes are
    ``skipped`` with the reason when the chosen engines are symbolic and torch; exit 0."""
    out_json = tmp_path / "out.json"
    code = cli.main(["run", str(CASES / "pde" / "helmholtz-mms.toml"), "--engines", "symbolic,torch", "--dtype", "float32", "--seed", "3", "-v", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ERROR" not in out and "lambda_hat: SKIPPED - only torch computes this quantity (symbolic: the symbolic engine does not derive" in out
    assert "quantities skipped: fewer than two of the chosen engines compute them" in out
    doc = json.loads(out_json.read_text())
    network = next(c for c in doc["cases"] if c["name"].endswith("[network]"))
    assert network["verdict"] == "agree" and {q["verdict"] for q in network["quantities"]} == {"agree", "skipped"}


def test_one_engine_without_a_reason_is_still_an_error():
    import numpy as np

    from derivcheck.compare import compare_quantity
    from derivcheck.values import EngineValue

    value = {"torch": EngineValue(np.ones(3))}
    assert compare_quantity("q", value).verdict == "error"
    assert compare_quantity("q", value, skipped={"symbolic": "cannot"}).verdict == "skipped"


def test_list(capsys):
    assert cli.main(["list", str(CASES)]) == 0
    out = capsys.readouterr().out
    assert "iris-mlp" in out and "4-8-3 ReLU MLP" in out and "dL/d0.weight" in out
    assert cli.main(["list", str(CASES / "iris-mlp.toml"), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing[0]["name"] == "iris-mlp" and "dy/dx" in listing[0]["quantities"]


def test_usage_errors_exit_4(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('network = [{ layer = "nope" }]\ninputs = {batch=1}\n')
    assert cli.main(["run", str(bad)]) == 4
    err = capsys.readouterr().err
    assert str(bad) in err and "unknown layer" in err and "Traceback" not in err
    assert cli.main(["run", str(CASES), "--engines", "symbolic"]) == 4
    assert "at least two" in capsys.readouterr().err
    assert cli.main(["run", str(tmp_path / "missing.toml")]) == 4
    with pytest.raises(SystemExit) as info:
        cli.main(["run"])
    assert info.value.code == 4
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 4


def test_no_cases_exit_5(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path)]) == 5
    assert cli.main(["list", str(tmp_path)]) == 5


def test_engine_crash_exit_3(tmp_path, monkeypatch, capsys):
    path = tmp_path / "case.toml"
    path.write_text(GOOD)

    def boom(self, problem, quantities):
        raise RuntimeError("simulated engine bug")

    monkeypatch.setattr(NumpyBackprop, "compute", boom)
    assert cli.main(["run", str(path)]) == 3
    out = capsys.readouterr().out
    assert "engine numpy failed: RuntimeError: simulated engine bug" in out


@pytest.mark.skipif(cuda_available(), reason="checks the message shown when no GPU is present")
def test_cuda_without_gpu_is_a_clear_usage_error(capsys):
    assert cli.main(["run", str(CASES / "iris-mlp.toml"), "--device", "cuda"]) == 4
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_cuda_device_agrees():
    assert cli.main(["run", str(CASES / "iris-mlp.toml"), "--device", "cuda", "-q"]) == 0


def test_python_dash_m_help():
    done = subprocess.run([sys.executable, "-m", "derivcheck", "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "run" in done.stdout and "list" in done.stdout


def test_bad_input_in_subprocess_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    done = subprocess.run([sys.executable, "-m", "derivcheck", "run", str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode == 4
    assert "not valid TOML" in done.stderr and "Traceback" not in done.stderr


class _ClosedPipe:
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass


def test_a_reader_that_goes_away_stops_the_output_quietly(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())  # as in `derivcheck list cases | head -1`
    assert cli.main(["list", str(CASES)]) == cli.EXIT_INTERRUPTED
    assert "Traceback" not in capsys.readouterr().err


def test_the_command_runs_blas_single_threaded_unless_the_user_says_otherwise(monkeypatch):
    for name in cli.BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")  # the user's choice wins
    cli.single_threaded_blas()
    import os

    assert os.environ["OPENBLAS_NUM_THREADS"] == "3" and os.environ["MKL_NUM_THREADS"] == os.environ["OMP_NUM_THREADS"] == "1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_single_threaded_blas_takes_effect_before_numpy_loads():
    """OpenBLAS starts its threads when numpy loads: after single_threaded_blas() there are
    none besides the main thread (on a machine with more than one core there would be)."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in cli.BLAS_THREAD_VARIABLES}
    script = "import os\nfrom derivcheck.cli import single_threaded_blas\nsingle_threaded_blas()\nimport numpy\nprint(len(os.listdir('/proc/self/task')))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    assert int(done.stdout) == 1
    if (os.cpu_count() or 1) > 1:
        free = subprocess.run([sys.executable, "-c", "import os, numpy; print(len(os.listdir('/proc/self/task')))"], capture_output=True, text=True, check=True, env=env)
        assert int(free.stdout) > 1  # the test can tell the difference on this machine
