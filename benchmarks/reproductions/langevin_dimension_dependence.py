"""Dimension and condition-number dependence of unadjusted Langevin samplers.

Papers: Li, Zhang & Liu (2022) "Sqrt(d) dimension dependence of Langevin Monte Carlo" (ICLR):
ULA reaches W2 error eps in O~(sqrt(d)/eps) steps, not O~(d); Yu, Karagulyan & Dalalyan (2024)
"Langevin Monte Carlo for strongly log-concave distributions: randomized midpoint revisited"
(and Shen & Lee 2019): the randomized midpoint discretization of kinetic Langevin needs fewer
gradients than ULA and than the Euler-type kinetic Langevin Monte Carlo (KLMC, Cheng et al. 2018)
when the condition number is large.

How it is checked.
(1) sqrt(d): on Gaussian targets the ULA iterates from a fixed start stay Gaussian, so W2 to the
target is exact in closed form along the per-eigendirection recursion
`m' = (1 - h lam) m`, `v' = (1 - h lam)^2 v + 2h`. That this is what `driftax.samplers.ULA`
does is checked first (20,000 chains, d = 4, per-coordinate mean and variance after 40 steps
within 4.5 standard errors). Then, for the standard Gaussian and the ill-conditioned Gaussian
(`de.ill_conditioned_gaussian(d, 10)`) started at 0, the fewest steps to reach W2 <= 0.1
(minimized over the step size) are computed for d = 10 ... 10^4 and a line is fit in log-log to
steps / log(W2_0 / eps): the O~ of the paper hides that factor, and from a fixed start the
initial distance W2_0 grows like sqrt(d) (the raw slope is reported too).
(2) Condition number: diagonal Gaussian in d = 8 with precisions log-spaced in [1, kappa],
started at x = (1, ..., 1); 2,000 chains of `ULA`, `RandomizedMidpoint` (kinetic) and KLMC
(the exponential-integrator kinetic Langevin with the force frozen over the step, written in
this script: driftax has no first-order kinetic kernel), each tuned over step size and friction;
W2 is estimated from the chains' per-coordinate means and variances (the target is diagonal),
bias-corrected for the finite number of chains; cost = gradients until the estimate stays below
eps = 0.1 for the rest of the run.

Claims (rows): the driftax ULA matches the exact recursion; fitted log-corrected slope in
[0.45, 0.55] for both Gaussians; at
kappa = 100 randomized midpoint needs fewer gradients than ULA and than KLMC.
Figure: steps vs d (log-log, fitted slopes) and gradients vs kappa per method.

Profiles: quick (kappa in {10, 100}, shorter step-size grids) and full (kappa in {10, 100, 1000},
finer grids, 16,000 chains).
"""

from __future__ import annotations

import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import driftax.energies as de
import driftax.samplers as ds

sys.path.insert(0, str(Path(__file__).parent))
from _common import Report, Row, main, save_figure  # noqa: E402

NAME = "langevin_dimension_dependence"
PAPER = "Li, Zhang & Liu (2022) sqrt(d) LMC; Yu, Karagulyan & Dalalyan (2024) randomized midpoint"

EPS = 0.1


# ----------------------------------------------------------------------------------------------
# (1) sqrt(d): the exact Gaussian recursion of ULA


def ula_moments(lam, h, n, m0):
    """Per-coordinate mean and variance of ULA after `n` steps on N(0, diag(1/lam)) from `m0`."""
    a = 1.0 - h * lam
    m = a**n * m0
    v_inf = 2.0 * h / (1.0 - a**2)
    v = v_inf * (1.0 - a ** (2 * n))
    return m, v


