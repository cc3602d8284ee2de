"""The case-kind registry: every kind loads and runs through one entry point, and a new
kind plugs in with one module and one ``register`` call -- shown here with a tiny kind
defined by the test itself and run through the CLI, the JSON report and the pytest plugin."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

import derivcheck as dc
from derivcheck import case_kinds, cli

from helpers import CASES

pytest_plugins = ["pytester"]

# A complete kind: the derivative of a polynomial in x, by SymPy and by central differences.
TINY_KIND = textwrap.dedent("""
    from dataclasses import dataclass, field

    import numpy as np

    from derivcheck.case_kinds import CaseKind
    from derivcheck.case_fields import _Reader
    from derivcheck.compare import compare_quantity
    from derivcheck.expr import parse_expression
    from derivcheck.runner import CaseResult
    from derivcheck.values import EngineValue


    @dataclass
    class PolyCase:
        name: str
        coefficients: list
        description: str = ""
        file: str = None
        engines: list = field(default_factory=lambda: ["symbolic", "finite_diff"])
        device: str = None

        def summary(self):
            return {"name": self.name, "file": self.file, "description": self.description, "kind": "poly",
                    "network": "polynomial", "loss": None, "samples": 5, "dtype": "float64",
                    "quantities": ["dp/dx"], "engines": self.engines}


    def load(table, *, file, base_dir, overrides):
        reader = _Reader(table, file)
        reader.check_keys(("name", "description", "poly"))
        coefficients = reader.get("poly", list, required=True, what="coefficients")
        return PolyCase(reader.get("name", str, "poly"), coefficients, reader.get("description", str, ""), file)


    def run(case, *, device):
        x = np.linspace(-1, 1, 5)
        text = " + ".join(f"{c}*x**{i}" for i, c in enumerate(case.coefficients))
        import sympy
        expr = parse_expression(text, ["x"])
        symbol = sorted(expr.free_symbols, key=str)[0] if expr.free_symbols else sympy.Symbol("x")
        exact = sympy.lambdify([symbol], sympy.diff(expr, symbol), "numpy")
        f = sympy.lambdify([symbol], expr, "numpy")
        h = 1e-5
        fd = (f(x + h) - f(x - h)) / (2 * h)
        q = compare_quantity("dp/dx", {"symbolic": EngineValue(np.broadcast_to(np.asarray(exact(x), float), x.shape).copy()),
                                         "finite_diff": EngineValue(np.asarray(fd, float), error_estimate=np.full(x.shape, 1e-8))})
        return [CaseResult(name=case.name, quantities=[q], engines=list(case.engines), file=case.file, description=case.description)]


    KIND = CaseKind("poly", ("poly",), "tinykind:load", "tinykind:run", "tinykind:PolyCase")
""")


@pytest.fixture
def tiny_kind(tmp_path, monkeypatch):
    (tmp_path / "tinykind.py").write_text(TINY_KIND)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("tinykind")
    case_kinds.register(module.KIND)
    yield module
    case_kinds.unregister("poly")
    sys.modules.pop("tinykind", None)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(CASES)) for p in CASES.rglob("*.toml")))
def test_every_shipped_case_loads_and_runs_through_one_entry_point(path):
    case = dc.load_case(CASES / path)
    kind = case_kinds.kind_of_case(case)
    assert kind.name in ("network", "pde", "gan", "score")
    if path in ("iris-mlp.toml", "pde/helmholtz-mms.toml", "gan-step.toml", "score-gaussian-mixture.toml"):
        results = dc.run_case(case)
        assert results and all(r.ok for r in results)


def test_tables_are_matched_to_kinds():
    assert case_kinds.kind_of_table({"pde": "d(u, x) - f"}).name == "pde"
    assert case_kinds.kind_of_table({"density": {}}).name == "score"
    assert case_kinds.kind_of_table({"generator": []}).name == "gan"
    assert case_kinds.kind_of_table({"network": []}).name == "network"


def test_a_new_kind_runs_through_the_cli_and_the_json_report(tiny_kind, tmp_path, capsys):
    case = tmp_path / "cubic.toml"
    case.write_text('name = "cubic"\npoly = [1, 2, 0, 4]\n')
    out_json = tmp_path / "out.json"
    assert cli.main(["run", str(case), "--json", str(out_json)]) == 0
    assert "cubic" in capsys.readouterr().out
    document = json.loads(out_json.read_text())
    assert document["cases"][0]["name"] == "cubic" and document["cases"][0]["quantities"][0]["verdict"] == "agree"
    assert cli.main(["list", str(case)]) == 0
    assert "polynomial" in capsys.readouterr().out
    (loaded,) = dc.load_cases(case)
    assert type(loaded).__name__ == "PolyCase" and dc.run_case(loaded)[0].ok
    case.write_text('name = "cubic"\npoly = [1, 2]\ncolour = "red"\n')
    assert cli.main(["run", str(case)]) == 4  # its loader's errors are the CLI's usage errors
    assert "unknown key" in capsys.readouterr().err


def test_a_new_kind_runs_in_the_pytest_plugin(pytester, tmp_path):
    pytester.makepyfile(tinykind=TINY_KIND)
    pytester.makeconftest("import tinykind\nfrom derivcheck import case_kinds\ncase_kinds.register(tinykind.KIND)\n")
    cases = pytester.mkdir("cases")
    (cases / "cubic.toml").write_text('name = "cubic"\npoly = [1, 2, 0, 4]\n')
    result = pytester.runpytest_subprocess("--derivcheck", "cases", "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*cubic.toml::cubic PASSED*"])
