"""Mean-field underdamped Langevin dynamics: how the N-particle, step-h algorithm's error scales
in N and h, on a case with a known answer.

Paper: Fu & Wilson (2024) "Mean-field underdamped Langevin dynamics and its spacetime
discretization" (ICML). The paper bounds the distance (total variation) between the law of
the N-particle algorithm with step h and the minimizer of the functional by a propagation-of-
chaos term that falls like N^{-1/2} and a time-discretization term that falls with h; it
reports no numbers. Here the two scalings are measured, not the constants.

The case: `F(μ) = KSD²(μ ‖ π)`, the kernel Stein discrepancy (IMQ kernel, bandwidth 1) to the
standard Gaussian π in 2-D, minimized by driftax's `mean_field_langevin(functional="ksd")` at
temperature 0 (friction 1). Its minimizer is π itself (KSD = 0 exactly there), so the error of
the particles' law is known without a reference sampler.

- **Space (N).** Particles start from N(2, 0.5²) and run to t = 30 (h = 0.1), long enough to
  reach a stationary configuration. The error is `KSD(μ_N)` of the final particles (the
  distance of their empirical law to π in the functional's own metric), for N = 4 … 64, several
  seeds. The slope of log KSD on log N (ordinary least squares over all seeds and N; standard
  error from the regression) is compared with the paper's N^{-1/2}: the claim passes if the
  error falls at least that fast (slope ≤ −0.5 within 2 standard errors).
- **Time (h).** The same start with N = 32, run to t = 4 with h = 0.2 … 0.025, against a
  reference with h = 0.003125 (temperature 0 makes the dynamics deterministic, so particle i of
  one run couples to particle i of the reference). The error is the root-mean-square particle
  distance at t = 4 (an upper bound on the 2-Wasserstein distance between the two empirical
  laws). The scheme freezes the force over each step (exact Ornstein–Uhlenbeck velocity update,
  then a position drift), a first-order scheme: the claim passes if the slope is 1 within 2
  standard errors (seeds give the spread).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import driftax as dx
import driftax.samplers as ds
from driftax.samplers._particles._mean_field import ksd_squared

sys.path.insert(0, str(Path(__file__).parent))
from _common import Report, Row, main, save_figure  # noqa: E402

NAME = "mean_field_langevin"
PAPER = (
    "Fu & Wilson (2024), Mean-field underdamped Langevin dynamics and its spacetime discretization"
)


def _start(n: int, seed: int):
    return 2.0 + 0.5 * jax.random.normal(jax.random.key(seed), (n, 2))


def _slope(x, y):
    """OLS slope of log y on log x and its standard error."""
    coef, cov = np.polyfit(np.log(x), np.log(y), 1, cov=True)
    return float(coef[0]), float(np.sqrt(cov[0, 0]))


def run(out: Path, quick: bool, seed: int) -> Report:
    target = dx.energies.gaussian(jnp.zeros(2))
    key = jax.random.key(seed)
    seeds = [seed * 100 + s for s in range(3 if quick else 8)]
    ns = [4, 8, 16, 32, 64] if quick else [4, 8, 16, 32, 64, 128]
    hs = [0.2, 0.1, 0.05, 0.025]
    h_ref = 0.003125

    def mfl(x0, h, t):
        return ds.mean_field_langevin(
            x0, key=key, num_steps=int(round(t / h)), step_size=h, functional="ksd",
            energy=target, friction=1.0, temperature=0.0, bandwidth=1.0,
        )  # fmt: skip

    # space: KSD of the stationary particles vs N
    n_all, ksd_all = [], []
    for n in ns:
        for s in seeds:
            x = mfl(_start(n, s), 0.1, 30.0)
            n_all.append(n)
            ksd_all.append(float(jnp.sqrt(ksd_squared(target, x, 1.0))))
    ksd_iid = [
        float(jnp.sqrt(ksd_squared(target, jax.random.normal(jax.random.key(s), (n, 2)), 1.0)))
        for n in ns
        for s in seeds
    ]
    slope_n, se_n = _slope(n_all, ksd_all)
    slope_iid, se_iid = _slope(n_all, ksd_iid)

    # time: RMS particle distance at t = 4 vs a fine reference
    h_all, err_all = [], []
    for s in seeds:
        x0 = _start(32, s)
        ref = mfl(x0, h_ref, 4.0)
        for h in hs:
            x = mfl(x0, h, 4.0)
            h_all.append(h)
            err_all.append(float(jnp.sqrt(jnp.mean(jnp.sum((x - ref) ** 2, axis=-1)))))
    slope_h, se_h = _slope(h_all, err_all)

    rows = [
        Row(
            claim="space discretization: the N-particle law's error (KSD to the Gaussian "
            "target at stationarity, temperature 0) falls at least like N^-1/2",
            reference="slope <= -0.5 (propagation of chaos, TV ~ N^-1/2)",
            measured=f"slope {slope_n:.2f} ± {se_n:.2f} (N = {ns[0]}..{ns[-1]}; i.i.d. draws "
            f"from the target: {slope_iid:.2f} ± {se_iid:.2f})",
            passed=slope_n <= -0.5 + 2 * se_n,
        ),
        Row(
            claim="time discretization: the error at a fixed time falls like h (first order)",
            reference="slope 1",
            measured=f"slope {slope_h:.2f} ± {se_h:.2f} (h = {hs[-1]}..{hs[0]}, N = 32, "
            f"t = 4, vs h = {h_ref})",
            passed=abs(slope_h - 1.0) <= 2 * se_h,
        ),
    ]
    details = {
        "N": n_all, "ksd": ksd_all, "ksd_iid": ksd_iid, "h": h_all, "rms_error": err_all,
        "slope_N": [slope_n, se_n], "slope_N_iid": [slope_iid, se_iid], "slope_h": [slope_h, se_h],
    }  # fmt: skip
    figure = None
    try:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 3.6))
        ax = fig.subplots(1, 2)
        ax[0].loglog(n_all, ksd_all, "o", label="mean-field Langevin")
        ax[0].loglog(n_all, ksd_iid, "x", label="i.i.d. from target")
        ax[0].set(xlabel="N", ylabel="KSD", title=f"space: slope {slope_n:.2f}")
        ax[0].legend()
        ax[1].loglog(h_all, err_all, "o")
        ax[1].set(xlabel="h", ylabel="RMS error at t = 4", title=f"time: slope {slope_h:.2f}")
        figure = save_figure(fig, out, NAME)
    except ImportError:
        pass
    return Report(rows=rows, figure=figure, details=details)


if __name__ == "__main__":
    raise SystemExit(main(run, NAME, PAPER))
