"""iPNDM, DEIS and the coefficient-table loop of `solve`: orders against diffrax, exactness on
polynomial noise predictions, the table loop against the solvers' own `step`, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.diffusion as dd
import driftax.energies as de
from driftax.diffusion._fewstep import _scan_table, table_form
from driftax.diffusion._solve import _integrate

from .helpers import small_mixture
from .test_solvers import ode_problem  # noqa: F401  (the module-scoped diffrax reference)

TABLE_SOLVERS = [
    dd.Euler(),
    dd.DDIM(),
    dd.DPMSolverPP2M(),
    dd.DPMSolverPP3M(),
    dd.IPNDM(),
    dd.IPNDM(max_order=2, lower_order_final=True),
    dd.DEIS(),
]


def _name(s):
    return repr(s)


@pytest.mark.slow
@pytest.mark.xdist_group("fewstep_order")  # one worker builds `ode_problem` once
@pytest.mark.parametrize(
    "solver,order,steps",
    [
        (dd.IPNDM(), 2, (40, 80, 160)),  # fixed AB weights: order 2 off rho-uniform grids
        (dd.DEIS(max_order=2), 2, (20, 40, 80)),
        (dd.DEIS(), 3, (40, 80, 160)),
    ],
    ids=lambda c: _name(c) if isinstance(c, dd.AbstractSolver) else "",
)
def test_convergence_order(solver, order, steps, ode_problem, x64):  # noqa: F811
    """Global order against the diffrax Dopri8 (rtol = atol = 1e-12) answer on the quadratic
    grid (the first steps, taken with lower orders while the history fills, then sit where the
    field is nearly linear, so the warm-up does not cap the order)."""
    path, field, x0, ref = ode_problem
    errs = []
    for n in steps:
        x = dd.solve(solver, field.score, path, x0, num_steps=n, schedule="quadratic")
        errs.append(float(jnp.mean(jnp.linalg.norm(x - ref, axis=-1))))
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert order - 0.2 <= slope <= order + 1.2, (errs, slope)


@pytest.mark.parametrize("solver", TABLE_SOLVERS, ids=_name)
def test_table_loop_matches_step(solver, x64):
    """`solve` runs linear multistep solvers from a NumPy coefficient table; the generic loop
    calls the solver's own `step`: the two agree to round-off, on a VP path and on the linear
    interpolant (alpha = 0 at the noise end: the first step is DDIM's)."""
    cases = [
        (dd.VP(), "score", "quadratic"),
        (dd.LinearInterpolant(), "velocity", "uniform"),
    ]
    for path, param, sched in cases:
        field = de.NoisedGaussianMixture(small_mixture(), path)
        f = field.score if param == "score" else field.velocity
        x0 = field.sample(jax.random.key(3), path.t_noise, 6)
        model = dd.ParameterizedField(field=f, path=path, parameterization=param)
        x = dd.solve(solver, f, path, x0, num_steps=9, schedule=sched, parameterization=param)
        ref = _integrate(solver, model, x0, None, None, sched, 9, False, True)[0]
        np.testing.assert_allclose(x, ref, rtol=1e-11, atol=1e-11)
        assert table_form(solver) is not None


def test_table_loop_is_shared_and_does_not_retrace():
    """Solvers with the same history length share the compiled loop; a second call with the
    same shapes does not retrace."""
    path = dd.VP()
    field = de.NoisedGaussianMixture(small_mixture(), path)
    x0 = path.prior_sample(jax.random.key(0), (5, 2))
    dd.solve(dd.DEIS(), field.score, path, x0, num_steps=6)
    before = eqx.debug.get_num_traces(_scan_table)
    dd.solve(dd.DPMSolverPP3M(), field.score, path, x0 + 1.0, num_steps=6)  # history 2 as well
    dd.solve(dd.DEIS(), field.score, path, x0, num_steps=6)
    assert eqx.debug.get_num_traces(_scan_table) == before
    # a stochastic DDIM or a multi-stage solver has no table form
    assert table_form(dd.DDIM(eta=1.0)) is None and table_form(dd.Heun()) is None


def _poly_noise(path, coefs, var):
    """A noise prediction that is a polynomial in `var(t)` and does not depend on x, and the
    exact flow of `dy/drho = eps` (y = x/alpha, rho = sigma/alpha)."""

    def eps_of(t):
        v = var(t)
        return sum(c * v**i for i, c in enumerate(coefs))

    def field(t, x):
        return jnp.full_like(x, eps_of(t))

    return eps_of, field


@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_step_exact_for_polynomial_noise(order, x64):
    """On the EDM path (alpha = 1, sigma = t, so rho = t), a DEIS step of order k with its exact
    history integrates a noise prediction of degree k - 1 in t exactly; one degree up it does
    not (the test has power)."""
    path = dd.EDM()
    ts = jnp.array([5.0, 3.1, 2.0, 1.2])  # unequal steps
    x = jnp.array([0.4, -1.2])
    solver = dd.DEIS(max_order=order)

    def step_error(coefs):
        eps_of, field = _poly_noise(path, coefs, lambda t: t)
        model = dd.ParameterizedField(field=field, path=path, parameterization="noise")
        hist = jnp.stack([jnp.full(2, eps_of(ts[1 - j])) for j in range(order - 1)] or [x])[
            : order - 1
        ]
        x1, _ = solver.step(model, ts, 2, x, hist, key=None)
        # exact: x(t1) = x(t0) + int_{t0}^{t1} eps(t) dt
        antider = lambda t: sum(c * t ** (i + 1) / (i + 1) for i, c in enumerate(coefs))  # noqa: E731
        return float(jnp.max(jnp.abs(x1 - (x + antider(ts[3]) - antider(ts[2])))))

    coefs = [0.3, -0.7, 0.2, 0.1]
    assert step_error(coefs[:order]) < 1e-12
    assert step_error(coefs[: order + 1]) > 1e-4


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ipndm_step_exact_on_equal_steps(order, x64):
    """iPNDM's fixed weights are the Adams–Bashforth ones: exact for a noise prediction of degree
    k - 1 in rho on steps equal in rho (EDM path, uniform grid), not one degree up."""
    path = dd.EDM()
    ts = jnp.array([6.0, 5.0, 4.0, 3.0, 2.0])
    x = jnp.array([0.4, -1.2])
    solver = dd.IPNDM(max_order=order)

    def step_error(coefs):
        eps_of, field = _poly_noise(path, coefs, lambda t: t)
        model = dd.ParameterizedField(field=field, path=path, parameterization="noise")
        hist = jnp.stack([jnp.full(2, eps_of(ts[2 - j])) for j in range(3)])[: order - 1]
        x1, _ = solver.step(model, ts, 3, x, hist, key=None)
        antider = lambda t: sum(c * t ** (i + 1) / (i + 1) for i, c in enumerate(coefs))  # noqa: E731
        return float(jnp.max(jnp.abs(x1 - (x + antider(ts[4]) - antider(ts[3])))))

    coefs = [0.3, -0.7, 0.2, 0.1, 0.05]
    assert step_error(coefs[:order]) < 1e-12
    assert step_error(coefs[: order + 1]) > 1e-4


def test_first_order_members_are_ddim(x64):
    """iPNDM and DEIS of order 1 are DDIM."""
    path = dd.VP()
    field = de.NoisedGaussianMixture(small_mixture(), path)
    x0 = field.sample(jax.random.key(0), path.t_noise, 4)
    want = dd.solve(dd.DDIM(), field.score, path, x0, num_steps=7, schedule="log_snr")
    for solver in (dd.IPNDM(max_order=1), dd.DEIS(max_order=1)):
        got = dd.solve(solver, field.score, path, x0, num_steps=7, schedule="log_snr")
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_bad_input():
    path = dd.VP()
    field = de.NoisedGaussianMixture(small_mixture(), path)
    x0 = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match="max_order"):
        dd.IPNDM(max_order=5)
    with pytest.raises(ValueError, match="max_order"):
        dd.DEIS(max_order=4)
    with pytest.raises(ValueError, match="order 4"):
        dd.solve(dd.IPNDM(), field.score, path, x0, num_steps=3)
