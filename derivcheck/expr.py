"""Safe expression parser: a whitelisted subset of Python syntax, turned into SymPy.

Case files contain formulas such as ``"sin(a1*pi*x) * sin(a2*pi*y)"``. They are parsed
with :func:`ast.parse` and walked node by node; only the nodes listed below are accepted
and each becomes a SymPy object directly. Nothing is ever passed to ``eval``, ``exec`` or
``sympify`` (all of which can run code).

Accepted:

- numbers (``int`` and ``float`` literals), ``+ - * / **``, unary ``+``/``-``, parentheses;
- names: the declared variables, the declared constants, ``pi`` and ``e``;
- calls of the whitelisted functions in :data:`FUNCTIONS` with positional arguments.

Everything else -- attribute access, subscripts, lambdas, comparisons, keywords,
dunder names, strings -- is an :class:`~derivcheck.errors.ExpressionError` that points at
the offending column. Size limits keep a hostile or accidental expression from exhausting
memory or time: at most :data:`MAX_LENGTH` characters, :data:`MAX_NODES` syntax nodes and
nesting depth :data:`MAX_DEPTH`; a numeric exponent may not exceed :data:`MAX_EXPONENT` in
absolute value, and a number raised to a number may not exceed :data:`MAX_DIGITS` digits.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from derivcheck._lazy import sympy as sp

from derivcheck.errors import ExpressionError

MAX_LENGTH = 2000
MAX_NODES = 600
MAX_DEPTH = 60
MAX_EXPONENT = 100
MAX_DIGITS = 300
MAX_LITERAL = 1e300


def _sigmoid(x: sp.Expr) -> sp.Expr:
    return 1 / (1 + sp.exp(-x))


def _relu(x: sp.Expr) -> sp.Expr:
    return sp.Max(0, x)


def _softplus(x: sp.Expr) -> sp.Expr:
    return sp.log(1 + sp.exp(x))


def _sympy_function(name: str) -> Callable[..., sp.Expr]:
    """``sp.<name>``, looked up when first called (SymPy is imported lazily)."""

    def build(*args: sp.Expr) -> sp.Expr:
        return getattr(sp, name)(*args)

    build.__name__ = name
    return build


@dataclass(frozen=True)
class _Function:
    build: Callable[..., sp.Expr]
    min_args: int
    max_args: int | None  # None: variadic


FUNCTIONS: dict[str, _Function] = {
    "exp": _Function(_sympy_function("exp"), 1, 1),
    "log": _Function(_sympy_function("log"), 1, 1),
    "sqrt": _Function(_sympy_function("sqrt"), 1, 1),
    "sin": _Function(_sympy_function("sin"), 1, 1),
    "cos": _Function(_sympy_function("cos"), 1, 1),
    "tan": _Function(_sympy_function("tan"), 1, 1),
    "asin": _Function(_sympy_function("asin"), 1, 1),
    "acos": _Function(_sympy_function("acos"), 1, 1),
    "atan": _Function(_sympy_function("atan"), 1, 1),
    "sinh": _Function(_sympy_function("sinh"), 1, 1),
    "cosh": _Function(_sympy_function("cosh"), 1, 1),
    "tanh": _Function(_sympy_function("tanh"), 1, 1),
    "erf": _Function(_sympy_function("erf"), 1, 1),
    "abs": _Function(_sympy_function("Abs"), 1, 1),
    "max": _Function(_sympy_function("Max"), 2, None),
    "min": _Function(_sympy_function("Min"), 2, None),
    "sigmoid": _Function(_sigmoid, 1, 1),
    "relu": _Function(_relu, 1, 1),
    "softplus": _Function(_softplus, 1, 1),
}
"""Whitelisted function names and their SymPy meaning."""

BUILTIN_CONSTANTS: dict[str, str] = {"pi": "pi", "e": "E"}
"""Constant names and the SymPy attribute each means."""


def _vector_erf(x: object) -> object:
    import numpy as np

    return np.vectorize(math.erf, otypes=[float])(x)


NUMPY_MODULES: list = [{"erf": _vector_erf}, "numpy"]
"""``lambdify`` modules for numpy: SymPy prints ``erf`` as scalar ``math.erf``; this maps it
to a vectorized version so every formula evaluates on arrays."""

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}

_ALLOWED_SUMMARY = "numbers, + - * / **, parentheses, declared variables and constants, pi, e, and calls of " + ", ".join(sorted(FUNCTIONS))


RESERVED_OPERATORS = ("d", "laplacian", "div", "advect")
"""Names of the differential operators of PDE formulas (:mod:`derivcheck.operators`)."""


def name_problem(ident: object, operators: Mapping[str, object] | None = None) -> str | None:
    """Why `ident` cannot name a variable, constant, field or source, or ``None``:
    it must be an identifier, not a Python keyword, not a dunder, and not one of the
    reserved names (``pi``, ``e``, the functions, the operators) -- redefining ``pi``
    would silently change every formula that uses it."""
    import keyword

    if not isinstance(ident, str) or not ident.isidentifier() or not ident.isascii() or _is_dunder(ident) or keyword.iskeyword(ident):
        return f"{ident!r} is not a valid name (ASCII letters, digits, _; not a Python keyword; no dunder)"
    if ident in BUILTIN_CONSTANTS:
        return f"name {ident!r} is reserved (the constant {'pi' if ident == 'pi' else 'e = exp(1)'}); choose another name"
    if ident in FUNCTIONS or ident in RESERVED_OPERATORS or (operators and ident in operators):
        return f"name {ident!r} is reserved (a function of the formula language); choose another name"
    return None


def make_symbol(name: str) -> sp.Symbol:
    """Return the real SymPy symbol derivcheck uses for `name` (``real=True``: assumption
    queries on plain symbols are ~50x slower)."""
    return sp.Symbol(name, real=True)


def _is_dunder(name: str) -> bool:
    return name.startswith("__") or name.endswith("__")


OperatorHandler = Callable[["_Parser", ast.Call, int], "sp.Expr"]
"""Parses one operator call (e.g. ``d(u, x, 2)``); gets the parser, the node and the depth."""


class _Parser:
    def __init__(self, text: str, names: Mapping[str, sp.Expr], what: str, operators: Mapping[str, OperatorHandler] | None = None):
        self.text = text
        self.names = names
        self.what = what
        self.operators = dict(operators or {})
        self.nodes = 0

    def fail(self, message: str, node: ast.AST | None = None) -> ExpressionError:
        column = getattr(node, "col_offset", None) if node is not None else None
        return ExpressionError(f"{self.what}: {message}", self.text, column)

    def visit(self, node: ast.AST, depth: int) -> sp.Expr:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(f"expression has more than {MAX_NODES} syntax nodes")
        if depth > MAX_DEPTH:
            raise self.fail(f"expression is nested deeper than {MAX_DEPTH} levels", node)
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.UnaryOp):
            operand = self.visit(node.operand, depth + 1)
            if isinstance(node.op, ast.USub):
                return -operand
            if isinstance(node.op, ast.UAdd):
                return operand
            raise self.fail(f"operator {type(node.op).__name__} is not allowed; allowed: {_ALLOWED_SUMMARY}", node)
        if isinstance(node, ast.BinOp):
            return self.binop(node, depth)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        kind = type(node).__name__
        hints = {
            "Attribute": "attribute access (a.b) is not allowed",
            "Subscript": "subscripts (a[i]) are not allowed",
            "Lambda": "lambda is not allowed",
            "Compare": "comparisons are not allowed",
            "BoolOp": "'and'/'or' are not allowed",
            "IfExp": "conditional expressions are not allowed",
        }
        message = hints.get(kind, f"{kind} syntax is not allowed")
        raise self.fail(f"{message}; allowed: {_ALLOWED_SUMMARY}", node)

    def constant(self, node: ast.Constant) -> sp.Expr:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"literal {value!r} is not a real number", node)
        if isinstance(value, int):
            if abs(value) > MAX_LITERAL:
                raise self.fail(f"integer literal has more than {MAX_DIGITS} digits", node)
            return sp.Integer(value)
        if not math.isfinite(value):
            raise self.fail(f"literal {value!r} is not finite", node)
        return sp.Float(value)

    def name(self, node: ast.Name) -> sp.Expr:
        ident = node.id
        if _is_dunder(ident):
            raise self.fail(f"dunder name {ident!r} is not allowed", node)
        if ident in self.names:
            return self.names[ident]
        if ident in FUNCTIONS or ident in self.operators:
            raise self.fail(f"function {ident!r} must be called, e.g. {ident}(x)", node)
        known = ", ".join(sorted(self.names)) or "(none declared)"
        raise self.fail(f"unknown name {ident!r}; declared names: {known}", node)

    def binop(self, node: ast.BinOp, depth: int) -> sp.Expr:
        symbol = _BINARY.get(type(node.op))
        if symbol is None:
            raise self.fail(f"operator {type(node.op).__name__} is not allowed; allowed: {_ALLOWED_SUMMARY}", node)
        left = self.visit(node.left, depth + 1)
        right = self.visit(node.right, depth + 1)
        if symbol == "+":
            return left + right
        if symbol == "-":
            return left - right
        if symbol == "*":
            return left * right
        if symbol == "/":
            if right == 0:
                raise self.fail("division by zero", node)
            return left / right
        return self.power(left, right, node)

    def power(self, base: sp.Expr, exponent: sp.Expr, node: ast.BinOp) -> sp.Expr:
        if exponent.is_number:
            value = complex(sp.N(exponent))
            if abs(value) > MAX_EXPONENT:
                raise self.fail(f"exponent {exponent} exceeds {MAX_EXPONENT} in absolute value", node)
            if base.is_number:
                magnitude = abs(complex(sp.N(base)))
                if magnitude > 1 and abs(value) * math.log10(magnitude) > MAX_DIGITS:
                    raise self.fail(f"number raised to a number exceeds {MAX_DIGITS} digits", node)
                if base == 0 and value.real < 0:
                    raise self.fail("zero raised to a negative power", node)
        return base**exponent

    def expression(self, node: ast.AST, depth: int) -> sp.Expr:
        """Parse a sub-expression (for operator handlers)."""
        return self.visit(node, depth)

    def call(self, node: ast.Call, depth: int) -> sp.Expr:
        if not isinstance(node.func, ast.Name):
            raise self.fail(f"only plain function names can be called; allowed: {', '.join(sorted(FUNCTIONS))}", node)
        ident = node.func.id
        if _is_dunder(ident):
            raise self.fail(f"dunder name {ident!r} is not allowed", node)
        if node.keywords:
            raise self.fail(f"{ident}() takes no keyword arguments", node)
        if any(isinstance(arg, ast.Starred) for arg in node.args):
            raise self.fail("star-arguments are not allowed", node)
        if ident in self.operators:
            return self.operators[ident](self, node, depth)
        function = FUNCTIONS.get(ident)
        if function is None:
            allowed = ", ".join(sorted(set(FUNCTIONS) | set(self.operators)))
            raise self.fail(f"unknown function {ident!r}; allowed: {allowed}", node)
        count = len(node.args)
        if count < function.min_args or (function.max_args is not None and count > function.max_args):
            expected = (
                f"{function.min_args}" if function.max_args == function.min_args else f"at least {function.min_args}" if function.max_args is None else f"{function.min_args} to {function.max_args}"
            )
            raise self.fail(f"{ident}() takes {expected} argument(s), got {count}", node)
        args = [self.visit(arg, depth + 1) for arg in node.args]
        return function.build(*args)


def parse_expression(
    text: str,
    variables: Iterable[str] = (),
    constants: Iterable[str] = (),
    *,
    what: str = "expression",
    extra_names: Mapping[str, sp.Expr] | None = None,
    operators: Mapping[str, OperatorHandler] | None = None,
) -> sp.Expr:
    """Parse `text` into a SymPy expression, accepting only the whitelisted grammar.

    **Arguments:**

    - `text`: the expression, e.g. ``"sin(pi*x) * exp(-k*t)"``.
    - `variables`: names that become real SymPy symbols (the independent variables).
    - `constants`: names of constants; they also become real symbols, so a caller can
      substitute values later while the formula stays readable.
    - `what`: how to name the expression in error messages (e.g. ``"key 'pde'"``).
    - `extra_names`: further names and the SymPy objects they stand for (e.g. a field
      ``u`` standing for ``u(x, y)``).
    - `operators`: extra call names parsed by their own handler (the differential
      operators of :mod:`derivcheck.operators`).

    **Returns:** a SymPy expression whose free symbols are among `variables` and
    `constants` (created with :func:`make_symbol`).

    **Raises:** :class:`~derivcheck.errors.ExpressionError` for anything outside the
    grammar, with the offending column marked.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"{what}: expected a string, got {type(text).__name__} {text!r}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"{what}: expression is longer than {MAX_LENGTH} characters ({len(text)})")
    if not text.strip():
        raise ExpressionError(f"{what}: expression is empty")
    names: dict[str, sp.Expr] = {name: getattr(sp, attribute) for name, attribute in BUILTIN_CONSTANTS.items()}
    for group in (variables, constants):
        for ident in group:
            problem = name_problem(ident)
            if problem:
                raise ExpressionError(f"{what}: {problem}")
            names[ident] = make_symbol(ident)
    for ident, value in (extra_names or {}).items():
        problem = name_problem(ident, operators)
        if problem:
            raise ExpressionError(f"{what}: {problem}")
        names[ident] = value
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        column = (exc.offset - 1) if exc.offset else None
        raise ExpressionError(f"{what}: syntax error: {exc.msg}", text.strip(), column) from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise ExpressionError(f"{what}: expression could not be parsed ({type(exc).__name__}); simplify it") from None
    parser = _Parser(text.strip(), names, what, operators)
    for node in ast.walk(tree):
        found = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if found is not None and _is_dunder(found):
            raise parser.fail(f"dunder name {found!r} is not allowed", node)
    try:
        expr = parser.visit(tree.body, 0)
    except RecursionError:
        raise ExpressionError(f"{what}: expression is nested too deeply") from None
    except ExpressionError:
        raise
    except (OverflowError, MemoryError, ValueError, TypeError, ZeroDivisionError) as exc:
        raise ExpressionError(f"{what}: expression could not be built ({type(exc).__name__}: {exc}); simplify it", text.strip()) from None
    check_real(expr, what, text.strip())
    return expr


