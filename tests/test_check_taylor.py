"""The Taylor test's noise model: it blames a gradient only on evidence beyond its floor."""

from __future__ import annotations

import numpy as np
import pytest

from derivcheck.check.taylor import taylor_test

X = np.array([0.3, -0.7, 1.1])
V = np.array([0.5, 1.0, -0.25])
EPS64, EPS32 = float(np.finfo(np.float64).eps), float(np.finfo(np.float32).eps)


def smooth(x):
    return float(np.sum(np.sin(x) * np.exp(x / 3)))


def smooth_grad(x):
    return np.cos(x) * np.exp(x / 3) + np.sin(x) * np.exp(x / 3) / 3


def run(s, g, *, slope_bound=0.0, x=X, v=V):
    return taylor_test("x", s, x, g, v, noise=10 * EPS64 * abs(s(x)), slope_bound=slope_bound)


def test_right_gradient_has_order_two():
    t = run(smooth, smooth_grad(X))
    assert t.ok and t.verdict == "order 2" and t.order == pytest.approx(2, abs=0.05)


@pytest.mark.parametrize("rel", [1e-1, 1e-3, 1e-5])
def test_wrong_gradient_is_blamed_with_the_error_it_implies(rel):
    g = smooth_grad(X) * (1 + rel)
    t = run(smooth, g)
    assert not t.ok and t.verdict == "wrong gradient"
    true_error = abs(np.dot(g - smooth_grad(X), V))
    assert t.implied_error == pytest.approx(true_error, rel=1e-3)
    assert t.implied_error > t.bound and "off by" in t.message


def test_gradient_precision_is_not_blamed():
    """A gradient is right only to its precision: below some h the remainder turns linear,
    and within the precision bound that is not a wrong gradient."""
    g = smooth_grad(X) * (1 + 1e-4)
    assert not run(smooth, g).ok  # held to float64 precision, 1e-4 is a real error
    bound = 4500 * EPS32 * float(np.dot(np.abs(g), np.abs(V)))  # float32's tolerance: 5.4e-4 relative
    assert run(smooth, g, slope_bound=bound).ok


def test_affine_function_has_nothing_to_fit():
    w = np.array([1.5, -2.0, 0.5])
    t = run(lambda x: float(w @ x + 3), w)
    assert t.ok and t.verdict == "affine"


def test_kink_at_the_point_is_reported_as_a_kink():
    x = np.array([0.0, 1.0, -1.0])
    relu = lambda z: float(np.sum(np.maximum(z, 0)))  # noqa: E731
    t = run(relu, np.array([0.0, 1.0, 0.0]), x=x, v=np.array([1.0, 0.3, 0.2]))
    assert t.ok and t.verdict in ("kink", "affine")
    t = run(lambda z: float(np.sum(np.abs(z))), np.array([0.0, 1.0, -1.0]), x=x, v=np.array([1.0, 0.0, 0.0]))
    assert t.ok and t.verdict == "kink"


def test_kink_inside_the_steps_is_not_blamed():
    x = np.array([1e-4, 0.5])
    relu = lambda z: float(np.sum(np.maximum(z, 0) ** 1))  # noqa: E731
    t = run(relu, np.array([1.0, 1.0]), x=x, v=np.array([-1.0, 0.2]))
    assert t.ok


def test_jump_is_reported_as_a_jump():
    x = np.array([0.49999, 2.2])
    t = run(lambda z: float(np.sum(np.round(z))), np.zeros(2), x=x, v=np.array([1.0, 0.0]))
    assert t.ok and t.verdict == "jump"


def test_to_dict_is_json_safe():
    import json

    t = run(smooth, smooth_grad(X))
    doc = json.loads(json.dumps(t.to_dict(), allow_nan=False))
    assert doc["verdict"] == "order 2" and doc["ok"] is True


def test_an_isolated_step_above_the_floor_on_a_smooth_function_is_inconclusive_not_a_jump():
    g = smooth_grad(X) * (1 + 1e-9)
    t = run(smooth, g, slope_bound=float(np.dot(np.abs(g), np.abs(V))) * 1e-2)
    assert t.ok and t.verdict in ("inconclusive", "affine", "order 2")
