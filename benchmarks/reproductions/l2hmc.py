"""A trained learned leapfrog against HMC on an ill-conditioned 2-D Gaussian, in ESS per gradient.

Paper: Levy, Hoffman & Sohl-Dickstein (2018) "Generalizing Hamiltonian Monte Carlo with neural
networks" (ICLR). Claim: generalized leapfrog layers with learned scale / translate networks,
volume-corrected and Metropolis-adjusted (so exact for any parameters) and trained on the
expected squared jump distance, mix far faster than HMC on targets where HMC struggles; their
first example is a strongly correlated Gaussian (SCG: standard deviations 10 and 0.1, rotated by
pi/4), where the paper reports an ESS per gradient about two orders of magnitude above HMC's.

How it is checked. `driftax.samplers.L2HMC` with `num_layers` layers (a step costs `num_layers`
gradients) is trained by `driftax.samplers.fit_l2hmc` on persistent chains started at exact draws;
HMC with the same number of leapfrog steps gets the best step size of a grid (its tuning is not
charged). Both run chains from exact draws. ESS is the bulk ESS of the coordinate along the
long axis (the slow direction), pooled over chains, divided by the gradients spent. Exactness
of the trained kernel: the variance along both principal axes within 4 MCSE of the truth.

Rows: the trained kernel is exact (moments); training raises the ESJD over the untrained
(plain-leapfrog) start; L2HMC beats HMC in ESS per gradient (measured ratio, honest).
"""

from __future__ import annotations

import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import driftax as dx
import driftax.samplers as ds
from driftax.energies import AbstractEnergy

sys.path.insert(0, str(Path(__file__).parent))
from _common import Report, Row, main, save_figure  # noqa: E402

NAME = "l2hmc"
PAPER = "Levy, Hoffman & Sohl-Dickstein (2018) Generalizing Hamiltonian Monte Carlo with neural networks"

STDS = np.array([10.0, 0.1])
ANGLE = np.pi / 4
NUM_LAYERS = 10
LEARNING_RATE = 5e-3


def _rotation():
    c, s = np.cos(ANGLE), np.sin(ANGLE)
    return np.array([[c, -s], [s, c]])


def _target():
    rot = _rotation()
    cov = rot @ np.diag(STDS**2) @ rot.T
    return dx.energies.gaussian(jnp.zeros(2), jnp.asarray(cov)), cov


def _principal(xs):
    """Coordinates along the (long, short) principal axes."""
    return np.asarray(xs, np.float64) @ _rotation()


def _sample(sampler, target, x0, seed, steps, num_warmup=0):
    """Fixed-parameter chains from `x0` (no adaptation)."""
    return dx.sample(
        sampler,
        target,
        x0,
        key=jax.random.key(seed),
        num_steps=steps,
        num_warmup=num_warmup,
        adaptation=None,
        check_health=False,
    )


def _run(sampler, target, seed, chains, steps):
    res = _sample(sampler, target, target.sample(jax.random.key(seed), chains), seed + 1, steps)
    return _principal(res.kernel_samples), res


def _ess_per_grad(z, grads_per_step):
    ess_long = float(ds.ess(z[..., :1])[0])
    return ess_long / (z.shape[0] * z.shape[1] * grads_per_step), ess_long


def _esjd(sampler, target, seed, chains=256, steps=20):
    z, _ = _run(sampler, target, seed, chains, steps)
    return float(np.mean(np.sum(np.diff(z, axis=1) ** 2, axis=-1)))