def steps_to_eps(lam, eps, hs, n_max=10**7):
    """Fewest ULA steps (over step sizes `hs`) with exact W2 <= eps from x0 = 0 on N(0, 1/lam)."""
    sigma = 1.0 / np.sqrt(lam)
    best = np.inf
    for h in hs:
        if np.any(h * lam >= 2.0):
            continue
        a = 1.0 - h * lam
        v_inf = 2.0 * h / (1.0 - a**2)
        bias2 = np.sum((np.sqrt(v_inf) - sigma) ** 2)
        if bias2 >= eps**2:
            continue

        def w2(n, a=a, v_inf=v_inf):
            v = v_inf * (1.0 - a ** (2 * n))
            return np.sqrt(np.sum((np.sqrt(v) - sigma) ** 2))

        lo, hi = 0, 1
        while w2(hi) > eps and hi < n_max:
            hi *= 2
        while hi - lo > 1:  # W2 decreases monotonically in n (variances increase to v_inf)
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if w2(mid) <= eps else (mid, hi)
        best = min(best, hi)
    return best


def check_ula_recursion(key, num_chains=20_000, n=40):
    target = de.ill_conditioned_gaussian(4, 10.0)
    lam = 1.0 / np.asarray(target.variance)
    h = 0.15
    m0 = np.ones(4)
    sampler = ds.ULA(step_size=h)

    def chain(k):
        def body(state, kk):
            state, _ = sampler.step(target, state, key=kk)
            return state, None

        state, _ = jax.lax.scan(body, sampler.init(target, jnp.asarray(m0)), jax.random.split(k, n))
        return state.position

    x = np.asarray(jax.jit(jax.vmap(chain))(jax.random.split(key, num_chains)), np.float64)
    m, v = ula_moments(lam, h, n, m0)
    z_mean = (x.mean(0) - m) / np.sqrt(v / num_chains)
    z_var = (x.var(0) - v) / (v * np.sqrt(2.0 / num_chains))
    return float(np.max(np.abs(np.concatenate([z_mean, z_var])))), x.mean(0), m, x.var(0), v


# ----------------------------------------------------------------------------------------------
# (2) condition number: chains of ULA, KLMC and the randomized midpoint


class KLMC(eqx.Module):
    """Kinetic Langevin Monte Carlo (Cheng et al. 2018): the underdamped SDE with the force
    frozen at the start of the step and everything else integrated exactly (1 gradient/step)."""

    step_size: jax.Array
    friction: jax.Array

    def step(self, energy, state, key):
        x, p, g = state
        h, gamma = self.step_size, self.friction
        e = jnp.exp(-gamma * h)
        c1 = (1.0 - e) / gamma
        c2 = (h - c1) / gamma
        var_x = (2.0 / gamma) * (h - 2.0 * c1 + (1.0 - e**2) / (2.0 * gamma))
        var_p = 1.0 - e**2
        cov = (1.0 - e) ** 2 / gamma
        k1, k2 = jax.random.split(key)
        z1, z2 = jax.random.normal(k1, x.shape), jax.random.normal(k2, x.shape)
        noise_p = jnp.sqrt(var_p) * z1
        noise_x = cov / jnp.sqrt(var_p) * z1 + jnp.sqrt(jnp.maximum(var_x - cov**2 / var_p, 0)) * z2
        x_new = x + c1 * p + c2 * g + noise_x
        p_new = e * p + c1 * g + noise_p
        return (x_new, p_new, energy.score(x_new))


def _moment_trace(make_sampler, kind, target, x0, key, num_chains, num_steps):
    """Per-step per-coordinate means and variances over `num_chains` chains."""

    @jax.jit
    def go(params, key):
        sampler = make_sampler(*params)

        def chain_init():
            if kind == "klmc":
                return (x0, jnp.zeros_like(x0), target.score(x0))
            return sampler.init(target, x0)

        def one_step(state, k):
            if kind == "klmc":
                return sampler.step(target, state, k)
            return sampler.step(target, state, key=k)[0]

        def position(state):
            return state[0] if kind == "klmc" else state.position

        states = jax.vmap(lambda _: chain_init())(jnp.arange(num_chains))

        def body(states, k):
            states = jax.vmap(one_step)(states, jax.random.split(k, num_chains))
            x = position(states)
            return states, (x.mean(0), x.var(0))

        _, (means, variances) = jax.lax.scan(body, states, jax.random.split(key, num_steps))
        return means, variances

    return go


