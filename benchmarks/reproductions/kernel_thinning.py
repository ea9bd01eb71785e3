"""Kernel thinning: √n points with better-than-i.i.d. MMD.

Paper: Dwivedi & Mackey (2021/2022) "Kernel Thinning" and "Generalized Kernel Thinning" (ICLR
2022); Shetty, Dwivedi & Mackey (2022) "Distribution Compression in Near-linear Time"
(Compress++).

How it is checked. The target is P = N(0, I₂) and the kernel the Gaussian RBF with bandwidth 1,
so MMD(P, Q) of any point set Q has a closed form (the kernel's mean embedding under P is
Gaussian). For n = 4^k input points drawn i.i.d. from P, `driftax.samplers.kernel_thin` keeps
√n of them; the baseline keeps √n points drawn i.i.d. (standard thinning of an i.i.d. input
is the same thing). The mean MMD over seeds is fit in log-log against n: i.i.d. √n points have
MMD ~ (√n)^{-1/2} = n^{-1/4}; kernel thinning should decay like n^{-1/2} up to log factors
(the slope is reported against that baseline).

Claims (rows): the KT slope is at most -0.4 (n^{-1/2} up to logs); the i.i.d. slope is in
[-0.35, -0.15] (the n^{-1/4} sanity check); KT has a lower MMD than i.i.d. at every n; Compress++
(oversampling g = 2) decays at least as fast as n^{-0.4} too.
Figure: MMD vs n (log-log) for KT, Compress++ and i.i.d. with the reference slopes.

Profiles: quick (n = 64 … 4096, 3 seeds) and full (n = 64 … 16384, 10 seeds).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import driftax.samplers as ds

sys.path.insert(0, str(Path(__file__).parent))
from _common import Report, Row, main, save_figure  # noqa: E402

NAME = "kernel_thinning"
PAPER = "Dwivedi & Mackey (2021, 2022) kernel thinning; Shetty et al. (2022) Compress++"

H = 1.0
D = 2


def mmd_to_gaussian(q: np.ndarray) -> float:
    """Exact MMD(N(0, I_d), Q) for the RBF kernel exp(-|x-y|²/(2H²))."""
    q = jnp.asarray(q, jnp.float32)
    c1 = (H**2 / (H**2 + 1.0)) ** (D / 2)
    c2 = (H**2 / (H**2 + 2.0)) ** (D / 2)
    embed = c1 * jnp.exp(-0.5 * jnp.sum(q**2, axis=1) / (H**2 + 1.0))
    sq = jnp.sum((q[:, None] - q[None]) ** 2, axis=-1)
    gram = jnp.exp(-0.5 * sq / H**2)
    return float(jnp.sqrt(jnp.maximum(c2 - 2.0 * jnp.mean(embed) + jnp.mean(gram), 0.0)))


def _slope(ns, values) -> float:
    return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def run(out: Path, quick: bool = True, seed: int = 0) -> Report:
    ks = [3, 4, 5, 6] if quick else [3, 4, 5, 6, 7]
    seeds = 3 if quick else 10
    ns = [4**k for k in ks]
    mmd = {"KT": [], "Compress++": [], "i.i.d.": []}
    for n in ns:
        m = int(np.sqrt(n))
        vals = {name: [] for name in mmd}
        for s in range(seeds):
            key = jax.random.fold_in(jax.random.key(seed), 1000 * n + s)
            k_x, k_kt, k_iid = jax.random.split(key, 3)
            x = jax.random.normal(k_x, (n, D))
            vals["KT"].append(mmd_to_gaussian(ds.kernel_thin(x, m, key=k_kt, bandwidth=H)))
            vals["Compress++"].append(
                mmd_to_gaussian(ds.kernel_thin(x, m, key=k_kt, bandwidth=H, method="compress++"))
            )
            for r in range(4):  # i.i.d. subsamples are cheap: four per input
                pick = jax.random.choice(jax.random.fold_in(k_iid, r), n, (m,), False)
                vals["i.i.d."].append(mmd_to_gaussian(x[pick]))
        for name in mmd:
            mmd[name].append(float(np.mean(vals[name])))
    slopes = {name: _slope(ns, v) for name, v in mmd.items()}
    rows = [
        Row(
            claim="KT: MMD(P, √n thinned points) decays like n^{-1/2} (up to logs)",
            reference="slope -0.5 (baseline n^{-1/2}); pass at <= -0.4",
            measured=f"slope {slopes['KT']:.3f} (n = {ns[0]} … {ns[-1]})",
            passed=bool(slopes["KT"] <= -0.4),
        ),
        Row(
            claim="i.i.d. √n points: MMD decays like n^{-1/4}",
            reference="slope -0.25; pass in [-0.35, -0.15]",
            measured=f"slope {slopes['i.i.d.']:.3f}",
            passed=bool(-0.35 <= slopes["i.i.d."] <= -0.15),
        ),
        Row(
            claim="KT beats i.i.d. thinning at every n",
            reference="MMD_KT < MMD_iid",
            measured=", ".join(
                f"n={n}: {a:.4f} vs {b:.4f}" for n, a, b in zip(ns, mmd["KT"], mmd["i.i.d."])
            ),
            passed=bool(all(a < b for a, b in zip(mmd["KT"], mmd["i.i.d."]))),
        ),
        Row(
            claim="Compress++ (g = 2) keeps KT's rate in near-linear time",
            reference="slope <= -0.4",
            measured=f"slope {slopes['Compress++']:.3f}",
            passed=bool(slopes["Compress++"] <= -0.4),
        ),
    ]
    figure = _figure(ns, mmd, out)
    return Report(rows=rows, figure=figure, details={"n": ns, "mmd": mmd, "slopes": slopes})


def _figure(ns, mmd, out):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot()
    for name, v in mmd.items():
        ax.loglog(ns, v, "o-", label=name)
    n = np.array(ns, float)
    ax.loglog(n, mmd["i.i.d."][0] * (n / n[0]) ** -0.25, "k:", lw=1, label="n^-1/4")
    ax.loglog(n, mmd["KT"][0] * (n / n[0]) ** -0.5, "k--", lw=1, label="n^-1/2")
    ax.set_xlabel("input size n (output √n points)")
    ax.set_ylabel("MMD(P, thinned points)")
    ax.legend(fontsize=8)
    return save_figure(fig, out, NAME)


if __name__ == "__main__":
    raise SystemExit(main(run, NAME, PAPER))