def run(out: Path, quick: bool, seed: int) -> Report:
    target, _ = _target()
    chains, steps = (8, 1500) if quick else (16, 5000)
    train_steps = 1500 if quick else 5000

    untrained = ds.L2HMC(
        ds.learned_leapfrog(
            jax.random.key(seed), 2, num_layers=NUM_LAYERS, step_size=0.1, hidden=(16, 16)
        )
    )
    x_train = target.sample(jax.random.key(seed + 10), 64)
    trained, history = ds.fit_l2hmc(
        untrained,
        target,
        x_train,
        key=jax.random.key(seed + 11),
        optimizer=optax.adam(LEARNING_RATE),
        num_steps=train_steps,
        scale=1.0,
    )
    esjd0 = _esjd(untrained, target, seed + 20)
    esjd1 = _esjd(trained, target, seed + 20)

    z_l2, res_l2 = _run(trained, target, seed + 30, chains, steps)
    acc_l2 = float(np.asarray(res_l2.info.acceptance_rate).mean())
    epg_l2, ess_l2 = _ess_per_grad(z_l2, NUM_LAYERS)

    hmc = {}
    for h in (0.05, 0.1, 0.15):
        z_h, _ = _run(
            ds.HMC(step_size=h, num_integration_steps=NUM_LAYERS), target, seed + 40, chains, steps
        )
        hmc[h] = (_ess_per_grad(z_h, NUM_LAYERS), z_h)
    best_h = max(hmc, key=lambda h: hmc[h][0][0])
    (epg_hmc, ess_hmc), z_hmc = hmc[best_h]

    # exactness of the trained kernel: variances along the principal axes
    sq = z_l2**2  # the mean is known (zero): E[z^2] is the variance
    var = sq.reshape(-1, 2).mean(0)
    mcse = np.asarray(ds.mcse(sq), np.float64)
    zscores = (var - STDS**2) / mcse
    rows = [
        Row(
            claim="the trained learned leapfrog (MH-adjusted) is exact",
            reference="variance along both principal axes within 4 MCSE of (100, 0.01)",
            measured=f"variances {var[0]:.3g}, {var[1]:.3g}; z = {zscores[0]:+.2f}, {zscores[1]:+.2f}",
            passed=bool(np.all(np.abs(zscores) < 4.0)),
        ),
        Row(
            claim="training on the ESJD loss raises the expected squared jump",
            reference="ESJD after > ESJD of the untrained start (plain leapfrog, eps = 0.1)",
            measured=f"{esjd0:.3g} -> {esjd1:.3g} (step size {float(jnp.exp(trained.leapfrog.log_step_size)):.3g}, "
            f"acceptance {acc_l2:.2f})",
            passed=bool(esjd1 > esjd0),
        ),
        Row(
            claim="L2HMC beats HMC in ESS per gradient on the strongly correlated Gaussian",
            reference="paper: ~100x (trained far longer); here: ratio > 1",
            measured=f"L2HMC {epg_l2:.2e} vs best HMC (eps = {best_h}) {epg_hmc:.2e}: "
            f"ratio {epg_l2 / epg_hmc:.2f} (long-axis bulk ESS {ess_l2:.0f} vs {ess_hmc:.0f})",
            passed=bool(epg_l2 > epg_hmc),
        ),
    ]
    u1_rows, u1_details = _u1_part(seed, quick)
    rows += u1_rows
    figure = _figure(z_l2, z_hmc, np.asarray(history.losses), best_h, out)
    details = {
        "u1": u1_details,
        "esjd_untrained": esjd0,
        "esjd_trained": esjd1,
        "ess_per_grad_l2hmc": epg_l2,
        "ess_per_grad_hmc": {str(h): v[0][0] for h, v in hmc.items()},
        "acceptance_l2hmc": acc_l2,
        "variance_z": zscores.tolist(),
    }
    return Report(rows=rows, figure=figure, details=details)


# ---- the paper's setting: 2-D U(1) gauge theory (Foreman, Jin & Osborn 2021) -----------------

U1_L, U1_BETA, U1_LAYERS = 4, 4.0, 4


class _FlatU1(AbstractEnergy):
    """`u1_lattice` on flat link vectors (the learned leapfrog acts on `R^dim`)."""

    lattice: AbstractEnergy
    event_shape: tuple = eqx.field(static=True)

    def log_density(self, x):
        return self.lattice.log_density(jnp.reshape(x, self.lattice.event_shape))


def _u1_chains(sampler, target, lattice, seed, chains, steps):
    dim = target.event_shape[0]
    x0 = jax.random.uniform(jax.random.key(seed), (chains, dim), minval=-np.pi, maxval=np.pi)
    res = _sample(sampler, target, x0, seed + 1, steps, num_warmup=200)
    xs = jnp.reshape(res.kernel_samples, (chains, steps, *lattice.event_shape))
    per = jax.jit(
        jax.vmap(jax.vmap(lambda x: (lattice.topological_charge(x), lattice.mean_plaquette(x))))
    )
    q, plaq = (np.asarray(a, np.float64) for a in per(xs))
    q = np.rint(q)
    changes = float(np.mean(np.abs(np.diff(q, axis=1)) > 0))
    return changes, plaq, float(np.mean(res.acceptance_rate))


