"""Make the long-run reference values of the particle and LGCP targets (issue 6, item 4).

    python benchmarks/make_references.py --target all            # everything, writes the package data
    python benchmarks/make_references.py --target dw4 --quick    # a smoke run, writes to out/
    python benchmarks/make_references.py --target lj13-pf2       # LJ-13 with pair_factor=2 (out/ only)

CPU time of the shipped runs (2 shared cores, jax 0.10.2): DW-4 ~10 s, LJ-13 ~45 s, LGCP (grids 4
and 40) ~4 min, of which ~40 s is the 1600-dimensional Gaussian approximation. `--out DIR` writes
elsewhere; `--runs`, `--particles`, `--mcmc-steps`, `--target-ess`, `--grids` override the LGCP
settings and `--chains`, `--draws`, `--thin`, `--adapt`, `--burnin` the particle ones.

**DW-4 and LJ-13 reference samples** (`dw4_reference.npz`, `lj13_reference.npz`). Many independent
HMC chains (blackjax `hmc` kernel, identity metric, a fixed number of leapfrog steps and a step size
jittered uniformly in ±20 % at every transition), vectorised over chains with the whole loop
(adaptation, burn-in, thinned sampling) under ONE `jax.jit`:

1. the step size of each chain is adapted by dual averaging (blackjax
   `dual_averaging_adaptation`, target acceptance `--target-accept`) for `--adapt` transitions,
2. `--burnin` further transitions at the final (averaged) step size are discarded,
3. `--thin`·`--draws` transitions follow, of which every `--thin`-th state is stored.

Centre of mass: after every transition the position is projected back onto the zero-centre-of-mass
subspace (`target.remove_mean`). With an identity metric this is exact: the score has no
centre-of-mass component (translation invariance), so the centre of mass only random-walks with
the momentum noise and the Metropolis ratio does not depend on it; dropping it leaves an exact HMC
chain on the subspace. Chains start from a spread-out random (DW-4) or jittered-lattice (LJ-13)
configuration.

Diagnostics are stored with the samples: rank-normalised split R-hat, bulk and tail ESS (ArviZ) of
the energy, the mean interatomic distance, two single distances and (DW-4) the number of short
pairs, computed over the chains of STORED draws — an ESS close to the number of stored draws means
the thinning made them nearly independent.

**LGCP reference log Z** (`lgcp_reference.npz`). Tempered SMC in a *whitened* parameterisation.
A Gaussian approximation `q = N(m, S)` of the posterior is found first in float64: the Laplace
approximation by Newton's method, then the variational Gaussian of Opper & Archambeau (2009),
`S = (K⁻¹ + diag λ)⁻¹`, by a fixed-point iteration (the Laplace approximation is poor at 40×40:
empty cells make the posterior skewed). With `f = m + A z`, `A Aᵀ = S`, the identity

    log γ(m + A z) + log|det A| = C + log N(z; 0, I) + R(z),
    R(z) = ∇log γ(m)ᵀu − Σ_p [W_p (e^{u_p} − 1 − u_p) − ½ λ_p u_p²],   u = A z,  W = a·e^m,
    C = log γ(m) + log|det A| + (n/2) log 2π,

is exact for the LGCP (quadratic prior; Poisson terms `a·e^{m+u} = W e^u`), so
`log Z = C + log E_{N(0,I)}[e^{R(z)}]` and the SMC tempers `N(0, I)·e^{βR(z)}` from β = 0 to 1
(blackjax `adaptive_tempered_smc` kernel: ESS-adaptive β, systematic resampling, blackjax HMC moves
whose step size is adapted between stages toward acceptance 0.75). The whitening changes neither
the target distribution nor log Z (its Jacobian is part of the identity). Several independent
runs; the reference is their mean and its error the standard error across runs. The identity is
checked against `lgcp(grid).log_density` and the same SMC code path against independent
importance-sampling estimates on small grids in `tests/energies/test_bayes.py`; at every grid the
script also reports importance sampling from `q` (`is_log_z`, `is_log_z_se`, `is_ess`), the
Laplace value and the ELBO.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "driftax" / "energies" / "data"
QUICK_OUT = ROOT / "out" / "references"


# ==================================================================================================
# Particle systems: long HMC runs
# ==================================================================================================


PARTICLE_SETTINGS = {
    # chains x draws = stored samples; `thin` transitions between stored draws.
    "dw4": dict(chains=100, draws=100, thin=100, adapt=1000, burnin=4000, leapfrog=10),
    "lj13": dict(chains=100, draws=100, thin=40, adapt=1000, burnin=4000, leapfrog=20),
    # Not shipped: the ordered-pair convention of DEM / adjoint sampling, to compare with their
    # published reference statistics (written to out/ only).
    "lj13-pf2": dict(chains=50, draws=40, thin=40, adapt=1000, burnin=2000, leapfrog=20),
}
QUICK_PARTICLES = dict(chains=8, draws=20, thin=5, adapt=100, burnin=100)


def _initial_positions(target, key, num_chains):
    """Random starting configurations, centred."""
    n, d = target.n_particles, target.spatial_dim
    if target.spatial_dim == 2:  # DW-4: particles spread over a few pair-distance scales
        x = 3.0 * jax.random.normal(key, (num_chains, n * d))
    else:  # LJ: a jittered cubic lattice with spacing 1.1 (no overlapping particles)
        side = math.ceil(n ** (1 / d))
        grid = np.stack(np.meshgrid(*([np.arange(side)] * d), indexing="ij"), -1).reshape(-1, d)
        lattice = jnp.asarray(1.1 * grid[:n], jnp.float32).reshape(-1)
        x = lattice + 0.1 * jax.random.normal(key, (num_chains, n * d))
    return jax.vmap(target.remove_mean)(x)


def run_particle_hmc(target, *, key, chains, draws, thin, adapt, burnin, leapfrog, target_accept):
    """Run `chains` independent blackjax HMC chains on `target` (see the module docstring).

    **Returns:** dict with `positions` `(chains, draws, dim)`, `energies` `(chains, draws)`,
    `step_size` `(chains,)`, `acceptance` `(chains,)` (mean over the sampling phase).
    """
    import blackjax
    from blackjax.adaptation.step_size import dual_averaging_adaptation

    logdensity = target.log_density
    dim = target.event_shape[0]
    kernel = blackjax.hmc.build_kernel()
    inverse_mass = jnp.ones(dim)
    da_init, da_update, da_final = dual_averaging_adaptation(target_accept)

    def transition(state, key, step_size):
        k_jitter, k_move = jax.random.split(key)
        eps = step_size * jax.random.uniform(k_jitter, minval=0.8, maxval=1.2)
        state, info = kernel(k_move, state, logdensity, eps, inverse_mass, leapfrog)
        # Exact projection onto the zero-centre-of-mass subspace (module docstring).
        state = state._replace(position=target.remove_mean(state.position))
        return state, info.acceptance_rate

    def one_chain(key, x0):
        k_adapt, k_burn, k_draw = jax.random.split(key, 3)
        state = blackjax.hmc.init(x0, logdensity)

        def adapt_body(carry, k):
            state, da = carry
            state, acc = transition(state, k, jnp.exp(da.log_step_size))
            return (state, da_update(da, acc)), None

        (state, da), _ = jax.lax.scan(
            adapt_body, (state, da_init(jnp.asarray(0.05))), jax.random.split(k_adapt, adapt)
        )
        step_size = da_final(da)

        def burn_body(state, k):
            return transition(state, k, step_size)[0], None

        state, _ = jax.lax.scan(burn_body, state, jax.random.split(k_burn, burnin))

        def draw_body(state, k):
            state, acc = jax.lax.scan(
                lambda s, kk: transition(s, kk, step_size), state, jax.random.split(k, thin)
            )
            return state, (state.position, -state.logdensity, acc.mean())

        _, (xs, energies, acc) = jax.lax.scan(draw_body, state, jax.random.split(k_draw, draws))
        return xs, energies, step_size, acc.mean()

    k_init, k_chains = jax.random.split(key)
    x0 = _initial_positions(target, k_init, chains)
    run = jax.jit(jax.vmap(one_chain))
    xs, energies, step_size, acc = jax.block_until_ready(
        run(jax.random.split(k_chains, chains), x0)
    )
    return {
        "positions": np.asarray(xs),
        "energies": np.asarray(energies, np.float64) * target.temperature,
        "step_size": np.asarray(step_size),
        "acceptance": np.asarray(acc),
    }


def particle_statistics(target, positions):
    """Per-draw statistics of `(chains, draws, dim)` positions used for the diagnostics."""
    pos = np.asarray(positions, np.float64).reshape(*positions.shape[:2], target.n_particles, -1)
    i, j = np.triu_indices(target.n_particles, k=1)  # the pair order of `interatomic_distances`
    dist = np.linalg.norm(pos[..., i, :] - pos[..., j, :], axis=-1)
    stats = {
        "mean_distance": dist.mean(-1),
        "distance_01": dist[..., 0],
        "distance_last": dist[..., -1],
        "min_distance": dist.min(-1),
    }
    if target.spatial_dim == 2:  # DW-4: how many of the 6 pairs sit in the inner well (d < 4)
        stats["num_short_pairs"] = (dist < target.offset).sum(-1).astype(np.float64)
    return stats, dist


def diagnostics(series: dict[str, np.ndarray]) -> dict[str, float]:
    """Split R-hat (rank-normalised), bulk/tail ESS, mean and MCSE of `(chains, draws)` series."""
    import arviz as az

    out = {}
    for name, x in series.items():
        x = np.asarray(x, np.float64)
        out[f"rhat_{name}"] = float(az.rhat(x))
        out[f"ess_bulk_{name}"] = float(az.ess(x, method="bulk"))
        out[f"ess_tail_{name}"] = float(az.ess(x, method="tail"))
        out[f"mean_{name}"] = float(x.mean())
        out[f"sd_{name}"] = float(x.std())
        out[f"mcse_{name}"] = float(az.mcse(x, method="mean"))
    return out


def make_particles(name, *, quick, seed, out_dir, target_accept):
    import driftax.energies as de

    target = {"dw4": de.dw4, "lj13": de.lj13, "lj13-pf2": lambda: de.lj13(pair_factor=2)}[name]()
    if name not in ("dw4", "lj13"):
        out_dir = QUICK_OUT
    settings = dict(PARTICLE_SETTINGS[name])
    if quick:
        settings.update(QUICK_PARTICLES)
    print(f"[{name}] {settings}", flush=True)
    t0 = time.perf_counter()
    res = run_particle_hmc(
        target, key=jax.random.key(seed), target_accept=target_accept, **settings
    )
    seconds = time.perf_counter() - t0
    pos = res["positions"]
    stats, _ = particle_statistics(target, pos)
    diag = diagnostics({"energy": res["energies"], **stats})
    info = {
        **{f"num_{k}": v for k, v in settings.items()},
        "seed": seed,
        "target_accept": target_accept,
        "mean_step_size": float(res["step_size"].mean()),
        "min_step_size": float(res["step_size"].min()),
        "max_step_size": float(res["step_size"].max()),
        "mean_acceptance": float(res["acceptance"].mean()),
        "min_acceptance": float(res["acceptance"].min()),
        "seconds": seconds,
        "max_abs_centre_of_mass": float(
            np.abs(pos.reshape(*pos.shape[:2], target.n_particles, -1).mean(-2)).max()
        ),
    }
    print(f"[{name}] {seconds:.1f} s", flush=True)
    for k, v in {**info, **diag}.items():
        print(f"{k:>28}: {v:.6g}")
    path = out_dir / f"{name}_reference.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        samples=pos.reshape(-1, pos.shape[-1]).astype(np.float32),  # chain-major
        energies=res["energies"].reshape(-1).astype(np.float32),
        step_size=res["step_size"].astype(np.float32),
        acceptance=res["acceptance"].astype(np.float32),
        **{k: np.float64(v) for k, v in {**info, **diag}.items()},
    )
    print(f"[{name}] wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", flush=True)


# ==================================================================================================
# LGCP: tempered SMC from a variational Gaussian approximation
# ==================================================================================================


LGCP_GRIDS = (4, 40)  # the grids whose reference is stored; 4 is the one validated by IS in tests
LGCP_SETTINGS = {
    # per grid: independent runs, particles, MCMC steps per stage, leapfrog steps, IS samples
    4: dict(runs=8, particles=512, mcmc_steps=5, leapfrog=5, target_ess=0.5, is_samples=200_000),
    40: dict(runs=8, particles=1024, mcmc_steps=5, leapfrog=5, target_ess=0.5, is_samples=20_000),
}
QUICK_LGCP = dict(runs=2, particles=64, mcmc_steps=2, leapfrog=3, is_samples=2_000)


def _exp_remainder(u):
    """`e^u − 1 − u − u²/2`, accurate for small `|u|` (series) and large `|u|` (expm1)."""
    small = jnp.abs(u) < 0.1
    us = jnp.where(small, u, 0.0)
    series = us**3 * (1 / 6 + us * (1 / 24 + us * (1 / 120 + us * (1 / 720 + us * (1 / 5040)))))
    ul = jnp.where(small, 1.0, u)
    direct = jnp.expm1(ul) - ul - 0.5 * ul**2
    return jnp.where(small, series, direct)


def lgcp_gaussian_approximation(grid: int, *, tol: float = 1e-10, max_iter: int = 200) -> dict:
    """Gaussian approximations of the posterior of `driftax.energies.lgcp(grid)` (NumPy, float64).

    1. Laplace: Newton's method on `log γ(f) = log N(f; μ, K) + Σ_p [c_p f_p − a e^{f_p}]`.
    2. Variational Gaussian `q = N(m, S)` maximising the ELBO, whose optimum has the form
       `S = (K⁻¹ + diag λ)⁻¹` with `λ_p = a·e^{m_p + S_pp/2}` (Opper & Archambeau 2009); fixed
       point iteration from the Laplace solution: Newton in `m` for fixed `diag S`, then `λ`.

    The whitening uses the variational Gaussian: `f = m + A z` with `A = L_P⁻ᵀ` (upper
    triangular; `P = K⁻¹ + diag λ = L_P L_Pᵀ`, so `A Aᵀ = S`). Then, exactly,

        log γ(m + A z) + log|det A| = C + log N(z; 0, I) + R(z),
        R(z) = ∇log γ(m)ᵀu − Σ_p [W_p (e^{u_p} − 1 − u_p) − ½ λ_p u_p²],   u = A z,  W = a·e^m,
        C = log γ(m) + log|det A| + (n/2) log 2π,

    because the prior term is quadratic and the Poisson term is `a·e^{m+u} = W e^u`.

    **Returns:** dict with `mean` `m`, `sqrt_cov` `A`, `log_det_sqrt_cov`, `weights` `W`,
    `lam` `λ`, `grad` `∇log γ(m)`, `constant` `C`, `elbo` (`C + E[R]`, analytic), `log_z_laplace`,
    `vi_iterations`.
    """
    import scipy.linalg as sla

    from driftax.energies._bayes import LGCP_MEAN, bin_counts, lgcp_covariance, lgcp_points

    n = grid * grid
    k = lgcp_covariance(grid)
    c = bin_counts(lgcp_points(), grid).reshape(-1).astype(np.float64)
    a, mu = 1.0 / n, LGCP_MEAN
    log_2pi = math.log(2 * math.pi)
    chol_k = np.linalg.cholesky(k)
    half_log_det_k = float(np.sum(np.log(np.diag(chol_k))))
    k_inv = sla.cho_solve((chol_k, True), np.eye(n))
    k_inv = 0.5 * (k_inv + k_inv.T)

    def log_gamma(f):
        e = sla.solve_triangular(chol_k, f - mu, lower=True)
        return -0.5 * e @ e - half_log_det_k - 0.5 * n * log_2pi + np.sum(c * f - a * np.exp(f))

    def newton(m, s):
        """Maximise −½(m−μ)ᵀK⁻¹(m−μ) + Σ [c m − a e^{m + s/2}] (concave) in m."""
        for _ in range(100):
            ex = a * np.exp(m + 0.5 * s)
            step = sla.cho_solve(
                sla.cho_factor(k_inv + np.diag(ex), lower=True), -k_inv @ (m - mu) + c - ex
            )
            m = m + step
            if np.max(np.abs(step)) < tol:
                break
        return m

    def precision_factor(lam):
        chol_p = np.linalg.cholesky(k_inv + np.diag(lam))
        inv_chol_p = sla.solve_triangular(chol_p, np.eye(n), lower=True)
        return chol_p, inv_chol_p, np.sum(inv_chol_p**2, axis=0)  # diag of P⁻¹

    # 1. Laplace (s = 0 in `newton`).
    mode = newton(np.full(n, mu), np.zeros(n))
    w_mode = a * np.exp(mode)
    chol_p, _, s = precision_factor(w_mode)
    log_z_laplace = log_gamma(mode) - np.sum(np.log(np.diag(chol_p))) + 0.5 * n * log_2pi
    # 2. Variational Gaussian, from the Laplace solution.
    m = mode
    iterations = 0
    for _ in range(max_iter):
        iterations += 1
        m = newton(m, s)
        lam = a * np.exp(m + 0.5 * s)
        chol_p, inv_chol_p, s_new = precision_factor(lam)
        done = np.max(np.abs(s_new - s)) < tol
        s = s_new
        if done:
            break
    lam = a * np.exp(m + 0.5 * s)  # consistent with the final S up to `tol`
    chol_p, inv_chol_p, s = precision_factor(lam)
    w = a * np.exp(m)
    log_det_a = -float(np.sum(np.log(np.diag(chol_p))))
    constant = log_gamma(m) + log_det_a + 0.5 * n * log_2pi
    # E[u] = 0, E[u²] = S_pp, E[e^u] = e^{S_pp/2}.
    elbo = constant - np.sum(w * np.expm1(0.5 * s) - 0.5 * lam * s)
    return {
        "mean": m,
        "sqrt_cov": inv_chol_p.T,
        "log_det_sqrt_cov": log_det_a,
        "weights": w,
        "lam": lam,
        "grad": -k_inv @ (m - mu) + c - w,
        "constant": constant,
        "elbo": float(elbo),
        "log_z_laplace": float(log_z_laplace),
        "vi_iterations": iterations,
    }


def lgcp_remainder_fn(approx: dict, dtype=jnp.float64):
    """`R(z)` of [`lgcp_gaussian_approximation`][] as a JAX function of one whitened point `z`:
    `log γ(m + A z) + log|det A| = C + log N(z; 0, I) + R(z)` exactly."""
    a_mat = jnp.asarray(approx["sqrt_cov"], dtype)
    w = jnp.asarray(approx["weights"], dtype)
    half_w_minus_lam = jnp.asarray(0.5 * (approx["weights"] - approx["lam"]), dtype)
    g_white = jnp.asarray(approx["sqrt_cov"].T @ approx["grad"], dtype)

    def remainder(z):
        u = a_mat @ z
        # W(e^u − 1 − u) − ½λu² = W(e^u − 1 − u − u²/2) + ½(W − λ)u², each part accurate.
        return g_white @ z - jnp.sum(w * _exp_remainder(u) + half_w_minus_lam * u**2)

    return remainder


def _std_normal_log_density(z):
    return -0.5 * jnp.sum(z**2) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def make_smc_runner(
    remainder,
    dim,
    *,
    particles,
    mcmc_steps,
    leapfrog,
    target_ess=0.5,
    initial_step_size=0.3,
    target_accept=0.75,
    max_stages=500,
    dtype=jnp.float64,
):
    """A jitted `run(key)`: one tempered SMC run from `N(0, I)` to `N(0, I)·e^{R(z)}` with
    blackjax's adaptive tempered kernel and HMC moves; the step size is adapted between stages
    toward `target_accept`.

    **Returns:** (of `run`) dict with `log_evidence` (= log E[e^R], the SMC estimate), `num_stages`,
    `mean_acceptance`, `final_step_size`, `min_ess` (normalised ESS after reweighting, minimum over
    stages).
    """
    import blackjax
    from blackjax.smc import adaptive_tempered, resampling, tempered

    smc_kernel = adaptive_tempered.build_kernel(
        _std_normal_log_density,
        remainder,
        blackjax.hmc.build_kernel(),
        blackjax.hmc.init,
        resampling.systematic,
        target_ess,
    )

    def run(key):
        k_init, k_loop = jax.random.split(key)
        z0 = jax.random.normal(k_init, (particles, dim), dtype)
        state = tempered.init(z0)
        state = state._replace(
            weights=state.weights.astype(dtype), tempering_param=jnp.zeros((), dtype)
        )
        params_of = lambda eps: {  # noqa: E731
            "step_size": jnp.reshape(eps, (1,)),
            "inverse_mass_matrix": jnp.ones((1, dim), dtype),
            "num_integration_steps": jnp.full((1,), leapfrog),
        }

        def cond(carry):
            _, state, *_, stage = carry
            return (state.tempering_param < 1.0) & (stage < max_stages)

        def body(carry):
            key, state, eps, log_z, acc_sum, min_ess, stage = carry
            key, k_step = jax.random.split(key)
            state, info = smc_kernel(k_step, state, mcmc_steps, params_of(eps))
            acc = jnp.mean(info.update_info.acceptance_rate)
            eps = eps * jnp.exp(2.0 * (acc - target_accept))
            ess = 1.0 / jnp.sum(state.weights**2) / particles
            return (
                key,
                state,
                eps,
                log_z + info.log_likelihood_increment,
                acc_sum + acc,
                jnp.minimum(min_ess, ess),
                stage + 1,
            )

        init = (
            k_loop,
            state,
            jnp.asarray(initial_step_size, dtype),
            jnp.zeros((), dtype),
            jnp.zeros((), dtype),
            jnp.ones((), dtype),
            0,
        )
        _, state, eps, log_z, acc_sum, min_ess, stage = jax.lax.while_loop(cond, body, init)
        return {
            "log_evidence": log_z,
            "num_stages": stage,
            "mean_acceptance": acc_sum / stage,
            "final_step_size": eps,
            "min_ess": min_ess,
            "final_tempering": state.tempering_param,
        }

    return jax.jit(run)


def laplace_is_log_evidence(remainder, dim, *, key, num_samples, batch=2000, dtype=jnp.float64):
    """Importance sampling from `N(0, I)` (the Gaussian approximation in whitened coordinates):
    `log mean e^{R(z)}`, its delta-method standard error and the normalised weights' ESS."""
    batches = max(1, num_samples // batch)
    draw = jax.jit(lambda k: jax.vmap(remainder)(jax.random.normal(k, (batch, dim), dtype)))
    logw = np.concatenate([np.asarray(draw(k)) for k in jax.random.split(key, batches)])
    m = logw.max()
    w = np.exp(logw - m)
    log_mean = m + math.log(w.mean())
    se = w.std() / (w.mean() * math.sqrt(len(w)))
    ess = w.sum() ** 2 / np.sum(w**2)
    return log_mean, se, ess, len(w)


def lgcp_reference(
    grid, *, seed, runs, particles, mcmc_steps, leapfrog, target_ess, is_samples, dtype
):
    """The reference log Z of `lgcp(grid)`: the Gaussian approximation, `runs` independent SMC
    runs (see the module docstring) and the importance-sampling cross-check. Returns a flat dict."""
    t0 = time.perf_counter()
    approx = lgcp_gaussian_approximation(grid)
    t_lap = time.perf_counter() - t0
    dim = grid * grid
    remainder = lgcp_remainder_fn(approx, dtype)
    keys = jax.random.split(jax.random.key(seed + grid), runs + 1)
    estimates, per_run = [], []
    t1 = time.perf_counter()
    run = make_smc_runner(
        remainder,
        dim,
        particles=particles,
        mcmc_steps=mcmc_steps,
        leapfrog=leapfrog,
        target_ess=target_ess,
        dtype=dtype,
    )
    for r in range(runs):
        res = {k: float(v) for k, v in run(keys[r]).items()}
        per_run.append(res)
        estimates.append(approx["constant"] + res["log_evidence"])
        print(
            f"[lgcp {grid}] run {r}: log Z = {estimates[-1]:.4f} "
            f"({res['num_stages']:.0f} stages, acc {res['mean_acceptance']:.2f}, "
            f"eps {res['final_step_size']:.3f}, min ESS {res['min_ess']:.2f})",
            flush=True,
        )
    t_smc = time.perf_counter() - t1
    est = np.asarray(estimates)
    t2 = time.perf_counter()
    is_log, is_se, is_ess, is_n = laplace_is_log_evidence(
        remainder, dim, key=keys[-1], num_samples=is_samples, dtype=dtype
    )
    t_is = time.perf_counter() - t2
    out = {
        "grid": grid,
        "log_z": float(est.mean()),
        "log_z_se": float(est.std(ddof=1) / math.sqrt(runs)) if runs > 1 else float("nan"),
        "log_z_runs": est,
        "log_z_laplace": approx["log_z_laplace"],
        "elbo": approx["elbo"],
        "is_log_z": approx["constant"] + is_log,
        "is_log_z_se": is_se,
        "is_ess": is_ess,
        "is_samples": is_n,
        "num_runs": runs,
        "num_particles": particles,
        "num_mcmc_steps": mcmc_steps,
        "num_leapfrog": leapfrog,
        "target_ess": target_ess,
        "mean_num_stages": float(np.mean([r["num_stages"] for r in per_run])),
        "mean_acceptance": float(np.mean([r["mean_acceptance"] for r in per_run])),
        "min_ess": float(np.min([r["min_ess"] for r in per_run])),
        "vi_iterations": approx["vi_iterations"],
        "seconds_gaussian_approximation": t_lap,
        "seconds_smc": t_smc,
        "seconds_is": t_is,
        "seed": seed,
        "float64": float(dtype == jnp.float64),
    }
    print(
        f"[lgcp {grid}] log Z = {out['log_z']:.4f} ± {out['log_z_se']:.4f} (SMC, {runs} runs); "
        f"Laplace {out['log_z_laplace']:.4f}; ELBO {out['elbo']:.4f}; IS {out['is_log_z']:.4f} ± {is_se:.4f} "
        f"(ESS {is_ess:.0f}/{is_n}); {t_lap:.1f} + {t_smc:.1f} + {t_is:.1f} s",
        flush=True,
    )
    return out


def make_lgcp(*, quick, seed, out_dir, grids, float32):
    results = {}
    # float64 needs x64 switched on; float32 runs with it off (blackjax's ESS solver mixes in
    # Python floats, which must stay float32 then). The Gaussian approximation is NumPy float64.
    with jax.enable_x64(not float32):
        dtype = jnp.float32 if float32 else jnp.float64
        for grid in grids:
            settings = dict(LGCP_SETTINGS.get(grid, LGCP_SETTINGS[4]))
            if quick:
                settings.update(QUICK_LGCP)
            print(f"[lgcp {grid}] {settings}", flush=True)
            results[grid] = lgcp_reference(grid, seed=seed, dtype=dtype, **settings)
    path = out_dir / "lgcp_reference.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"grids": np.asarray(sorted(results), np.int64)}
    for grid, res in results.items():
        for k, v in res.items():
            payload[f"grid{grid}_{k}"] = np.asarray(v, np.float64)
    np.savez_compressed(path, **payload)
    print(f"[lgcp] wrote {path}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target", choices=["dw4", "lj13", "lgcp", "all", "lj13-pf2"], default="all"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run; writes to out/")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--target-accept", type=float, default=0.75)
    for k in ("chains", "draws", "thin", "adapt", "burnin"):
        parser.add_argument(f"--{k}", type=int, default=None, help="override (particles)")
    parser.add_argument("--grids", type=int, nargs="+", default=list(LGCP_GRIDS))
    parser.add_argument("--float32", action="store_true", help="LGCP SMC in float32")
    parser.add_argument("--runs", type=int, default=None, help="override (LGCP)")
    parser.add_argument("--particles", type=int, default=None, help="override (LGCP)")
    parser.add_argument("--mcmc-steps", type=int, default=None, help="override (LGCP)")
    parser.add_argument("--target-ess", type=float, default=None, help="override (LGCP)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="output folder")
    args = parser.parse_args()
    for k in ("runs", "particles", "mcmc_steps", "target_ess"):
        if getattr(args, k) is not None:
            for s in LGCP_SETTINGS.values():
                s[k] = getattr(args, k)
            QUICK_LGCP[k] = getattr(args, k)
    out_dir = args.out or (QUICK_OUT if args.quick else DATA)
    names = ["dw4", "lj13", "lgcp"] if args.target == "all" else [args.target]
    for k in ("chains", "draws", "thin", "adapt", "burnin"):
        if getattr(args, k) is not None:
            for s in PARTICLE_SETTINGS.values():
                s[k] = getattr(args, k)
            QUICK_PARTICLES[k] = getattr(args, k)
    for name in names:
        if name in PARTICLE_SETTINGS:
            make_particles(
                name,
                quick=args.quick,
                seed=args.seed,
                out_dir=out_dir,
                target_accept=args.target_accept,
            )
        elif name == "lgcp":
            make_lgcp(
                quick=args.quick,
                seed=args.seed,
                out_dir=out_dir,
                grids=args.grids,
                float32=args.float32,
            )


if __name__ == "__main__":
    main()
