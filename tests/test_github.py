"""GitHub Actions: the job summary appended to $GITHUB_STEP_SUMMARY and ::error annotations."""

from __future__ import annotations

import re

import pytest

from derivcheck import cli
from derivcheck.report.github import step_summary, workflow_annotations as annotations
from derivcheck.runner import CaseResult

GOOD = """
name = "tiny"
network = [{ layer = "linear", in = 2, out = 3 }, { layer = "tanh" }, { layer = "linear", in = 3, out = 2 }]
loss = "mse"
inputs = { batch = 3 }
"""


@pytest.mark.parametrize("mutate", [False, True])
def test_run_appends_the_summary_and_prints_annotations(tmp_path, monkeypatch, capsys, mutate):
    from derivcheck.layers.activations import Tanh

    case = tmp_path / "cases" / "tiny.toml"
    case.parent.mkdir()
    case.write_text(GOOD)
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.chdir(tmp_path)
    if mutate:
        monkeypatch.setattr(Tanh, "numpy_backward", lambda self, g, cache, params: (g * (1 - cache), {}))
    assert cli.main(["run", "cases", "--annotations", "github"]) == (1 if mutate else 0)
    out = capsys.readouterr().out
    text = summary.read_text()
    assert text.startswith("earlier step\n## derivcheck\n")  # appended, not replaced
    assert "| case | verdict | quantities | worst margin (error / tolerance) |" in text and "| tiny |" in text
    errors = [line for line in out.splitlines() if line.startswith("::")]
    if mutate:
        assert "### Needs attention" in text and "numpy" in text
        assert len(errors) == 1
        assert re.fullmatch(r"::error file=cases/tiny\.toml,title=derivcheck tiny%3A disagree::.*numpy.*", errors[0])
    else:
        assert "Needs attention" not in text and errors == []


def test_without_the_variable_nothing_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    (tmp_path / "tiny.toml").write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "tiny.toml"]) == 0
    assert "::" not in capsys.readouterr().out and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


def test_workflow_command_escaping():
    case = CaseResult(name="a:b,c%d\nline", quantities=[], engines=[], file="x,y.toml", errors=["boom 100%\nsecond line"])
    (line,) = annotations([case])
    assert line.startswith("::error file=x%2Cy.toml,title=derivcheck a%3Ab%2Cc%25d\\x0aline%3A error::")
    assert line.endswith("boom 100%25%0Asecond line") and "\n" not in line
    summary = step_summary([case])
    assert "### Needs attention" in summary and "boom 100%" in summary


def test_a_kink_is_a_warning_and_agreeing_cases_are_quiet():
    from derivcheck.compare import QuantityResult

    kink = CaseResult(name="relu", quantities=[QuantityResult(name="dy/dx", verdict="kink", engines=["a", "b"], message="entries at a kink")], engines=["a", "b"])
    fine = CaseResult(name="ok", quantities=[QuantityResult(name="dy/dx", verdict="agree", engines=["a", "b"])], engines=["a", "b"])
    assert [line.split(" ", 1)[0] for line in annotations([kink, fine])] == ["::warning"]
