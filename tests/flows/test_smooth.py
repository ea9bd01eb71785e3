"""Smooth bump-function flows (Köhler et al. 2021): exact log-dets, root-finder inverses with
implicit gradients, periodicity on the circle. (The generic conformance tests also cover
`SmoothInterval`, `SmoothTorus` and couplings with both transformers: tests/flows/test_bijections.py.)
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.flows as fl
from driftax.flows._smooth import _solve, _unit_inverse

TRANSFORMERS = {
    "interval": lambda: fl.SmoothTransformer(num_components=4, lower=-2.0, upper=3.0),
    "circle": lambda: fl.CircularSmoothTransformer(num_components=4),
}


def _raw(transformer, n, scale=1.5, seed=0):
    return scale * jax.random.normal(jax.random.key(seed), (n, transformer.num_params))


def _points(name, n, seed=1):
    lo, hi = (-2.0, 3.0) if name == "interval" else (-math.pi, math.pi)
    return jax.random.uniform(jax.random.key(seed), (n,), minval=lo, maxval=hi)


def _round_trip_points(t, name, n, dtype):
    """Points and raw parameters: the first half moderate, the second half steep ramps; for the
    interval also points next to its ends."""
    raw = _raw(t, n, scale=1.0).astype(dtype)
    raw = raw.at[n // 2 :].multiply(3.0)
    x = _points(name, n).astype(dtype)
    if name == "interval":
        x = x.at[:4].set(jnp.array([-2.0 + 1e-6, 3.0 - 1e-6, -1.999, 2.999], dtype))
    return x, raw


def _check_round_trip(t, name, x, raw, y, ld, x_back, inv_ld, tol):
    """inverse(transform(x)) = x to `tol` for moderate ramps; for steep ones (where f' ≈
    min_slope the problem itself amplifies round-off in y) the backward error |x' − x|·f'(x)
    meets `tol`. The derivative stays ≥ min_slope."""
    n = x.shape[0] // 2
    err = np.abs(np.asarray(x_back, np.float64) - np.asarray(x, np.float64))
    if name == "circle":  # compare on the circle
        err = np.abs(np.mod(err + math.pi, 2 * math.pi) - math.pi)
    assert x_back.dtype == x.dtype
    assert err[:n].max() < tol
    assert (err * np.exp(np.asarray(ld, np.float64)))[n:].max() < tol
    assert np.all(np.isfinite(ld)) and np.all(ld >= math.log(t.min_slope) - 1e-6)
    np.testing.assert_allclose(inv_ld[:n], -ld[:n], atol=tol)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=4)  # one per transformer and dtype: never a retrace
def _round_trip(t, x, raw):
    y, ld = t.transform_and_log_det(x, raw)
    return (y, ld, *t.inverse_and_log_det(y, raw))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_round_trip(dtype):
    """The inverse round-trips to 1e-10 (float64) / 1e-5 (float32): the root finder's tolerance
    and iteration count follow the dtype. (Log-dets against jax.jacobian, of the forward and of
    the implicit inverse, are checked by the conformance tests of SmoothInterval, SmoothTorus
    and the circular smooth coupling in tests/flows/test_bijections.py.) The compiled round
    trip does not retrace for the same shapes."""
    tol = 1e-10 if dtype == "float64" else 1e-5
    with jax.enable_x64(dtype == "float64"):
        for name in sorted(TRANSFORMERS):
            t = TRANSFORMERS[name]()
            x, raw = _round_trip_points(t, name, 200, dtype)
            y, ld, x_back, inv_ld = _round_trip(t, x, raw)
            _check_round_trip(t, name, x, raw, y, ld, x_back, inv_ld, tol)
            _round_trip(t, x + 0.0, raw)  # same shapes: no retrace


@pytest.mark.slow
def test_inverse_gradients_are_implicit_and_exact(x64):
    """The custom JVP's gradients of the inverse (w.r.t. y and the raw parameters) equal the
    gradients of the unrolled root finder and central finite differences, also through the
    public inverse's log-det (which a likelihood fit differentiates)."""
    t = TRANSFORMERS["interval"]()
    raw, x = _raw(t, 6), _points("interval", 6)
    y = t.transform_and_log_det(x, raw)[0]
    v = jnp.linspace(0.1, 0.9, 6)  # unit coordinates
    direction = jax.random.normal(jax.random.key(5), raw.shape)
    eps = 1e-6

    def implicit(v, raw):
        return jnp.sum(jnp.sin(3.0 * _unit_inverse(t.sharpness, v, t._mixture(raw, False))))

    def unrolled(v, raw):
        return jnp.sum(jnp.sin(3.0 * _solve(t.sharpness, v, t._mixture(raw, False))))

    def log_det(raw):
        return jnp.sum(t.inverse_and_log_det(y, raw)[1])

    @jax.jit
    def run(v, raw):
        out = {
            "implicit": jax.grad(implicit, argnums=(0, 1))(v, raw),
            "unrolled": jax.grad(unrolled, argnums=(0, 1))(v, raw),
            "log_det": jax.grad(log_det)(raw),
        }
        shifted = [raw + eps * direction, raw - eps * direction]
        out["fd"] = [(implicit(v, a) - implicit(v, b)) / (2 * eps) for a, b in [shifted]][0]
        out["fd_log_det"] = (log_det(shifted[0]) - log_det(shifted[1])) / (2 * eps)
        return out

    out = run(v, raw)
    (gv, graw), (rv, rraw) = out["implicit"], out["unrolled"]
    np.testing.assert_allclose(gv, rv, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(graw, rraw, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(jnp.vdot(graw, direction), out["fd"], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(
        jnp.vdot(out["log_det"], direction), out["fd_log_det"], rtol=1e-6, atol=1e-8
    )


def test_circle_maps_period_onto_itself_smoothly(x64):
    """On [0, 2π) the periodic version maps the period onto itself (covering it once,
    increasing) and its first three derivatives agree at both sides of the seam, also at the
    ramp mixture's own seam (moved by the first rotation)."""
    t = fl.CircularSmoothTransformer(num_components=3, lower=0.0)
    raw = _raw(t, 1, scale=1.5, seed=3)
    fn = lambda x: t.transform_and_log_det(jnp.reshape(x, (1,)), raw)[0][0]
    d1 = jax.grad(fn)
    d2 = jax.grad(d1)
    d3 = jax.grad(d2)
    seam = float(raw[0, 1 + 3 * 3]) % (2 * math.pi)
    probes = jnp.array([1e-9, 2 * math.pi - 1e-9, seam - 1e-9, seam + 1e-9])
    grid = jnp.linspace(0.0, 2 * math.pi, 2001)[:-1]

    @jax.jit
    def run(grid, probes):
        return jax.vmap(fn)(grid), [jax.vmap(d)(probes) for d in (d1, d2, d3)]

    y, derivs = run(grid, probes)
    assert float(y.min()) >= 0.0 and float(y.max()) < 2 * math.pi
    steps = np.diff(np.asarray(y))
    assert np.sum(steps < 0) <= 1  # one wrap-around at most
    lifted = np.mod(steps, 2 * math.pi).sum() + np.mod(y[0] - y[-1], 2 * math.pi)
    np.testing.assert_allclose(lifted, 2 * math.pi)  # the lift gains exactly one period
    for d in derivs:
        np.testing.assert_allclose(d[0], d[1], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(d[2], d[3], rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(derivs[0]) > 0)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="lower"):
        fl.SmoothInterval(2, 1.0, 1.0)
    with pytest.raises(ValueError, match="lower"):
        fl.SmoothTransformer(lower=2.0, upper=-1.0)
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="num_components"):
            fl.SmoothInterval(2, num_components=bad)
        with pytest.raises(ValueError, match="num_components"):
            fl.SmoothTorus(2, num_components=bad)
    with pytest.raises(ValueError, match="num_components"):
        fl.CircularSmoothTransformer(num_components=0)
    with pytest.raises(ValueError, match="min_slope"):
        fl.SmoothTransformer(min_slope=1.5)
    with pytest.raises(ValueError, match="sharpness"):
        fl.CircularSmoothTransformer(sharpness=-1.0)
