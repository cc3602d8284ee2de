"""The pytest plugin: case collection, failure output, JUnit properties, the fixture."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest

from helpers import CASES

pytest_plugins = ["pytester"]

GOOD = """
name = "tiny"
network = [{ layer = "linear", in = 2, out = 3 }, { layer = "tanh" }, { layer = "linear", in = 3, out = 2 }]
loss = "mse"
inputs = { batch = 3 }
"""


def test_collects_case_files(pytester):
    cases = pytester.mkdir("cases")
    (cases / "tiny.toml").write_text(GOOD)
    shutil.copy(CASES / "pde" / "heat-1d.toml", cases / "heat.toml")
    result = pytester.runpytest_subprocess("--derivcheck", "cases", "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*heat.toml::heat PASSED*", "*tiny.toml::tiny PASSED*"])


def test_ini_option_collects_too(pytester):
    cases = pytester.mkdir("mycases")
    (cases / "tiny.toml").write_text(GOOD)
    pytester.makeini("[pytest]\nderivcheck_paths = mycases\n")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


def test_failure_shows_the_table_and_junit_properties(pytester):
    cases = pytester.mkdir("cases")
    (cases / "tiny.toml").write_text(GOOD)
    (cases / "broken.toml").write_text('network = [{ layer = "nope" }]\ninputs = {batch=1}\n')
    pytester.makeconftest(
        """
from derivcheck.layers.activations import Tanh

def pytest_configure(config):
    Tanh.numpy_backward = lambda self, g, cache, params: (g * (1 - cache), {})
"""
    )
    # (every run here is a subprocess: an inline run would leak the conftest's mutation and
    # unload torch's submodules afterwards)
    result = pytester.runpytest_subprocess("--derivcheck", "cases", "--junitxml=out.xml", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*invalid case file*unknown layer*", "*numpy disagrees with symbolic, finite_diff, torch*"])
    tree = ET.parse(pytester.path / "out.xml")
    props = {(tc.get("name"), p.get("name")): p.get("value") for tc in tree.iter("testcase") for p in tc.iter("property")}
    assert props[("tiny", "verdict")] == "disagree"
    assert float(props[("tiny", "max_rel_error")]) > 1e-3
    assert props[("broken", "verdict")] == "error"


def test_fixture_records_properties(pytester, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    pytester.makepyfile(
        """
import torch

def test_ok(derivcheck):
    derivcheck.assert_torch(torch.tanh, torch.linspace(-1, 1, 5, dtype=torch.float64))

def test_bad(derivcheck):
    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x ** 3
        @staticmethod
        def backward(ctx, g):
            return g
    derivcheck.assert_torch(Wrong.apply, torch.linspace(0.5, 1, 3, dtype=torch.float64))
