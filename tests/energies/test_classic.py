"""Classic targets: every ground truth checked by an independent computation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

import driftax.energies as de
from tests.helpers import assert_iid_mean, assert_iid_probability, assert_iid_variance

N = 40_000


def _quad2d(energy, lo, hi, **kw):
    f = jax.jit(lambda a, b: jnp.exp(energy.log_density(jnp.stack([a, b]))))
    return integrate.dblquad(lambda b, a: float(f(a, b)), lo[0], hi[0], lo[1], hi[1], **kw)[0]


def test_funnel_ground_truth(x64):
    target = de.funnel(10)
    xs = target.sample(jax.random.key(0), N)
    assert_iid_mean(xs, target.mean)
    # x0 ~ N(0, 9) exactly; the other coordinates have heavy-tailed variance, check x0 only.
    assert_iid_variance(xs[:, :1], target.variance[:1])
    np.testing.assert_allclose(target.variance[1], np.exp(4.5))
    # Conditional structure: x_i / exp(x0/2) is standard normal and independent of x0.
    z = np.asarray(xs[:, 1:] / jnp.exp(0.5 * xs[:, :1]))
    assert_iid_variance(z, 1.0)
    # log Z = 0 by quadrature of the 2-D funnel.
    f2 = jax.jit(lambda a, b: jnp.exp(de.funnel(2).log_density(jnp.stack([a, b]))))
    half = lambda a: 12.0 * np.exp(0.5 * a)  # the x1 | x0 scale follows the neck
    z2 = integrate.dblquad(
        lambda b, a: float(f2(a, b)), -30, 30, lambda a: -half(a), half, epsabs=1e-11
    )[0]
    np.testing.assert_allclose(np.log(z2), 0.0, atol=1e-6)


def test_banana_ground_truth(x64):
    target = de.banana(4)
    xs = target.sample(jax.random.key(1), N)
    assert_iid_mean(xs, target.mean)
    assert_iid_variance(xs, target.variance)
    np.testing.assert_allclose(target.variance[:2], [100.0, 19.0])
    z = _quad2d(de.banana(), (-80, -80), (80, 250), epsabs=1e-10)
    np.testing.assert_allclose(np.log(z), 0.0, atol=1e-6)


def test_many_well_log_normalizer_matches_pinned_value(x64):
    target = de.many_well(32)
    # TARGETS.md: log Z = (d/2)(ln 11784.50927 + ½ ln 2π) = 164.696 for d = 32.
    pinned = 16 * (math.log(11784.50927) + 0.5 * math.log(2 * math.pi))
    np.testing.assert_allclose(target.log_normalizer, pinned, atol=1e-6)
    np.testing.assert_allclose(target.log_normalizer, 164.696, atol=1e-3)
    # Independent check of the 1-D constant: trapezoid on a fine grid.
    g = np.linspace(-6, 6, 400_001)
    z1 = np.trapezoid(np.exp(-(g**4) + 6 * g**2 + 0.5 * g), g)
    np.testing.assert_allclose(z1, 11784.50927, rtol=1e-9)
    assert target.num_modes == 2**16


def test_many_well_exact_samples(x64):
    target = de.many_well(4)
    xs = np.asarray(target.sample(jax.random.key(2), N))
    assert_iid_mean(xs, target.mean)
    assert_iid_variance(xs, target.variance)
    # Right-well probability by quadrature.
    f = lambda x: np.exp(-(x**4) + 6 * x**2 + 0.5 * x)
    p_right = integrate.quad(f, 0, np.inf)[0] / integrate.quad(f, -np.inf, np.inf)[0]
    assert_iid_probability(xs[:, 0] > 0, p_right)
    assert_iid_probability(xs[:, 2] > 0, p_right)
    # KS test of the first coordinate against the quadrature CDF (a fixed seed, loose level).
    grid = np.linspace(-4, 4, 20_001)
    cdf = np.cumsum(f(grid))
    cdf /= cdf[-1]
    ks = stats.kstest(xs[:, 0], lambda q: np.interp(q, grid, cdf))
    assert ks.pvalue > 1e-4


def test_double_well_marginal_is_normalized(x64):
    target = de.double_well_2d()
    assert target.event_shape == (2,)
    z = integrate.quad(lambda x: float(np.exp(target.marginal_log_density(jnp.asarray(x)))), -6, 6)[
        0
    ]
    np.testing.assert_allclose(z, 1.0, atol=1e-9)
    x = jnp.array([0.7, -0.3])
    np.testing.assert_allclose(target.energy(x), 0.7**4 - 6 * 0.7**2 - 0.5 * 0.7 + 0.5 * 0.09)


def _u2_log_z_by_erf(h=4.0):
    """U2 on [-h, h]²: the z2 integral is a Gaussian one, the z1 one is 1-D quadrature."""

    def inner(z1):
        w1 = np.sin(np.pi * z1 / 2)
        s = 0.4
        return s * np.sqrt(2 * np.pi) * (special.ndtr((h - w1) / s) - special.ndtr((-h - w1) / s))

    return np.log(integrate.quad(inner, -h, h, epsabs=1e-13)[0])


def test_rezende_u2_log_normalizer_semi_analytic(x64):
    np.testing.assert_allclose(de.rezende("u2").log_normalizer, _u2_log_z_by_erf(), atol=1e-8)


@pytest.mark.parametrize("name", ["u1_box", "u2", "u3", "u4"])
def test_rezende_ground_truth(x64, name):
    target = de.rezende(name)
    assert target.half_width == 4.0
    # Independent Monte Carlo estimate of log Z: uniform proposal on the box.
    u = jax.random.uniform(jax.random.key(3), (200_000, 2), minval=-4.0, maxval=4.0)
    w = np.asarray(jnp.exp(jax.vmap(target.log_density)(u))) * 64.0
    z_mc, se = w.mean(), w.std() / np.sqrt(w.size)
    assert abs(z_mc - np.exp(target.log_normalizer)) < 5 * se
    xs = target.sample(jax.random.key(4), 20_000)
    assert np.all(np.abs(np.asarray(xs)) <= 4.0)
    assert_iid_mean(xs, target.mean)
    assert_iid_variance(xs, target.variance)
    # Outside the box the density is zero.
    assert target.log_density(jnp.array([4.5, 0.0])) == -jnp.inf


def test_rezende_u1_box_is_the_old_boxed_u1(x64):
    """The boxed variant is unchanged: "u1_box" is "u1" with an explicit half-width 4."""
    a, b = de.rezende("u1_box"), de.rezende("u1", half_width=4.0)
    assert a == b and a.name == "u1" and a.half_width == 4.0
    x = jnp.array([1.5, -0.3])
    np.testing.assert_allclose(a.log_density(x), de.rezende("u1").log_density(x), rtol=1e-14)
    assert de.rezende("u1", half_width=8.0).log_density(jnp.array([8.5, 0.0])) == -jnp.inf


def test_rezende_u1_lives_on_r2(x64):
    """U1 on R^2: log Z by an independent polar quadrature to infinity, moments against exact
    samples, and a finite density far outside the old box."""
    target = de.rezende("u1")
    assert target.half_width is None
    assert np.isfinite(target.log_density(jnp.array([6.0, -5.0])))

    def u1(r, th):
        z1 = r * np.cos(th)
        lobes = np.logaddexp(-0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2)
        return r * np.exp(-0.5 * ((r - 2) / 0.4) ** 2 + lobes)

    z, _ = integrate.dblquad(u1, 0.0, 2 * np.pi, 0.0, np.inf, epsabs=1e-12, epsrel=1e-11)
    np.testing.assert_allclose(target.log_normalizer, np.log(z), atol=1e-8)
    # Quadrature moments vs an independent closed form: E[z1] = E[z2] = 0 by symmetry.
    np.testing.assert_allclose(target.mean, 0.0, atol=1e-10)
    xs = target.sample(jax.random.key(5), N)
    assert np.all(np.isfinite(np.asarray(xs)))
    assert np.any(np.abs(np.asarray(xs)) > 3.0)  # mass outside [-3, 3]^2 is reached
    assert_iid_mean(xs, target.mean)
    assert_iid_variance(xs, target.variance)
    # Radial law: P(r > 2.4) against the quadrature of the same density.
    r = np.linalg.norm(np.asarray(xs), axis=1)
    tail, _ = integrate.dblquad(u1, 0.0, 2 * np.pi, 2.4, np.inf, epsabs=1e-12)
    assert_iid_probability(r > 2.4, tail / z)


def test_planar_flow_reverse_kl_on_u1_is_finite():
    """The paper's experiment: a planar flow fitted by reverse KL to U1 on R^2 has finite losses
    (on the box, draws outside it gave infinite losses)."""
    import optax

    import driftax.flows as fl

    flow = fl.planar_flow(jax.random.key(0), 2, 4)
    _, losses = fl.fit_reverse_kl(
        flow,
        de.rezende("u1"),
        key=jax.random.key(1),
        optimizer=optax.adam(1e-2),
        num_steps=30,
        batch_size=64,
    )
    losses = np.asarray(losses["train"])
    assert np.all(np.isfinite(losses))
    assert losses[-5:].mean() < losses[:5].mean()


def test_rezende_energies_are_finite_with_logaddexp():
    x = jnp.array([3.9, -3.9])
    for name in ("u1", "u3", "u4"):
        lp, s = de.rezende(name).value_and_score(x)
        assert np.isfinite(lp) and np.all(np.isfinite(s))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: de.funnel(1), "`dim`"),
        (lambda: de.funnel(10, scale=-1.0), "`scale`"),
        (lambda: de.banana(1), "`dim`"),
        (lambda: de.banana(curvature=np.inf), "`curvature`"),
        (lambda: de.many_well(5), "`d` must be even"),
        (lambda: de.many_well(32, a=0.0), "`a`"),
        (lambda: de.rezende("u5"), "`name`"),
        (lambda: de.rezende("u1", half_width=0.0), "`half_width`"),
    ],
)
def test_bad_input(build, match):
    with pytest.raises(ValueError, match=match):
        build()
