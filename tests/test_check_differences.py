"""Finite differences of a user's forward: values, error bars, kinks, jumps, domains."""

from __future__ import annotations

import numpy as np

from derivcheck.check.differences import directional, jacobian, second_directional


def test_smooth_jacobian_is_accurate_and_its_error_bar_covers_it():
    x = np.array([0.3, -1.2, 2.0])
    fd = jacobian(lambda z: np.sin(z) * z[0], x)
    exact = np.diag(np.cos(x) * x[0])
    exact[:, 0] += np.sin(x)
    assert np.all(np.abs(fd.values - exact) <= 10 * fd.errors + 1e-14)
    assert np.max(np.abs(fd.values - exact)) < 1e-9
    assert not fd.kinks.any() and not fd.rough.any() and not fd.undefined.any()


def test_kinks_are_flagged():
    fd = jacobian(lambda z: np.maximum(z, 0), np.array([0.0, 1.0, 1e-5]))
    assert fd.kinks[0, 0] and not fd.kinks[1, 1] and not fd.rough[1, 1]
    assert fd.kinks[2, 2] or fd.rough[2, 2]  # a kink inside the stencil, off centre: excluded either way


def test_a_staircase_sampled_on_its_grid_is_flagged_rough():
    """round(x, 3) at x on its grid: h, h/2, h/4 land on steps in proportion, so every
    difference quotient is equal; the probe at 0.371 h shows the staircase."""
    x = np.array([4.827, 1.5, 0.3333])
    fd = jacobian(lambda z: np.round(z, 3), x)
    assert np.all(fd.rough.diagonal() | fd.kinks.diagonal() | (np.abs(fd.values.diagonal()) < 1e-12))


def test_the_edge_of_the_domain_is_flagged_undefined():
    with np.errstate(invalid="ignore"):
        fd = jacobian(lambda z: np.sqrt(z), np.array([1e-5, 1.0]))
    assert fd.undefined[0, 0] and not fd.undefined[1, 1]
    fd = jacobian(lambda z: np.exp(z), np.array([-np.inf, 0.5]))
    assert fd.undefined[:, 0].all() and fd.values[0, 0] == 0


def test_directional_retries_a_kinked_direction_with_a_smaller_step():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(2000)
    x[0] = 1e-6  # a unit just above its kink
    v = np.zeros((1, 2000))
    v[0, :] = rng.standard_normal(2000)
    d = directional(lambda z: np.array([np.sum(np.maximum(z, 0))]), x, v, np.ones((1, 1)))
    exact = np.sum(v[0][x > 0])
    assert not d.kinks.any() and abs(d.values[0, 0] - exact) < 1e-6 * abs(exact) + 1e-8


def test_second_directional():
    x = np.array([0.2, 0.7])
    value, error = second_directional(lambda z: float(np.sin(z[0]) * np.exp(z[1])), x, np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    assert abs(value - np.cos(0.2) * np.exp(0.7)) < max(10 * error, 1e-8)
