"""E(n)-equivariant continuous flows for particle systems: symmetry of the drift and of the flow
map to round-off (float64), centre-of-mass conservation, the centred base's normalization, a
likelihood fit on DW-4 reference samples, and the centre-of-mass-free requirement of fits to
particle targets."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import driftax as dx
import driftax.flows as fl

N, D = 4, 2


def _randomize(tree, key, scale=0.3):
    """Perturb every float parameter (the coordinate heads start at zero: no motion)."""
    params, static = eqx.partition(tree, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def _orthogonal(key, d):
    """A random orthogonal matrix with determinant -1 (a rotation composed with a reflection)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (d, d)))
    q = q * jnp.sign(jnp.diag(r))
    return q if float(jnp.linalg.det(q)) < 0 else q.at[:, 0].multiply(-1.0)


def _act(x, q, perm, shift):
    """Rotate/reflect, permute and translate one flat configuration."""
    pos = x.reshape(N, D)
    return (pos[perm] @ q.T + shift).reshape(-1)


@pytest.fixture(scope="module")
def symmetry_case():
    """One compiled call: the drift and the flow's `(T(z), log q(T(z)))` at a configuration,
    its rotated-reflected-permuted-translated copy, and two base draws."""
    with jax.enable_x64(True):
        flow = fl.equivariant_flow(
            jax.random.key(0), N, D, hidden=16, num_layers=2, rtol=1e-10, atol=1e-10
        )
        flow = eqx.tree_at(
            lambda f: f.bijection, flow, _randomize(flow.bijection, jax.random.key(1))
        )
        x = 1.5 * jax.random.normal(jax.random.key(2), (N * D,))
        q = _orthogonal(jax.random.key(3), D)
        perm = jnp.array([2, 0, 3, 1])
        shift = jnp.array([0.7, -1.3])

        @eqx.filter_jit
        def run(flow, x, q, perm, shift):
            gx = _act(x, q, perm, shift)
            points = jnp.stack([x, gx, *flow.base.sample(jax.random.key(4), 2)])
            v = jax.vmap(lambda p: flow.bijection.vector_field(0.4, p))(points)
            y, log_q = jax.vmap(flow.transform_and_log_density)(points)
            return dict(v=v, y=y, log_q=log_q)

        out = jax.tree.map(np.asarray, run(flow, x, q, perm, shift))
    return out, np.asarray(q), np.asarray(perm), np.asarray(shift), np.asarray(x)


def test_drift_is_equivariant_and_centre_of_mass_free(symmetry_case):
    out, q, perm, _, _ = symmetry_case
    v, vg = out["v"][0].reshape(N, D), out["v"][1].reshape(N, D)
    assert np.abs(v).max() > 1e-2  # the randomized field moves the particles
    # v(g·x) = q·v(x) (permuted), whatever the translation
    np.testing.assert_allclose(vg, v[perm] @ q.T, atol=1e-12)
    np.testing.assert_allclose(out["v"].reshape(-1, N, D).mean(axis=1), 0.0, atol=1e-14)


def test_flow_map_is_equivariant_and_log_q_invariant(symmetry_case):
    """T(g·x) = g·T(x) for a rotation-reflection, permutation and translation g; log q is
    invariant; the centre of mass is conserved, so samples from the flow are centred."""
    out, q, perm, shift, x = symmetry_case
    y, yg = out["y"][0].reshape(N, D), out["y"][1].reshape(N, D)
    np.testing.assert_allclose(yg, y[perm] @ q.T + shift, atol=1e-10)
    np.testing.assert_allclose(out["log_q"][1], out["log_q"][0], atol=1e-10)
    np.testing.assert_allclose(y.mean(axis=0), x.reshape(N, D).mean(axis=0), atol=1e-10)
    assert np.abs(y - x.reshape(N, D)).max() > 1e-2
    samples = out["y"][2:].reshape(-1, N, D)
    np.testing.assert_allclose(samples.mean(axis=1), 0.0, atol=1e-10)
    assert np.all(np.isfinite(out["log_q"]))


