"""Generic conformance test over a registry of every bijection.

For each: log-det equals log|det jax.jacobian| (float64), inverse(transform(x)) = x with opposite
log-dets, conditional variants depend on their condition, and jit / vmap agree with eager calls.
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.flows as fl

# (the gauge layers bound their spline derivatives below: composed inverses of the randomized,
# very contracting splines otherwise amplify round-off beyond the tolerance)


def _coupling_flow_bij(key, **kw):
    return fl.coupling_flow(key, 4, num_layers=3, hidden=8, **kw).bijection


def _maf_bij(key, **kw):
    return fl.masked_autoregressive_flow(key, 3, num_layers=3, hidden=8, **kw).bijection


# name -> (builder(key), domain, cond_dim)
REGISTRY = {
    "affine": (
        lambda k: fl.Affine(jnp.array([0.5, -1.0, 2.0]), jnp.array([2.0, -0.5, 1.5])),
        "real",
        None,
    ),
    "softplus": (lambda k: fl.Softplus((3,)), "real", None),
    "sigmoid": (lambda k: fl.Sigmoid((3,)), "real", None),
    "logit": (lambda k: fl.Logit((3,)), "unit", None),
    "tanh": (lambda k: fl.Tanh((3,)), "real", None),
    "permutation": (lambda k: fl.Permutation(jnp.array([2, 0, 3, 1])), "real", None),
    "reverse": (lambda k: fl.Reverse(4), "real", None),
    "lu_linear": (lambda k: fl.LULinear(3), "real", None),
    "actnorm": (lambda k: fl.ActNorm((3,)), "real", None),
    "planar": (lambda k: fl.Planar(k, 3, init_scale=1.0), "real", None),
    "radial": (lambda k: fl.Radial(k, 3, init_scale=1.0), "real", None),
    "coupling_affine": (lambda k: fl.Coupling(k, 4, hidden=8), "real", None),
    "coupling_spline": (
        lambda k: fl.Coupling(k, 4, transformer="spline", hidden=8, knots=5, interval=2.0),
        "real",
        None,
    ),
    "coupling_circular": (
        lambda k: fl.Coupling(k, 4, transformer="circular_spline", hidden=8, knots=4),
        "angle",
        None,
    ),
    "coupling_checkerboard": (
        lambda k: fl.Coupling(k, (3, 3), mask=fl.checkerboard_mask((3, 3)), hidden=8),
        "real",
        None,
    ),
    "coupling_conditional": (
        lambda k: fl.Coupling(k, 3, transformer="spline", hidden=8, cond_dim=2, interval=2.0),
        "real",
        2,
    ),
    "maf_spline": (
        lambda k: fl.MaskedAutoregressive(k, 3, transformer="spline", hidden=(8, 8), interval=2.0),
        "real",
        None,
    ),
    "maf_conditional": (
        lambda k: fl.MaskedAutoregressive(k, 3, transformer="affine", hidden=8, cond_dim=2),
        "real",
        2,
    ),
    "scan_coupling_flow": (
        lambda k: _coupling_flow_bij(k, transformer="spline", interval=2.0),
        "real",
        None,
    ),
    "scan_maf_flow": (lambda k: _maf_bij(k, transformer="spline", interval=2.0), "real", None),
    "scan_planar_flow": (lambda k: fl.planar_flow(k, 3, 4, init_scale=0.7).bijection, "real", None),
    "u1_gauge_coupling": (
        lambda k: fl.U1GaugeCoupling(k, 4, mu=1, offset=2, hidden=8, knots=4, min_derivative=0.05),
        "angle",
        None,
    ),
    # a continuous flow: its log-det integrates the exact divergence along the solve, so it
    # matches log|det J| of the numerical map up to the solver's error (tight tolerances here;
    # see _TOLERANCE)
    "cnf": (
        lambda k: fl.CNF(
            fl.MLPVectorField(k, 3, 8, depth=1),
            3,
            rtol=1e-11,
            atol=1e-11,
            adjoint=diffrax.DirectAdjoint(),  # forward-mode (the test's jacfwd) through the solve
        ),
        "real",
        None,
    ),
    # smooth bump-function flows (Köhler et al. 2021): inverses by root finding
    "smooth_interval": (
        lambda k: fl.SmoothInterval(3, 0.0, 1.0, num_components=3, key=k),
        "unit",
        None,
    ),
    "smooth_torus": (lambda k: fl.SmoothTorus(3, num_components=3, key=k), "angle", None),
    "coupling_circular_smooth": (
        lambda k: fl.Coupling(
            k, 4, transformer=fl.CircularSmoothTransformer(num_components=3), hidden=8
        ),
        "angle",
        None,
    ),
    "u1_gauge_flow": (
        lambda k: (
            fl.u1_gauge_flow(k, 4, num_layers=3, hidden=8, knots=4, min_derivative=0.05).bijection
        ),
        "angle",
        None,
    ),
    # unit quaternions (rigid-body orientations): log-dets w.r.t. the surface measure of (S³)^n
    "quaternion_coupling_u": (
        lambda k: fl.QuaternionCoupling(k, 2, coordinate=0, num_components=3, hidden=8),
        "quaternion",
        None,
    ),
    "quaternion_coupling_xi": (
        lambda k: fl.QuaternionCoupling(k, 2, coordinate=1, num_components=3, hidden=8, cond_dim=2),
        "quaternion",
        2,
    ),
    "quaternion_flow": (
        lambda k: fl.quaternion_flow(k, 2, num_layers=2, num_components=3, hidden=8).bijection,
        "quaternion",
        None,
    ),
}


# name -> (rtol, atol) of the log-det and round-trip checks, where it cannot be exact: a CNF's
# log-det and inverse are ODE solves (the divergence integral and the backward solve agree with
# the forward map's Jacobian and inverse to the solver tolerance, not to round-off)
_TOLERANCE = {"cnf": (1e-6, 1e-7)}


def _randomize(bij, key, scale=0.5):
    """Perturb every float parameter so no layer is the identity."""
    params, static = eqx.partition(bij, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    leaves = [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def _points(key, domain, shape, n=None):
    full = shape if n is None else (n, *shape)
    if domain == "real":
        return 1.5 * jax.random.normal(key, full)
    if domain == "unit":
        return jax.random.uniform(key, full, minval=0.05, maxval=0.95)
    if domain == "angle":
        return jax.random.uniform(key, full, minval=-3.0, maxval=3.0)
    if domain == "quaternion":
        g = jax.random.normal(key, full)
        return g / jnp.linalg.norm(g, axis=-1, keepdims=True)
    raise ValueError(domain)


def _build(name, seed=0):
    builder, domain, cond_dim = REGISTRY[name]
    k1, k2 = jax.random.split(jax.random.key(seed))
    bij = _randomize(builder(k1), k2)
    return bij, domain, cond_dim


def _condition(cond_dim, seed=3):
    return None if cond_dim is None else jax.random.normal(jax.random.key(seed), (cond_dim,))


def _sphere_tangents(q):
    """An orthonormal basis `(4n, 3n)` of the tangent space of `(S³)^n` at unit quaternions
    `q` `(n, 4)`: per body `q·i, q·j, q·k` (quaternion products), block-diagonal."""
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    basis = jnp.stack(
        [
            jnp.stack([-x, w, z, -y], -1),
            jnp.stack([-y, -z, w, x], -1),
            jnp.stack([-z, y, -x, w], -1),
        ],
        -1,
    )  # (n, 4, 3)
    n = q.shape[0]
    eye = jnp.eye(n, dtype=q.dtype)
    return jnp.einsum("ab,aij->aibj", eye, basis).reshape(4 * n, 3 * n)


def _log_volume_change(jac, x, sphere: bool):
    """`(sign, log|det|)` of a Jacobian; on `(S³)^n` the log volume change of the tangent map,
    `½ log det((J E)ᵀ J E)` with `E` an orthonormal tangent basis at `x`."""
    if not sphere:
        return jnp.linalg.slogdet(jac)
    je = jac @ _sphere_tangents(x)
    sign, logdet = jnp.linalg.slogdet(je.T @ je)
    return sign, 0.5 * logdet


@eqx.filter_jit
def _check_all(bij, xs, cond, cond2, sphere=False):
    """Everything the conformance test needs, in one compiled call (vmapped over points)."""

    def one(x):
        y, log_det = bij.transform_and_log_det(x, cond)
        jac = jax.jacfwd(lambda z: bij.transform(z, cond))(x).reshape(x.size, x.size)
        x_back, inv_log_det = bij.inverse_and_log_det(y, cond)
        jac_inv = jax.jacfwd(lambda z: bij.inverse(z, cond))(y).reshape(x.size, x.size)
        sign, expected = _log_volume_change(jac, x, sphere)
        out = dict(
            y=y,
            log_det=log_det,
            sign=sign,
            expected=expected,
            x_back=x_back,
            inv_log_det=inv_log_det,
            inv_expected=_log_volume_change(jac_inv, y, sphere)[1],
        )
        if cond2 is not None:
            out["y2"], out["log_det2"] = bij.transform_and_log_det(x, cond2)
            out["x_back2"] = bij.inverse(y, cond2)
        return out

    batched = jax.vmap(one)(xs)
    single = bij.transform_and_log_det(xs[0], cond)
    return batched, single


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_conformance(name, x64):
    """log-det = log|det J| and inverse round trip (float64), under jit and vmap; conditional
    bijections depend on their condition."""
    bij, domain, cond_dim = _build(name)
    cond, cond2 = _condition(cond_dim), _condition(cond_dim, seed=4)
    xs = _points(jax.random.key(10), domain, bij.event_shape, n=3)
    out, (y0, ld0) = _check_all(bij, xs, cond, cond2, domain == "quaternion")
    assert out["y"].shape == xs.shape and out["log_det"].shape == (3,)
    assert np.all(out["sign"] != 0)
    rtol, atol = _TOLERANCE.get(name, (1e-7, 1e-8))
    np.testing.assert_allclose(out["log_det"], out["expected"], rtol=rtol, atol=atol)
    # inverse round trip with opposite log-det, itself equal to the inverse's Jacobian
    np.testing.assert_allclose(out["x_back"], xs, rtol=rtol, atol=atol)
    np.testing.assert_allclose(out["inv_log_det"], -out["log_det"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(out["inv_log_det"], out["inv_expected"], rtol=rtol, atol=atol)
    # vmap agrees with an unbatched call
    np.testing.assert_allclose(out["y"][0], y0, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["log_det"][0], ld0, rtol=1e-10, atol=1e-12)
    if cond_dim is not None:
        assert not np.allclose(out["y"], out["y2"])
        assert not np.allclose(out["log_det"], out["log_det2"])
        assert not np.allclose(
            out["x_back2"], xs, atol=1e-3
        )  # the inverse needs the same condition


@pytest.mark.parametrize("name", sorted(n for n in REGISTRY if REGISTRY[n][2] is not None))
def test_missing_or_wrong_condition_raises(name):
    builder, domain, cond_dim = REGISTRY[name]
    bij = builder(jax.random.key(0))
    x = _points(jax.random.key(5), domain, bij.event_shape)
    with pytest.raises(ValueError, match="condition"):
        bij.transform_and_log_det(x)
    with pytest.raises(ValueError, match="condition"):
        bij.inverse_and_log_det(x, jnp.zeros(cond_dim + 1))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_wrong_event_shape_raises(name):
    builder, _, cond_dim = REGISTRY[name]
    bij = builder(jax.random.key(0))
    bad = jnp.zeros((*bij.event_shape[:-1], bij.event_shape[-1] + 1))
    with pytest.raises(ValueError, match="shape"):
        bij.transform_and_log_det(bad, _condition(cond_dim))
    with pytest.raises(ValueError, match="shape"):
        bij.inverse_and_log_det(bad, _condition(cond_dim))


def test_bad_configuration_raises(key):
    with pytest.raises(ValueError, match="mask"):
        fl.Coupling(key, 3, mask=np.array([True, True, True]))
    with pytest.raises(ValueError, match="mask"):
        fl.Coupling(key, 3, mask=np.zeros(3, bool))
    with pytest.raises(ValueError, match="dim"):
        fl.coupling_flow(key, 1)
    with pytest.raises(ValueError, match="scale"):
        fl.Affine(0.0, jnp.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="permutation"):
        fl.Permutation(jnp.array([0, 0, 1]))
    with pytest.raises(ValueError, match="transformer"):
        fl.Coupling(key, 3, transformer="quadratic")
    with pytest.raises(ValueError, match="knots"):
        fl.Coupling(key, 3, transformer="spline", knots=0)


def test_identity_at_initialisation(key):
    """Conditioner networks end in a zero layer: fresh coupling / MAF layers are the identity."""
    x = jnp.array([0.3, -1.2, 2.5, 0.1])
    for bij in [
        fl.Coupling(key, 4, transformer="spline"),
        fl.Coupling(key, 4, transformer="affine"),
        fl.MaskedAutoregressive(key, 4, transformer="spline"),
    ]:
        y, ld = eqx.filter_jit(lambda b, x: b.transform_and_log_det(x))(bij, x)
        np.testing.assert_allclose(y, x, atol=1e-5)
        assert abs(float(ld)) < 1e-5


def test_planar_invertibility_reparameterisation(key):
    """Whatever u, w: wᵀû > -1, so the layer stays invertible."""
    layer = fl.Planar(key, 3)
    layer = eqx.tree_at(
        lambda p: (p.u, p.w), layer, (jnp.array([-5.0, 1.0, 0.0]), jnp.array([3.0, 0.0, 1.0]))
    )
    assert float(jnp.dot(layer.w, layer.u)) < -1
    assert float(jnp.dot(layer.w, layer.u_hat)) > -1
    x = jnp.array([0.2, 0.1, -0.3])
    np.testing.assert_allclose(layer.inverse(layer.transform(x)), x, atol=1e-5)


def test_circular_spline_is_periodic(x64, key):
    bij = _randomize(
        fl.Coupling(key, 2, transformer="circular_spline", hidden=4), jax.random.key(9)
    )
    a = jnp.array([0.4, -math.pi + 1e-9])
    b = jnp.array([0.4, math.pi - 1e-9])
    fn = eqx.filter_jit(lambda b, x: b.transform_and_log_det(x))
    ya, lda = fn(bij, a)
    yb, ldb = fn(bij, b)
    # both ends of the circle map to the same point with the same derivative
    diff = jnp.mod(ya[1] - yb[1] + math.pi, 2 * math.pi) - math.pi
    assert abs(float(diff)) < 1e-6
    np.testing.assert_allclose(lda, ldb, atol=1e-6)
    assert jnp.all(jnp.abs(ya) <= math.pi)