"""
    )
    result = pytester.runpytest_subprocess("--junitxml=out.xml", "-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*DerivativeMismatch*", "*derivcheck MISMATCH*"])
    # the short summary line carries the first failure, not an empty "DerivativeMismatch: "
    result.stdout.fnmatch_lines(["FAILED *test_bad - derivcheck.DerivativeMismatch: Wrong.apply: d out/d x: your backward*"])
    tree = ET.parse(pytester.path / "out.xml")
    verdicts = {tc.get("name"): {p.get("name"): p.get("value") for p in tc.iter("property")} for tc in tree.iter("testcase")}
    assert verdicts["test_ok"]["derivcheck_verdict"] == "agree"
    assert verdicts["test_bad"]["derivcheck_verdict"] == "disagree"


@pytest.mark.parametrize("mutate", [False, True])
def test_cli_junit(tmp_path, monkeypatch, mutate):
    from derivcheck import cli
    from derivcheck.layers.activations import Tanh

    case = tmp_path / "tiny.toml"
    case.write_text(GOOD)
    if mutate:
        monkeypatch.setattr(Tanh, "numpy_backward", lambda self, g, cache, params: (g * (1 - cache), {}))
    out = tmp_path / "report.xml"
    assert cli.main(["run", str(case), "--junit", str(out), "-q"]) == (1 if mutate else 0)
    suite = ET.parse(out).getroot().find("testsuite")
    assert suite.get("tests") == "1" and suite.get("failures") == ("1" if mutate else "0")
    case_node = suite.find("testcase")
    assert case_node.find("properties/property[@name='verdict']").get("value") == ("disagree" if mutate else "agree")
    assert (case_node.find("failure") is not None) == mutate


def test_the_flag_collects_exactly_the_named_cases_not_testpaths(pytester):
    """``--derivcheck`` is a flag (as ``--nbval``): ``cases/`` is a path pytest collects,
    not the flag's value, so ``testpaths`` do not apply and only the cases run."""
    cases = pytester.mkdir("cases")
    (cases / "tiny.toml").write_text(GOOD)
    (cases / "settings.toml").write_text('[tool]\ncolour = "blue"\n')  # not a case: left alone
    tests = pytester.mkdir("tests")
    (tests / "test_other.py").write_text("def test_other():\n    pass\n")
    pytester.makeini("[pytest]\ntestpaths = tests\n")
    result = pytester.runpytest_subprocess("--derivcheck", "cases/", "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*tiny.toml::tiny PASSED*"])
    assert "test_other" not in result.stdout.str()
    # without a path, the flag collects the cases among testpaths, and pyproject.toml is no case
    (tests / "case.toml").write_text(GOOD)
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    (pytester.path / "tox.ini").unlink()
    result = pytester.runpytest_subprocess("--derivcheck", "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*tests/case.toml::case PASSED*"])
    # without the flag, toml files are not collected
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_named_file_is_a_case_even_without_case_keys(pytester):
    (pytester.path / "odd.toml").write_text('name = "x"\n')
    result = pytester.runpytest_subprocess("--derivcheck", "odd.toml", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*invalid case file*"])


def test_the_hypothesis_profile_is_registered_by_the_plugin(pytester):
    """A project without derivcheck's conftest selects the profile (it used to be an
    INTERNALERROR: the profile was registered only in derivcheck's own tests)."""
    pytester.makepyfile(
        """
from hypothesis import given, settings, strategies as st

@given(st.integers())
def test_profile(n):
    assert settings.get_current_profile_name() == "derivcheck-ci"
    assert settings.default.derandomize and settings.default.deadline is None and settings.default.database is None
"""
    )
    result = pytester.runpytest_subprocess("--hypothesis-profile=derivcheck-ci", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_fixture_does_not_warn_under_xunit2(pytester):
    pytester.makepyfile(
        """
import torch

def test_ok(derivcheck):
    derivcheck.assert_torch(torch.tanh, torch.linspace(-1, 1, 5, dtype=torch.float64))
"""
    )
    result = pytester.runpytest_subprocess("--junitxml=out.xml", "-o", "junit_family=xunit2", "-p", "no:cacheprovider", "-W", "error::pytest.PytestWarning")
    result.assert_outcomes(passed=1)
    assert "incompatible with junit_family" not in result.stdout.str()
    tree = ET.parse(pytester.path / "out.xml")
    assert [p.get("value") for p in tree.iter("property") if p.get("name") == "derivcheck_verdict"] == ["agree"]


def test_in_this_repository_the_flag_collects_only_the_shipped_cases():
    """The issue's report: ``pytest --derivcheck cases/`` here collected the whole suite
    too (527 items); now it collects the case files and nothing else."""
    import subprocess
    import sys

    root = CASES.parent
    proc = subprocess.run([sys.executable, "-m", "pytest", "--derivcheck", "cases/", "--collect-only", "-q", "-p", "no:cacheprovider"], cwd=root, capture_output=True, text=True, timeout=300)
    items = [line for line in proc.stdout.splitlines() if "::" in line]
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert items and all(line.startswith("cases/") and ".toml::" in line for line in items), items[:5]
    assert len(items) == len(list(CASES.rglob("*.toml")))