def test_centred_normal_is_normalized_on_the_subspace(x64):
    """The density integrates to one over the (n-1)·d-dimensional subspace: 2 particles in 1-D
    (a line) and 3 particles in 1-D (a plane), by quadrature along an orthonormal basis; draws
    are centred with E‖x‖² = (n − 1)·d·scale²."""
    for n, scale in [(2, 0.7), (3, 1.3)]:
        base = fl.CentredNormal(n, 1, scale)
        basis = np.linalg.svd(np.eye(n) - 1.0 / n)[0][:, : n - 1]  # orthonormal, sum-zero
        s = np.linspace(-8 * scale, 8 * scale, 401)
        grids = np.meshgrid(*[s] * (n - 1), indexing="ij")
        coords = np.stack([g.reshape(-1) for g in grids], -1) @ basis.T
        dens = np.exp(jax.vmap(base.log_density)(jnp.asarray(coords)))
        integral = dens.sum() * (s[1] - s[0]) ** (n - 1)
        np.testing.assert_allclose(integral, 1.0, rtol=1e-8)
    base = fl.CentredNormal(N, D, 1.5)
    draws = base.sample(jax.random.key(0), 20_000)
    np.testing.assert_allclose(draws.reshape(-1, N, D).mean(axis=1), 0.0, atol=1e-12)
    sq = np.sum(np.asarray(draws) ** 2, axis=1)
    expected = (N - 1) * D * 1.5**2
    assert abs(sq.mean() - expected) < 4 * sq.std() / math.sqrt(sq.size)  # MCSE
    assert base.subspace_dim == (N - 1) * D and float(base.log_normalizer) == 0.0


def test_bad_input_names_the_argument(key):
    target = dx.energies.dw4()
    plain = fl.Flow(fl.StandardNormal(8), fl.Affine(jnp.zeros(8), 2.0))
    for fit in (fl.fit_reverse_kl, fl.fit_fab):
        with pytest.raises(ValueError, match="`flow` must be centre-of-mass free"):
            fit(plain, target, key=key, optimizer=optax.adam(1e-3), num_steps=2, batch_size=4)
    wrong = fl.equivariant_flow(key, 2, 4, hidden=4, num_layers=1)  # also 8 coordinates
    with pytest.raises(ValueError, match="`flow` models 2 particles"):
        fl.fit_reverse_kl(
            wrong, target, key=key, optimizer=optax.adam(1e-3), num_steps=2, batch_size=4
        )
    assert fl.is_centre_of_mass_free(fl.equivariant_flow(key, N, D, hidden=4, num_layers=1))
    assert not fl.is_centre_of_mass_free(plain)
    with pytest.raises(ValueError, match="n_particles"):
        fl.CentredNormal(1, 3)
    with pytest.raises(ValueError, match="scale"):
        fl.CentredNormal(3, 3, scale=0.0)
    with pytest.raises(ValueError, match="spatial_dim"):
        fl.EGNNVectorField(key, 3, 0)
    with pytest.raises(ValueError, match="num_layers"):
        fl.equivariant_flow(key, 3, 2, num_layers=0)


@pytest.mark.slow
def test_flow_matching_fit_on_dw4_raises_held_out_likelihood():
    """Flow matching on the DW-4 reference samples for 300 steps raises the held-out
    log-likelihood (exact divergence, adaptive solver) well above the centred base's (measured:
    −13.09 → −8.9 nats with 400 steps)."""
    data = dx.energies.dw4().reference_samples()
    train_x, test_x = data[:-256], data[-256:]
    scale = float(jnp.sqrt(jnp.mean(jnp.sum(train_x**2, axis=1)) / ((N - 1) * D)))
    flow = fl.equivariant_flow(
        jax.random.key(0), N, D, hidden=16, num_layers=2, scale=scale, rtol=1e-4, atol=1e-4
    )
    mean_log_q = eqx.filter_jit(lambda f, x: jnp.mean(jax.vmap(f.log_density)(x)))
    before = float(mean_log_q(flow, test_x))
    trained, losses = fl.fit_flow_matching(
        flow,
        train_x,
        key=jax.random.key(1),
        optimizer=optax.adam(3e-3),
        num_steps=300,
        batch_size=128,
    )
    after = float(mean_log_q(trained, test_x))
    assert np.all(np.isfinite(losses["train"])) and losses["train"].shape == (300,)
    assert float(jnp.mean(losses["train"][-50:])) < float(jnp.mean(losses["train"][:50]))
    assert after > before + 2.0, (before, after)


def test_fit_flow_matching_bad_input(key):
    plain = fl.Flow(fl.StandardNormal(8), fl.Affine(jnp.zeros(8), 2.0))
    with pytest.raises(TypeError, match="`flow`"):
        fl.fit_flow_matching(
            plain, jnp.zeros((8, 8)), key=key, optimizer=optax.adam(1e-3), num_steps=1, batch_size=4
        )
    flow = fl.equivariant_flow(key, N, D, hidden=4, num_layers=1)
    with pytest.raises(ValueError, match="`data`"):
        fl.fit_flow_matching(
            flow, jnp.zeros((8, 6)), key=key, optimizer=optax.adam(1e-3), num_steps=1, batch_size=4
        )
    with pytest.raises(ValueError, match="num_steps"):
        fl.fit_flow_matching(
            flow, jnp.zeros((8, 8)), key=key, optimizer=optax.adam(1e-3), num_steps=0, batch_size=4
        )
