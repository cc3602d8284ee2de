"""The safe expression parser: what it accepts, and that it never runs code."""

from __future__ import annotations

import math

import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from derivcheck.errors import DerivcheckError, ExpressionError
from derivcheck.expr import FUNCTIONS, MAX_LENGTH, make_symbol, parse_expression

x, y, k = (make_symbol(n) for n in ("x", "y", "k"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x + 2*y", x + 2 * y),
        ("x**2 - y/3", x**2 - y / 3),
        ("-x + +y", -x + y),
        ("sin(pi*x) * exp(-k*y)", sp.sin(sp.pi * x) * sp.exp(-k * y)),
        ("sigmoid(x)", 1 / (1 + sp.exp(-x))),
        ("relu(x)", sp.Max(0, x)),
        ("max(x, y, 1)", sp.Max(x, y, 1)),
        ("abs(x) + sqrt(y**2 + 1)", sp.Abs(x) + sp.sqrt(y**2 + 1)),
        ("1/2", sp.Rational(1, 2)),
        ("e**x", sp.exp(x)),
        ("2.5e-3 * x", sp.Float(2.5e-3) * x),
    ],
)
def test_accepts_whitelisted_grammar(text, expected):
    assert sp.simplify(parse_expression(text, ["x", "y"], ["k"]) - expected) == 0


def test_symbols_are_real():
    expr = parse_expression("x*y", ["x", "y"])
    assert all(s.is_real for s in expr.free_symbols)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("__import__('os').system('echo hacked')", "dunder name '__import__'"),
        ("x.__class__", "dunder name '__class__'"),
        ("x.real", "attribute access"),
        ("os.system('ls')", "only plain function names"),
        ("x[0]", "subscripts"),
        ("(lambda: 1)()", "only plain function names"),
        ("lambda: 1", "lambda is not allowed"),
        ("x < y", "comparisons"),
        ("x and y", "'and'/'or'"),
        ("'abc'", "is not a real number"),
        ("True", "is not a real number"),
        ("1j", "is not a real number"),
        ("open('f')", "unknown function 'open'"),
        ("eval('1')", "unknown function 'eval'"),
        ("z + 1", "unknown name 'z'"),
        ("sin", "must be called"),
        ("sin(x, y)", "takes 1 argument"),
        ("max(x)", "takes at least 2"),
        ("exp(x=1)", "no keyword arguments"),
        ("sin(*x)", "star-arguments"),
        ("x // 2", "FloorDiv is not allowed"),
        ("x % 2", "Mod is not allowed"),
        ("9**9**9", "exceeds"),
        ("x**1000", "exponent 1000 exceeds"),
        ("100000**90", "exceeds 300 digits"),
        ("x / 0", "division by zero"),
        ("x +", "syntax error"),
        ("", "empty"),
        ("[x for x in y]", "ListComp syntax is not allowed"),
        ("x if y else 1", "conditional"),
        ("1e999", "not finite"),
    ],
)
def test_rejects_everything_else(text, fragment):
    with pytest.raises(ExpressionError) as info:
        parse_expression(text, ["x", "y"])
    assert fragment in str(info.value)
    assert isinstance(info.value, DerivcheckError) and isinstance(info.value, ValueError)


def test_error_points_at_column():
    with pytest.raises(ExpressionError) as info:
        parse_expression("x + foo(y)", ["x", "y"])
    assert info.value.column == 4
    assert "    ^" in str(info.value)


def test_size_limits():
    with pytest.raises(ExpressionError, match="longer than"):
        parse_expression("x+" * MAX_LENGTH + "x", ["x"])
    with pytest.raises(ExpressionError, match="nested"):
        parse_expression("sin(" * 100 + "x" + ")" * 100, ["x"])
    with pytest.raises(ExpressionError, match="syntax nodes|nested"):
        parse_expression("+".join(["x*y"] * 400), ["x", "y"])


def test_names_are_validated():
    with pytest.raises(ExpressionError, match="not a valid name"):
        parse_expression("x", ["__x__"])
    with pytest.raises(ExpressionError, match="reserved"):
        parse_expression("x", ["sin"])
    with pytest.raises(ExpressionError, match="expected a string"):
        parse_expression(3, ["x"])  # type: ignore[arg-type]


def test_no_code_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.chdir(tmp_path)
    attempts = [
        f"__import__('pathlib').Path('{marker}').touch()",
        "().__class__.__bases__[0].__subclasses__()",
        'exec(\'open("pwned","w")\')',
        "globals()",
    ]
    for text in attempts:
        with pytest.raises(ExpressionError):
            parse_expression(text, ["x"])
    assert not marker.exists()


@given(
    a=st.floats(-5, 5, allow_nan=False),
    b=st.floats(-5, 5, allow_nan=False),
    func=st.sampled_from(["sin", "cos", "tanh", "exp", "sigmoid", "atan"]),
)
def test_parsed_expressions_evaluate_like_math(a, b, func):
    expr = parse_expression(f"{func}(x) * 2 - y**2", ["x", "y"])
    value = float(expr.subs({x: a, y: b}))
    reference = {"sigmoid": lambda t: 1 / (1 + math.exp(-t))}.get(func) or getattr(math, func)
    assert value == pytest.approx(reference(a) * 2 - b**2, rel=1e-12, abs=1e-12)


def test_every_whitelisted_function_parses():
    for name, function in FUNCTIONS.items():
        args = ", ".join(["x"] * function.min_args)
        assert parse_expression(f"{name}({args})", ["x"]).free_symbols <= {x}