def _u1_part(seed: int, quick: bool):
    """L2HMC against HMC on a small U(1) lattice, at equal gradients per step: topological
    charge changes per gradient, and exactness of the trained kernel (mean plaquette)."""
    lattice = dx.energies.u1_lattice(U1_L, U1_BETA)
    dim = int(np.prod(lattice.event_shape))
    target = _FlatU1(lattice=lattice, event_shape=(dim,))
    chains, steps = (8, 600) if quick else (16, 4000)
    train_steps = 150 if quick else 2000
    untrained = ds.L2HMC(
        ds.learned_leapfrog(
            jax.random.key(seed + 50), dim, num_layers=U1_LAYERS, step_size=0.2, hidden=(16, 16)
        )
    )
    x_train = jax.random.uniform(jax.random.key(seed + 51), (32, dim), minval=-np.pi, maxval=np.pi)
    trained, _ = ds.fit_l2hmc(
        untrained,
        target,
        x_train,
        key=jax.random.key(seed + 52),
        optimizer=optax.adam(5e-4),
        num_steps=train_steps,
        scale=1.0,
    )
    l2_changes, l2_plaq, l2_acc = _u1_chains(trained, target, lattice, seed + 60, chains, steps)
    hmc = {
        h: _u1_chains(
            ds.HMC(step_size=h, num_integration_steps=U1_LAYERS),
            target,
            lattice,
            seed + 60,
            chains,
            steps,
        )
        for h in ((0.1, 0.2) if quick else (0.1, 0.2, 0.3))
    }
    best_h = max(hmc, key=lambda h: hmc[h][0])
    exact = lattice.exact_plaquette
    z_plaq = (l2_plaq.mean() - exact) / float(np.asarray(ds.mcse(l2_plaq)))
    rate = lambda c: c / U1_LAYERS  # noqa: E731  (charge changes per gradient)
    rows = [
        Row(
            claim=f"the trained L2HMC is exact on u1_lattice (L = {U1_L}, beta = {U1_BETA})",
            reference=f"mean plaquette I1/I0 = {exact:.4f} within 4 MCSE",
            measured=f"{l2_plaq.mean():.4f}, z = {z_plaq:+.2f} (acceptance {l2_acc:.2f})",
            passed=bool(abs(z_plaq) < 4.0),
        ),
        Row(
            claim="L2HMC tunnels between topological sectors more than HMC per gradient on u1_lattice",
            reference="paper: lower charge autocorrelation than HMC; here: more Q changes per gradient "
            "than the best HMC step of a grid, same gradients per step",
            measured=f"L2HMC {rate(l2_changes):.2e} vs HMC (eps = {best_h}) "
            f"{rate(hmc[best_h][0]):.2e} Q changes per gradient",
            passed=bool(l2_changes > hmc[best_h][0]),
        ),
    ]
    details = {
        "lattice": {"L": U1_L, "beta": U1_BETA, "layers": U1_LAYERS, "train_steps": train_steps},
        "q_changes_per_step_l2hmc": l2_changes,
        "q_changes_per_step_hmc": {str(h): v[0] for h, v in hmc.items()},
        "acceptance_l2hmc": l2_acc,
        "acceptance_hmc": {str(h): v[2] for h, v in hmc.items()},
        "plaquette_z_l2hmc": float(z_plaq),
        "step_size_l2hmc": float(jnp.exp(trained.leapfrog.log_step_size)),
    }
    return rows, details


def _figure(z_l2, z_hmc, losses, best_h, out):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.4))
    a, b, c = fig.subplots(1, 3)
    a.plot(losses)
    a.set_title("L2HMC training loss")
    a.set_xlabel("step")
    n = min(300, z_l2.shape[1])
    b.plot(z_l2[0, :n, 0], label="L2HMC")
    b.plot(z_hmc[0, :n, 0], label=f"HMC eps={best_h}")
    b.set_title("long-axis coordinate, one chain")
    b.legend(fontsize=7)
    c.acorr(
        z_l2[0, :, 0] - z_l2[0, :, 0].mean(), maxlags=50, usevlines=False, marker=".", label="L2HMC"
    )
    c.acorr(
        z_hmc[0, :, 0] - z_hmc[0, :, 0].mean(), maxlags=50, usevlines=False, marker=".", label="HMC"
    )
    c.set_xlim(0, 50)
    c.set_title("autocorrelation (long axis)")
    c.legend(fontsize=7)
    return save_figure(fig, out, NAME)


if __name__ == "__main__":
    raise SystemExit(main(run, NAME, PAPER))