def check_real(expr: sp.Expr, what: str, text: str = "") -> None:
    """Raise :class:`ExpressionError` when `expr` holds a value that is not a finite real
    number: ``log(0)`` or ``tan(pi/2)`` (infinite or undefined), ``sqrt(-1)``,
    ``x**sqrt(-1)`` or ``(-8)**(1/3)`` (complex: SymPy's principal root), or a number
    beyond float range (a product of huge literals). Formulas are real, and a complex
    value evaluated as a float would silently lose its imaginary part."""
    for node in sp.preorder_traversal(expr):
        if node in (sp.zoo, sp.oo, -sp.oo, sp.nan) or isinstance(node, (sp.core.numbers.Infinity, sp.core.numbers.NegativeInfinity, sp.core.numbers.ComplexInfinity, sp.core.numbers.NaN)):
            raise ExpressionError(f"{what}: the formula has an infinite or undefined value ({node}), e.g. log(0) or tan(pi/2)", text)
        if node is sp.I or isinstance(node, sp.core.numbers.ImaginaryUnit):
            raise ExpressionError(f"{what}: the formula has a complex value (the imaginary unit appears, e.g. from sqrt(-1) or log(-1)); formulas must be real", text)
        if isinstance(node, sp.Number):
            if abs(node) > MAX_LITERAL:
                raise ExpressionError(f"{what}: the formula holds the number {sp.N(node, 6)}, beyond {MAX_LITERAL:g} (float range)", text)
            continue
        if getattr(node, "is_number", False) and not isinstance(node, sp.Number) and len(node.args) <= 4:
            real = node.is_extended_real
            if real is False:
                raise ExpressionError(
                    f"{what}: the formula has a complex value ({node}); formulas must be real (note: (-8)**(1/3) is the complex principal root, as in Python; write -(8**(1/3)) for the real one)", text
                )
