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
    fd = jacobian(lambda z: np.maximum(z, 0), np.array([0.0, 1.0, 1e-5, 1e-13]))
    assert fd.kinks[0, 0] and not fd.kinks[1, 1] and not fd.rough[1, 1]
    # a kink inside the ordinary stencil, off centre: a narrower stencil stays on one side
    assert not (fd.kinks[2, 2] or fd.rough[2, 2]) and abs(fd.values[2, 2] - 1) < 1e-9 and fd.errors[2, 2] < 1e-6
    # within rounding distance of the kink (closer than the narrowest step): still flagged
    assert fd.kinks[3, 3] or fd.rough[3, 3]


def test_narrowing_keeps_entries_near_kinks_and_domain_edges():
    """|x| and relu(x) + x**2 at 1e-4 from their kink, sqrt and log at 1e-4 from the edge
    of their domain: the ordinary stencil (about 1e-3 wide) crosses; the narrowed one
    gives the one-sided derivative to many digits, unflagged."""
    x = np.array([1e-4, -2e-4, 3e-4])
    for f, df in ((np.abs, np.sign), (lambda z: np.maximum(z, 0) + z**2, lambda z: (z > 0) + 2 * z)):
        fd = jacobian(f, x)
        assert not (fd.kinks | fd.rough | fd.undefined).any()
        assert np.allclose(fd.values.diagonal(), df(x), rtol=1e-8, atol=1e-10)
    with np.errstate(invalid="ignore", divide="ignore"):
        for f, df in ((np.sqrt, lambda z: 0.5 / np.sqrt(z)), (np.log, lambda z: 1 / z)):
            fd = jacobian(f, np.abs(x))
            assert not (fd.kinks | fd.rough | fd.undefined).any()
            assert np.allclose(fd.values.diagonal(), df(np.abs(x)), rtol=1e-6)
            assert np.all(fd.errors.diagonal() < 1e-5 * np.abs(df(np.abs(x))))


def test_a_staircase_sampled_on_its_grid_is_flagged_rough():
    """round(x, 3) at x on its grid: h, h/2, h/4 land on steps in proportion, so every
    difference quotient is equal; the probe at 0.371 h shows the staircase."""
    x = np.array([4.827, 1.5, 0.3333])
    fd = jacobian(lambda z: np.round(z, 3), x)
    assert np.all(fd.rough.diagonal() | fd.kinks.diagonal() | (np.abs(fd.values.diagonal()) < 1e-12))


def test_the_edge_of_the_domain_is_flagged_undefined():
    with np.errstate(invalid="ignore"):
        fd = jacobian(lambda z: np.sqrt(z), np.array([0.0, 1.0, 1e-5]))
    assert fd.undefined[0, 0] and not fd.undefined[1, 1]
    assert not fd.undefined[2, 2]  # near the edge, not at it: the narrowed stencil stays inside
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