def _w2_trace(means, variances, sigma, num_chains):
    # bias-corrected squared distance between the chains' diagonal Gaussian and the target (in
    # float64: a diverging step size's moments overflow float32 when squared; such a trace is
    # inf/NaN and never stays below the threshold)
    means = np.asarray(means, np.float64)
    variances = np.asarray(variances, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        w2 = _w2_trace_f64(means, variances, sigma, num_chains)
    return np.where(np.isfinite(w2), w2, np.inf)  # a NaN trace is not "below" anything


def _w2_trace_f64(means, variances, sigma, num_chains):
    m2 = means**2 - variances / num_chains
    s = np.sqrt(np.maximum(variances, 0))
    s2 = (s - sigma) ** 2 - sigma**2 / (2.0 * num_chains)
    return np.sqrt(np.maximum(np.sum(m2 + s2, axis=-1), 0.0))


def _first_stay_below(w2, eps):
    above = np.nonzero(w2 > eps)[0]
    if len(above) == 0:
        return 1
    last = above[-1]
    return np.inf if last == len(w2) - 1 else last + 2


def gradients_vs_kappa(kappa, key, quick):
    d = 8
    lam = np.logspace(0.0, np.log10(kappa), d)
    sigma = 1.0 / np.sqrt(lam)
    target = de.gaussian(np.zeros(d), 1.0 / lam)
    x0 = jnp.ones(d)
    num_chains = 2000 if quick else 16_000
    n_h = 4 if quick else 8
    frictions = [1.0, 2.0] if quick else [0.5, 1.0, 2.0, 4.0]
    kinetic_hs = np.geomspace(0.1, 1.0, n_h) / np.sqrt(kappa)
    methods = {
        # name: (factory, kind, gradients per step, step sizes, frictions)
        "ULA": (
            lambda h, g: ds.ULA(step_size=h),
            "ula",
            1,
            np.geomspace(0.3, 1.5, n_h) / kappa,
            [1.0],
        ),
        "KLMC": (lambda h, g: KLMC(step_size=h, friction=g), "klmc", 1, kinetic_hs, frictions),
        "randomized midpoint": (
            lambda h, g: ds.RandomizedMidpoint(step_size=h, friction=g),
            "rmp",
            2,
            kinetic_hs,
            frictions,
        ),
    }
    out = {}
    for i, (name, (factory, kind, per_step, hs, gammas)) in enumerate(methods.items()):
        # enough steps for the slowest direction to relax at the smallest useful step
        # enough time for the slowest direction (precision 1) to relax at the smallest step
        num_steps = int(np.ceil((8.0 if kind == "ula" else 14.0) / hs.min()))
        go = _moment_trace(factory, kind, target, x0, key, num_chains, num_steps)
        best, best_cfg = np.inf, None
        for j, h in enumerate(hs):
            for gamma in gammas:
                k = jax.random.fold_in(key, 1000 * i + 10 * j + int(4 * gamma))
                means, variances = go((jnp.asarray(h), jnp.asarray(gamma)), k)
                w2 = _w2_trace(np.asarray(means), np.asarray(variances), sigma, num_chains)
                steps = _first_stay_below(w2, EPS)
                if steps * per_step < best:
                    best, best_cfg = steps * per_step, (float(h), float(gamma))
        out[name] = {
            "gradients": float(best),
            "step_size": best_cfg and best_cfg[0],
            "friction": best_cfg and best_cfg[1],
        }
    return out


def _figure(dims, steps, slopes, kappas, grads, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, n in steps.items():
        a1.loglog(dims, n, "o-", label=f"{label}: slope {slopes[label]:.2f} (log-corrected)")
    ref = np.asarray(dims, float)
    first = next(iter(steps.values()))[0]
    a1.loglog(ref, first * np.sqrt(ref / ref[0]), "k:", label="slope 1/2")
    a1.set_xlabel("dimension d")
    a1.set_ylabel(f"ULA steps to W2 <= {EPS} (best step size)")
    a1.set_title("ULA: exact Gaussian recursion")
    a1.legend(fontsize=8)
    a1.grid(True, which="both", alpha=0.3)
    for name in next(iter(grads.values())):
        a2.loglog(kappas, [grads[k][name]["gradients"] for k in kappas], "s-", label=name)
    a2.set_xlabel("condition number kappa")
    a2.set_ylabel(f"gradients to W2 <= {EPS} (best tuning)")
    a2.set_title("diagonal Gaussian, d = 8 (chains)")
    a2.legend(fontsize=8)
    a2.grid(True, which="both", alpha=0.3)
    path = save_figure(fig, out, NAME, dpi=120)
    return str(path)


def run(out: Path, quick: bool, seed: int) -> Report:
    key = jax.random.key(seed)
    rows = []
    zmax, mean, m, var, v = check_ula_recursion(jax.random.fold_in(key, 0))
    rows.append(
        Row(
            claim="driftax ULA follows the exact Gaussian recursion (d = 4, kappa = 10, 40 steps)",
            reference="|z| <= 4.5 for every mean and variance",
            measured=f"max |z| = {zmax:.2f}",
            passed=bool(zmax <= 4.5),
        )
    )
    dims = [10, 30, 100, 300, 1000, 3000, 10_000]
    hs = np.geomspace(1e-4, 1.0, 400)
    steps, slopes = {}, {}
    raw_slopes = {}
    for label, kappa in [("N(0, I)", 1.0), ("ill-conditioned, kappa = 10", 10.0)]:
        n = [steps_to_eps(np.logspace(0.0, np.log10(kappa), d), EPS, hs) for d in dims]
        # O~(sqrt(d)/eps) hides log(W2_0 / eps); from x0 = 0, W2_0 = sqrt(sum sigma^2) ~ sqrt(d)
        w0 = [np.sqrt(np.sum(np.logspace(0.0, -np.log10(kappa), d))) for d in dims]
        corrected = np.asarray(n) / np.log(np.asarray(w0) / EPS)
        steps[label] = [int(v) for v in n]
        raw_slopes[label] = float(np.polyfit(np.log(dims), np.log(n), 1)[0])
        slopes[label] = float(np.polyfit(np.log(dims), np.log(corrected), 1)[0])
        rows.append(
            Row(
                claim=f"{label}: ULA steps to W2 <= {EPS} grow like sqrt(d) up to the log of the "
                "initial distance (d = 10 ... 10^4)",
                reference="slope of log(steps / log(W2_0/eps)) vs log d: 0.5 (Li et al.), "
                "accepted in [0.45, 0.55]",
                measured=f"slope {slopes[label]:.3f} (raw slope {raw_slopes[label]:.3f}; steps "
                f"{n[0]} -> {n[-1]})",
                passed=bool(0.45 <= slopes[label] <= 0.55),
            )
        )
    kappas = [10.0, 100.0] if quick else [10.0, 100.0, 1000.0]
    grads = {k: gradients_vs_kappa(k, jax.random.fold_in(key, int(k)), quick) for k in kappas}
    g = grads[100.0]
    rmp, ula, klmc = (g[n]["gradients"] for n in ("randomized midpoint", "ULA", "KLMC"))
    rows.append(
        Row(
            claim=f"kappa = 100, d = 8: randomized midpoint needs fewer gradients than ULA and "
            f"KLMC to reach W2 <= {EPS}",
            reference="RMP < min(ULA, KLMC) (Yu, Karagulyan & Dalalyan)",
            measured=f"RMP {rmp}, ULA {ula}, KLMC {klmc}",
            passed=bool(rmp < min(ula, klmc)),
        )
    )
    figure = _figure(dims, steps, slopes, kappas, grads, out)
    details = {
        "dims": dims,
        "steps": steps,
        "slopes_log_corrected": slopes,
        "raw_slopes": raw_slopes,
        "gradients": grads,
    }
    return Report(rows=rows, figure=figure, details=details)


if __name__ == "__main__":
    raise SystemExit(main(run, NAME, PAPER))
