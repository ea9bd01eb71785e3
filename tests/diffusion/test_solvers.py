"""Fixed-step solvers: conformance, convergence orders against diffrax, sample quality, bad input.

Sized (CPU): each solver's conformance checks (shape, finiteness, determinism, no retrace) run on
the compiled program of its sample-quality test, one program per solver."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.diffusion as dd
import driftax.energies as de
from driftax.diffusion._solve import _integrate

from .helpers import mmd2, mmd_null_band, small_mixture


def _dpm_solver_v3():
    """DPM-Solver-v3 on statistics of the registry's field (small_mixture on VP): the generic
    tests below use exactly that field and path."""
    path = dd.VP()
    field = de.NoisedGaussianMixture(small_mixture(), path)
    data = field.sample(jax.random.key(3), path.t_data, 32)
    key = jax.random.key(4)
    return dd.DPMSolverV3(
        dd.estimate_model_statistics(field.score, path, data, key=key, num_times=100)
    )


ODE_SOLVERS = [
    dd.Euler(),
    dd.Heun(),
    dd.DDIM(),
    dd.DPMSolverPP2M(),
    dd.DPMSolverPP3M(),
    dd.DPMSolverPP2S(),
    dd.DPMSolverPP3S(),
    dd.UniPC(),
    dd.IPNDM(),
    dd.DEIS(),
    _dpm_solver_v3(),
]
SDE_SOLVERS = [
    dd.EulerMaruyama(),
    dd.DDIM(eta=1.0),
    dd.Heun(churn=10.0),
    dd.PredictorCorrector(),
]
ALL_SOLVERS = ODE_SOLVERS + SDE_SOLVERS


def _name(s):
    return type(s).__name__ + ("-sde" if s.stochastic else "")


# ------------------------------------------------------------------------------ conformance
# (shapes, determinism and no retrace of every solver: in `test_samples_match_exact_mixture`,
# on the compiled program the sample-quality check needs anyway)


def test_integrate_returns_trajectory_and_stats():
    path = dd.VP()
    field = de.NoisedGaussianMixture(small_mixture(), path)
    x0 = path.prior_sample(jax.random.key(0), (5, 2))
    solver = dd.Heun()
    sol = dd.solve(
        solver, field.score, path, x0, num_steps=6, save_trajectory=True, full_output=True
    )
    assert sol.trajectory.shape == (7, 5, 2)
    np.testing.assert_array_equal(sol.trajectory[0], x0)
    np.testing.assert_allclose(
        sol.trajectory[-1], dd.solve(solver, field.score, path, x0, num_steps=6), rtol=1e-6
    )
    np.testing.assert_array_equal(sol.failed_step, -1)
    assert sol.num_field_evals == 12 and sol.ts.shape == (7,)


@pytest.mark.parametrize("solver", [dd.UniPC(), dd.EulerMaruyama()], ids=_name)
def test_every_parameterization_gives_the_same_result(solver, x64):
    path = dd.VP()
    field = de.NoisedGaussianMixture(small_mixture(), path)
    fields = {
        "score": field.score,
        "noise": field.noise,
        "data": field.denoise,
        "velocity": field.velocity,
    }
    x0 = path.prior_sample(jax.random.key(0), (4, 2))
    outs = {
        p: dd.solve(solver, f, path, x0, num_steps=8, parameterization=p, key=jax.random.key(2))
        for p, f in fields.items()
    }
    for p, out in outs.items():
        np.testing.assert_allclose(out, outs["score"], rtol=1e-7, atol=1e-7, err_msg=p)


# ------------------------------------------------------------------------ convergence order


@pytest.fixture(scope="module")
def ode_problem():
    """x_init from the exact law at t_noise and the diffrax Dopri8 (rtol = atol = 1e-12) answer."""
    with jax.enable_x64(True):
        path = dd.VP()
        field = de.NoisedGaussianMixture(small_mixture(), path)
        x0 = field.sample(jax.random.key(1), path.t_noise, 16)

        def vf(t, y, args):
            return jax.vmap(lambda z: field.velocity(t, z))(y)

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vf),
            diffrax.Dopri8(),
            path.t_noise,
            path.t_data,
            None,
            x0,
            stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-12),
            max_steps=20000,
        )
        return path, field, x0, sol.ys[0]


# (solver, expected order, step counts in the asymptotic regime)
ORDER_CASES = [
    (dd.Euler(), 1, (20, 40, 80)),
    (dd.Heun(), 2, (20, 40, 80)),
    (dd.DDIM(), 1, (20, 40, 80)),
    (dd.DPMSolverPP2M(), 2, (20, 40, 80)),
    (dd.DPMSolverPP3M(), 3, (20, 40, 80)),
    (dd.DPMSolverPP2S(), 2, (10, 20, 40)),  # 2 NFE/step: the same NFE range
    (dd.DPMSolverPP3S(), 3, (10, 20, 40)),  # 3 NFE/step
    (dd.UniPC(), 2, (20, 40, 80)),  # UniPC-2 with the corrector: ~3 measured, >= 2 required
]


@pytest.mark.parametrize(
    "solver,order,steps",
    ORDER_CASES,
    ids=lambda c: _name(c) if isinstance(c, dd.AbstractSolver) else "",
)
def test_convergence_order(solver, order, steps, ode_problem, x64):
    path, field, x0, ref = ode_problem
    errs = []
    for n in steps:
        x = dd.solve(solver, field.score, path, x0, num_steps=n)
        errs.append(float(jnp.mean(jnp.linalg.norm(x - ref, axis=-1))))
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert order - 0.2 <= slope <= order + 1.2, (errs, slope)


# One step of the exponential integrators against the update written out by hand (float64).
# With a data prediction D(lambda) that does not depend on x, the exact solution is
# x_t = (sigma_t / sigma_s) x_s + sigma_t * int_{lambda_s}^{lambda_t} e^lambda D(lambda) dlambda,
# and these solvers of order k are exact when D is a polynomial of degree k - 1 in lambda
# (DPM-Solver++(2M) is not: the paper's update approximates phi_2 by -phi_1 / 2).


def _poly_data(path, coefs):
    def d_of_lam(lam):
        return sum(c * lam**i for i, c in enumerate(coefs))

    def field(t, x):
        return jnp.full_like(x, d_of_lam(path.half_log_snr(t)))

    def exact(x, t0, t1):
        # antiderivative of e^lam * lam^i: e^lam * sum_j (-1)^j i!/(i-j)! lam^(i-j)
        def prim(lam):
            total = 0.0
            for i, c in enumerate(coefs):
                term, fact = 0.0, 1.0
                for j in range(i + 1):
                    term += (-1) ** j * fact * lam ** (i - j)
                    fact *= i - j
                total += c * term
            return jnp.exp(lam) * total

        l0, l1 = path.half_log_snr(t0), path.half_log_snr(t1)
        return path.sigma(t1) / path.sigma(t0) * x + path.sigma(t1) * (prim(l1) - prim(l0))

    return d_of_lam, field, exact


@pytest.mark.parametrize(
    "solver,degree",
    [
        (dd.DPMSolverPP3M(lower_order_final=False), 2),
        (dd.DPMSolverPP2S(), 1),
        (dd.DPMSolverPP3S(), 2),
    ],
    ids=lambda c: _name(c) if isinstance(c, dd.AbstractSolver) else str(c),
)
def test_one_step_exact_for_polynomial_data_prediction(solver, degree, x64):
    path = dd.VP()
    ts = jnp.array([1.0, 0.8, 0.55, 0.3])  # unequal log-SNR steps
    x = jnp.array([0.4, -1.2])
    lam = path.half_log_snr(ts)

    def step_error(coefs):
        d_of_lam, field, exact = _poly_data(path, coefs)
        model = dd.ParameterizedField(field=field, path=path, parameterization="data")
        state = solver.init(model, ts[2], x)
        if state is not None:  # multistep: the exact history, most recent first
            state = jnp.stack([jnp.full(2, d_of_lam(lam[1 - j])) for j in range(state.shape[0])])
        x1, _ = solver.step(model, ts, 2, x, state, key=None)
        return float(jnp.max(jnp.abs(x1 - exact(x, ts[2], ts[3]))))

    coefs = [0.3, -0.7, 0.2, 0.1]
    assert step_error(coefs[: degree + 1]) < 1e-12
    assert step_error(coefs[: degree + 2]) > 1e-4  # not exact one degree up: the test has power


def test_dpmsolverpp3m_step_matches_written_out_formula(x64):
    """DPM-Solver++(3M), one step with a full history on a mixture field, against the update of
    Lu et al. (2022b) written out: D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1),
    D2 = (D1_0 - D1_1)/(r0 + r1), x_t = (s_t/s_0) x - a_t phi1 D0 + a_t phi2 D1 - 2 a_t phi3 D2.

    D2 as defined estimates h^2 D''/2, while the exact quadratic term is -a_t phi3 h^2 D'' (see
    the polynomial test above): hence the factor 2. The published code's `- phi3 * D2` makes the
    method second order (measured slope ~1.95 on this mixture with 20-160 steps)."""
    path = dd.VP()
    field = de.NoisedGaussianMixture(small_mixture(), path)
    model = dd.ParameterizedField(field=field.score, path=path, parameterization="score")
    ts = jnp.array([1.0, 0.7, 0.45, 0.3, 0.2])
    x = jnp.array([0.7, -0.4])
    hist_x = [jnp.array([1.1, 0.3]), jnp.array([-0.5, 0.9])]  # any points: the formula is affine
    m0 = field.denoise(ts[2], x)
    m1 = field.denoise(ts[1], hist_x[0])
    m2 = field.denoise(ts[0], hist_x[1])
    solver = dd.DPMSolverPP3M(lower_order_final=False)
    x1, new_state = solver.step(model, ts, 2, x, jnp.stack([m1, m2]), key=None)
    lam = np.asarray(path.half_log_snr(ts))
    h, h0, h1 = lam[3] - lam[2], lam[2] - lam[1], lam[1] - lam[0]
    r0, r1 = h0 / h, h1 / h
    d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi1 = np.expm1(-h)
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    a_t, s_t, s_0 = path.alpha(ts[3]), path.sigma(ts[3]), path.sigma(ts[2])
    expected = (s_t / s_0) * x - a_t * phi1 * m0 + a_t * phi2 * d1 - 2.0 * a_t * phi3 * d2
    np.testing.assert_allclose(x1, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(new_state, jnp.stack([m0, m1]), rtol=1e-14)


def test_singlestep_nfe_accounting():
    path = dd.VP()
    field = de.NoisedGaussianMixture(small_mixture(), path)
    x0 = path.prior_sample(jax.random.key(0), (3, 2))
    for solver, order in [(dd.DPMSolverPP2S(), 2), (dd.DPMSolverPP3S(), 3)]:
        assert solver.order == order and solver.evals_per_step == order
        sol = dd.solve(
            solver, field.score, path, x0, num_steps=1, full_output=True
        )  # NFE = order: allowed
        assert sol.num_field_evals == order and np.all(np.isfinite(sol.x))


# --------------------------------------------------------------------------- sample quality


@pytest.fixture(scope="module")
def mmd_setup():
    path = dd.VP()
    field = de.NoisedGaussianMixture(small_mixture(), path)
    n, bw = 400, 1.0

    def exact_data(key, m):
        return field.sample(key, path.t_data, m)

    mean, sd = mmd_null_band(exact_data, n, bw, key=jax.random.key(10))
    x_init = field.sample(jax.random.key(11), path.t_noise, n)
    reference = exact_data(jax.random.key(12), n)
    return path, field, x_init, reference, bw, mean + 5 * sd


@pytest.mark.parametrize(
    "solver,num_steps",
    [(s, 40) for s in ODE_SOLVERS]
    + [
        (dd.EulerMaruyama(), 400),
        (dd.DDIM(eta=1.0), 200),
        (dd.Heun(churn=10.0), 60),
        (dd.PredictorCorrector(), 200),
    ],
    ids=lambda c: _name(c) if isinstance(c, dd.AbstractSolver) else str(c),
)
def test_samples_match_exact_mixture(solver, num_steps, mmd_setup):
    """Every solver (conformance and sample quality on ONE compiled program per solver): the
    output has the batch's shape and is finite, a second call with the same shapes does not
    retrace, the same key gives the same output, and the samples pass the MMD band."""
    path, field, x_init, reference, bw, band = mmd_setup
    key = jax.random.key(5)
    x = dd.solve(solver, field.score, path, x_init, num_steps=num_steps, key=key)
    before = eqx.debug.get_num_traces(_integrate)
    x2 = dd.solve(solver, field.score, path, x_init + 0.1, num_steps=num_steps, key=key)
    x3 = dd.solve(solver, field.score, path, x_init, num_steps=num_steps, key=key)
    assert eqx.debug.get_num_traces(_integrate) == before, "second call retraced"
    assert x.shape == x_init.shape and x2.shape == x_init.shape
    np.testing.assert_array_equal(x, x3)
    assert np.all(np.isfinite(x))
    assert float(mmd2(x, reference, bw)) < band


def test_mmd_check_has_power(mmd_setup):
    """A visibly wrong sampler (Euler, 3 steps) fails the band the solvers pass."""
    path, field, x_init, reference, bw, band = mmd_setup
    x = dd.solve(dd.Euler(), field.score, path, x_init, num_steps=3, schedule="uniform")
    assert float(mmd2(x, reference, bw)) > band


# ------------------------------------------------------------------------------- bad input


def test_bad_input():
    path = dd.VP()
    field = de.NoisedGaussianMixture(small_mixture(), path)
    x0 = jnp.zeros((3, 2))
    solver = dd.DPMSolverPP2M()
    with pytest.raises(ValueError, match="monotone"):
        dd.solve(solver, field.score, path, x0, ts=jnp.array([1.0, 0.5, 0.7, 0.1]))
    with pytest.raises(ValueError, match="domain"):
        dd.solve(solver, field.score, path, x0, ts=jnp.array([1.5, 0.5, 0.1]))
    with pytest.raises(ValueError, match="order 3"):
        dd.solve(dd.DPMSolverPP3M(), field.score, path, x0, num_steps=2)
    with pytest.raises(ValueError, match="parameterization"):
        dd.solve(solver, field.score, path, x0, num_steps=5, parameterization="eps")
    with pytest.raises(ValueError, match="key"):
        dd.solve(dd.EulerMaruyama(), field.score, path, x0, num_steps=5)
    with pytest.raises(ValueError, match="x_init"):
        dd.solve(solver, field.score, path, x0.at[0, 0].set(jnp.nan), num_steps=5)
    with pytest.raises(ValueError, match="shape"):
        dd.solve(solver, lambda t, x: jnp.zeros(3), path, x0, num_steps=5)
    with pytest.raises(TypeError, match="solver"):
        dd.solve("euler", field.score, path, x0, num_steps=5)
    with pytest.raises(ValueError, match="num_steps"):
        dd.solve(solver, field.score, path, x0)
    with pytest.raises(ValueError, match="alpha"):
        dd.solve(dd.Euler(), lambda t, x: -x, dd.LinearInterpolant(), x0, num_steps=5)
    with pytest.raises(ValueError, match="solver_order"):
        dd.UniPC(solver_order=5)
    with pytest.raises(ValueError, match="r1"):
        dd.DPMSolverPP2S(r1=1.5)


def test_non_finite_field_is_reported():
    path = dd.VP()
    field = de.NoisedGaussianMixture(small_mixture(), path)

    def bad(t, x):  # blows up for one example after the first steps
        s = field.score(t, x)
        return jnp.where((t < 0.5) & (x[0] > 0), jnp.nan, s)

    x0 = jnp.array([[1.0, 0.0], [-1.0, 0.0], [-2.0, 1.0]])
    sol = dd.solve(dd.Euler(), bad, path, x0, num_steps=10, schedule="uniform", full_output=True)
    failed = np.asarray(sol.failed_step)
    assert failed[0] >= 0 and sol.num_failed >= 1
    with pytest.raises(RuntimeError, match="non-finite"):
        dd.solve(dd.Euler(), bad, path, x0, num_steps=10, schedule="uniform")


class _ShrinkCorrector(dd.AbstractCorrector):
    """A test corrector: moves `x` half-way to the model's denoised point (deterministic)."""

    num_steps: int = eqx.field(default=1, static=True)

    def correct(self, model, t, x, *, key):
        return 0.5 * (x + model.denoise(t, x))


def test_predictor_corrector_takes_any_corrector_subclass(x64):
    """`PredictorCorrector` accepts any `AbstractCorrector` and applies it after each predictor
    step; other objects are refused with a clear error."""
    path = dd.VP()
    field = de.NoisedGaussianMixture(small_mixture(), path)
    x0 = jnp.ones((3, 2))
    ts = dd.time_grid(path, 1, "uniform")
    pc = dd.PredictorCorrector(predictor=dd.Euler(), corrector=_ShrinkCorrector())
    assert pc.evals_per_step == 2
    got = dd.solve(pc, field.score, path, x0, ts=ts, key=jax.random.key(0))
    euler = dd.solve(dd.Euler(), field.score, path, x0, ts=ts)
    t1 = ts[-1]
    want = jax.vmap(lambda x: 0.5 * (x + field.denoise(t1, x)))(euler)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="AbstractCorrector"):
        dd.PredictorCorrector(corrector=dd.Euler())
