"""Autoguidance (Karras et al. 2024) on the 2-D tree-mixture toy, and Gaussian-score
"teleportation" of the first sampling steps (Wang & Vastola 2024).

Claims.
1. Guiding a diffusion model with a degraded version of itself (autoguidance) pulls samples
   back onto the data manifold — far fewer outliers — without losing diversity, while
   classifier-free guidance (CFG) at the same weight also removes outliers but loses part of the
   distribution (it pushes samples away from where the classes overlap).
2. At high noise the data score is very close to the score of the Gaussian with the data's mean
   and covariance, so the first steps of sampling can be replaced by the closed-form solution of
   the Gaussian model's probability-flow ODE without changing the samples.

How it is checked. A fractal tree of thin anisotropic Gaussians per class (class A grows up and
to the right, class B up and to the left from the same root; 63 branches of 3 components each,
thinner and lighter towards the tips), with exact EDM-path fields from
`driftax.energies.NoisedGaussianMixture` (no training). As in the paper, the models are
imperfect in the way trained models are: the "main model" is the class mixture with every
covariance inflated by `delta1^2 I` (blurry at low noise), the "weak model" the same with a
larger `delta0^2 I`. All variants use Heun (EDM) with 32 steps from the same noise.

- outliers: samples whose exact class-A log density is below the 1 % quantile of exact samples'
  (so exact sampling has 1 %).
- branch coverage: fraction of class A's 63 branches whose share of the inlier samples is at
  least 25 % of the branch's exact share.

Pass: autoguidance (`dd.autoguidance(main, weak, w)`) has at most half the main model's outlier
rate with ≥ 95 % coverage; CFG (`dd.classifier_free_guidance(main_A, main_AB, w)`) at the same
weight covers fewer branches than autoguidance. Teleportation: replacing the first 20 % of the
steps by the Gaussian closed form keeps the energy distance to exact samples within sampling
noise of the full sampler's (the excess is at most the energy distance between two independent
exact sample sets).

Profiles. quick: 4 000 samples per variant. full: 40 000 samples and a 64-step grid.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import Report, Row, main, save_figure  # noqa: E402

import driftax.diffusion as dd  # noqa: E402
import driftax.energies as de  # noqa: E402

NAME = "autoguidance"
PAPER = (
    "Karras et al. (2024), Guiding a Diffusion Model with a Bad Version of Itself; "
    "Wang & Vastola (2024), Gaussian score approximation"
)

DEPTH = 5
PER_BRANCH = 3


def tree(angle0, origin=(0.0, -2.0), length=2.0, width=0.06, spread=0.5, decay=0.72):
    """Branches of a binary fractal tree: list of (start, angle, length, width, weight, depth)."""
    out = []

    def grow(start, angle, ln, wd, wt, depth):
        out.append((np.asarray(start), angle, ln, wd, wt, depth))
        if depth == DEPTH:
            return
        end = np.asarray(start) + ln * np.array([np.cos(angle), np.sin(angle)])
        for sign, share in ((1.0, 0.55), (-1.0, 0.45)):
            grow(end, angle + sign * spread, ln * decay, wd * decay, wt * share * 1.5, depth + 1)

    grow(origin, angle0, length, width, 1.0, 0)
    return out


def tree_components(branches, inflate=0.0):
    """(weights, means, covariances, branch index) of the components along the branches."""
    ws, ms, cs, bs = [], [], [], []
    for b, (start, angle, ln, wd, wt, _) in enumerate(branches):
        u = np.array([np.cos(angle), np.sin(angle)])
        n = np.array([-u[1], u[0]])
        seg = ln / PER_BRANCH
        for j in range(PER_BRANCH):
            ms.append(start + (j + 0.5) * seg * u)
            c = (0.45 * seg) ** 2 * np.outer(u, u) + wd**2 * np.outer(n, n)
            cs.append(c + inflate**2 * np.eye(2))
            ws.append(wt / PER_BRANCH)
            bs.append(b)
    return np.array(ws), np.array(ms), np.array(cs), np.array(bs)


def mixture(*parts, inflate=0.0):
    w, m, c = [], [], []
    for weight, branches in parts:
        ww, mm, cc, _ = tree_components(branches, inflate)
        w.append(weight * ww / ww.sum())
        m.append(mm)
        c.append(cc)
    return de.gaussian_mixture(np.concatenate(w), np.concatenate(m), np.concatenate(c))


def mixture_score(mix, path):
    """Exact score of `mix` noised along `path` (`alpha m`, `alpha^2 C + sigma^2 I`), with the 2x2
    inverses written out (the same field as `de.NoisedGaussianMixture(mix, path).score`, checked
    in `run`, without a batched LAPACK call per component and sample)."""
    log_w = mix.log_weights
    means = mix.means
    cov = mix.component_covariances()

    def score(t, x):
        alpha, sigma = path.alpha(t), path.sigma(t)
        c = alpha**2 * cov + sigma**2 * jnp.eye(2)
        a, b, d = c[:, 0, 0], c[:, 0, 1], c[:, 1, 1]
        det = a * d - b**2
        r = x - alpha * means
        pr = jnp.stack([d * r[:, 0] - b * r[:, 1], a * r[:, 1] - b * r[:, 0]], -1) / det[:, None]
        logc = log_w - 0.5 * jnp.sum(r * pr, -1) - 0.5 * jnp.log(det)
        return -jax.nn.softmax(logc) @ pr

    return score


def gaussian_teleport(x, mean, cov, sigma_from, sigma_to):
    """Closed-form probability-flow ODE of N(mean, cov) on the EDM path from sigma_from to
    sigma_to: in the eigenbasis of cov, each coordinate scales by
    sqrt((lam + sigma_to^2) / (lam + sigma_from^2))."""
    lam, vec = np.linalg.eigh(cov)
    scale = np.sqrt((lam + sigma_to**2) / (lam + sigma_from**2))
    r = (np.asarray(x) - mean) @ vec
    return mean + (r * scale) @ vec.T


def run(out: Path, quick: bool, seed: int) -> Report:
    n = 4000 if quick else 40_000
    steps = 32 if quick else 64
    weight = 2.5
    delta1, delta0 = 0.04, 0.1  # main-model and weak-model blur
    path = dd.EDM()
    key = jax.random.key(seed)
    k_init, k_exact, k_exact2 = jax.random.split(key, 3)

    tree_a = tree(np.pi / 2 - 0.35)
    tree_b = tree(np.pi / 2 + 0.35)
    true_a = mixture((1.0, tree_a))
    main_a = mixture((1.0, tree_a), inflate=delta1)
    weak_a = mixture((1.0, tree_a), inflate=delta0)
    main_ab = mixture((0.5, tree_a), (0.5, tree_b), inflate=delta1)
    branch_of = tree_components(tree_a)[3]
    exact_share = np.bincount(branch_of, weights=np.asarray(true_a.weights), minlength=len(tree_a))

    def field(mix):
        return mixture_score(mix, path)

    probe = path.prior_sample(jax.random.fold_in(key, 5), (64, 2)) * 0.05
    for t in (0.01, 0.3, 5.0):
        mine = jax.vmap(field(main_ab), in_axes=(None, 0))(t, probe)
        ref = jax.vmap(de.NoisedGaussianMixture(main_ab, path).score, in_axes=(None, 0))(t, probe)
        assert np.allclose(mine, ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max())), t

    ts = dd.time_grid(path, steps, "karras")
    x_init = path.prior_sample(k_init, (n, 2))

    def sample(f, ts_=ts, x0=x_init):
        return np.asarray(dd.solve(dd.Heun(), f, path, x0, ts=ts_))

    variants = {
        "exact": sample(field(true_a)),
        "main model": sample(field(main_a)),
        f"autoguidance w={weight:g}": sample(dd.autoguidance(field(main_a), field(weak_a), weight)),
        f"CFG w={weight:g}": sample(
            dd.classifier_free_guidance(field(main_a), field(main_ab), weight)
        ),
    }
    exact_samples = np.asarray(true_a.sample(k_exact, n))
    logp = jax.jit(jax.vmap(true_a.log_density))
    threshold = float(np.quantile(np.asarray(logp(jnp.asarray(exact_samples))), 0.01))
    assign = jax.jit(jax.vmap(true_a.assign))

    def stats(x):
        lp = np.asarray(logp(jnp.asarray(x)))
        inlier = lp >= threshold
        comp = np.asarray(assign(jnp.asarray(x)))[inlier]
        share = np.bincount(branch_of[comp], minlength=len(tree_a)) / len(x)
        covered = share >= 0.25 * exact_share
        return float(1 - inlier.mean()), float(covered.mean())

    table = {name: stats(x) for name, x in variants.items()}
    (out_main, cov_main) = table["main model"]
    (out_ag, cov_ag) = table[f"autoguidance w={weight:g}"]
    (out_cfg, cov_cfg) = table[f"CFG w={weight:g}"]
    (out_ex, cov_ex) = table["exact"]

    # Teleportation: the first 20 % of the steps by the Gaussian closed form (moment-matched).
    skip = int(round(0.2 * steps))
    mean_a = np.asarray(true_a.mean)
    cov_a = np.cov(np.asarray(true_a.sample(jax.random.fold_in(key, 7), 200_000)).T)
    ts_np = np.asarray(ts)
    x_tele0 = gaussian_teleport(x_init, mean_a, cov_a, ts_np[0], ts_np[skip])
    x_tele = sample(field(true_a), ts[skip:], jnp.asarray(x_tele0, x_init.dtype))
    exact2 = np.asarray(true_a.sample(k_exact2, n))
    ed = lambda a, b: float(de.energy_distance(jnp.asarray(a), jnp.asarray(b)))  # noqa: E731
    ed_full = ed(variants["exact"], exact_samples)
    ed_tele = ed(x_tele, exact_samples)
    ed_noise = ed(exact2, exact_samples)
    shift = float(np.median(np.linalg.norm(x_tele - variants["exact"], axis=1)))
    out_tele, cov_tele = stats(x_tele)
    variants["teleported 20 %"] = x_tele

    details = {
        "weight": weight,
        "delta_main": delta1,
        "delta_weak": delta0,
        "outlier_threshold_logp": threshold,
        "table": {k: {"outliers": v[0], "coverage": v[1]} for k, v in table.items()},
        "teleport": {
            "skipped_steps": skip,
            "sigma_at_skip": float(ts_np[skip]),
            "ed_full": ed_full,
            "ed_teleported": ed_tele,
            "ed_exact_vs_exact": ed_noise,
            "median_paired_shift": shift,
            "outliers": out_tele,
            "coverage": cov_tele,
        },
    }
    rows = [
        Row(
            "autoguidance at most halves the main model's outliers, coverage ≥ 95 %",
            f"main model: outliers {out_main:.3f} (exact sampler {out_ex:.3f})",
            f"autoguidance: outliers {out_ag:.3f} ({out_ag / max(out_main, 1e-9):.2f}×), "
            f"coverage {cov_ag:.3f}",
            out_ag <= 0.5 * out_main and cov_ag >= 0.95,
        ),
        Row(
            "CFG at the same weight loses more branch coverage than autoguidance",
            f"autoguidance coverage {cov_ag:.3f}",
            f"CFG coverage {cov_cfg:.3f} (outliers {out_cfg:.3f})",
            cov_cfg < cov_ag,
        ),
        Row(
            "first 20 % of steps by the Gaussian closed form: energy distance within noise",
            f"full sampler ED {ed_full:.2e} (+ exact-exact noise {ed_noise:.2e})",
            f"teleported ED {ed_tele:.2e} (median paired shift {shift:.1e}, sigma {ts_np[skip]:.1f})",
            ed_tele <= ed_full + ed_noise,
        ),
    ]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = [
        "exact",
        "main model",
        f"autoguidance w={weight:g}",
        f"CFG w={weight:g}",
        "teleported 20 %",
    ]
    fig, axes = plt.subplots(1, len(show), figsize=(4 * len(show), 4.3))
    ref = np.asarray(main_ab.sample(jax.random.fold_in(key, 9), 4000))
    for ax, name in zip(axes, show, strict=True):
        ax.scatter(ref[:, 0], ref[:, 1], s=1, color="0.85")
        x = variants[name][:4000]
        ax.scatter(x[:, 0], x[:, 1], s=1, color="tab:orange", alpha=0.5)
        o, c = table.get(name, (out_tele, cov_tele))
        ax.set_title(f"{name}\noutliers {o:.3f}, coverage {c:.2f}", fontsize=9)
        ax.set_xlim(-4.5, 4.5)
        ax.set_ylim(-2.3, 4.8)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Tree-mixture toy (class A in orange, both classes in grey)")
    fig_path = save_figure(fig, out, NAME, rect=(0, 0, 1, 0.93), dpi=110)
    return Report(rows=rows, figure=str(fig_path), details=details)


if __name__ == "__main__":
    raise SystemExit(main(run, NAME, PAPER))
