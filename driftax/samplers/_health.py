"""Health checks of a finished run: what went wrong, in one plain sentence, and what to try."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .._warnings import SamplingWarning

RHAT_MAX = 1.01
"""R-hat above this is flagged (Vehtari et al. 2021)."""
ESS_PER_CHAIN_MIN = 100.0
"""Bulk ESS per chain below this is flagged."""
STEP_RATIO = 1e3
"""An adapted step size this many times smaller (or larger) than the initial one is flagged."""
STEP_TINY = 1e-6
"""An adapted step size below this fraction of the target's scale is flagged as collapsed."""
MAX_CHECKED_DRAWS = 1000
"""The R-hat and ESS checks read at most this many (evenly thinned) draws per chain, so that
their cost stays a small part of a long run's. Thinning by `k` keeps the ESS of a chain whose
autocorrelation time exceeds `k`, and leaves at least this many draws per chain otherwise: the
flags (R-hat, ESS per chain) are the same as on all the draws, up to estimation noise."""
FROZEN_JUMP = 1e-6
"""Chains whose root-mean-square jump per coordinate is below this fraction of the target's
scale (or that never moved) are flagged as frozen."""


@dataclass(frozen=True)
class HealthReport:
    """The flags of a run's health checks (all `False` / empty for a healthy run) and the
    sentences `driftax.sample` raised as `SamplingWarning`s."""

    step_size_collapsed: bool = False
    step_size_exploded: bool = False
    frozen_chains: tuple[int, ...] = ()
    low_acceptance: bool = False
    divergent: bool = False
    high_rhat: bool = False
    low_ess: bool = False
    messages: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.messages


def _fmt(value: float) -> str:
    return f"{value:.3f}" if value < 100 else f"{value:.3g}"


def _finite(a):
    a = np.asarray(a, np.float64).reshape(-1)
    return a[np.isfinite(a)]


def check_run(
    *,
    sampler_name: str,
    is_adjusted: bool,
    initial_step: float | None,
    adapted_step: np.ndarray | None,
    num_warmup: int,
    num_steps: int,
    num_divergent: int,
    acceptance: np.ndarray,
    num_moved: np.ndarray,
    sq_jump: np.ndarray,
    chain_variance: np.ndarray,
    ess: np.ndarray | None,
    rhat: np.ndarray | None,
) -> HealthReport:
    """Check a run (all inputs are host values; per-chain arrays have a leading chain axis)."""
    msgs: list[str] = []
    num_chains = int(np.shape(acceptance)[0])
    var = np.asarray(chain_variance, np.float64).reshape(num_chains, -1)
    dim = var.shape[1]
    pooled = _finite(np.median(var, axis=0))
    scale = float(np.sqrt(np.median(pooled))) if pooled.size and np.median(pooled) > 0 else 1.0

    collapsed = exploded = False
    if adapted_step is not None and initial_step is not None and initial_step > 0:
        h = _finite(adapted_step)
        if h.size:
            ratio_lo, ratio_hi = float(h.min()) / initial_step, float(h.max()) / initial_step
            collapsed = num_warmup > 0 and ratio_lo < 1 / STEP_RATIO
            collapsed |= float(h.min()) < STEP_TINY * scale
            exploded = num_warmup > 0 and ratio_hi > STEP_RATIO
    if collapsed:
        msgs.append(
            f"{sampler_name}: the step size collapsed to {float(_finite(adapted_step).min()):.3g} "
            f"(started at {initial_step:.3g}), so the chains barely move; the target likely has "
            "a region of NaN/infinite density or extreme curvature: reparameterize, check the "
            "log density, or use an adjusted kernel (NUTS, HMC, MALA)."
        )
    if exploded:
        msgs.append(
            f"{sampler_name}: the step size exploded to {float(_finite(adapted_step).max()):.3g} "
            f"(started at {initial_step:.3g}); the density is probably improper or flat in some "
            "direction: check the log density, bound or reparameterize the parameters."
        )

    rms_jump = np.sqrt(np.asarray(sq_jump, np.float64) / max(num_steps, 1) / max(dim, 1))
    frozen = (np.asarray(num_moved) == 0) | ~(rms_jump >= FROZEN_JUMP * scale)
    frozen_chains = tuple(int(c) for c in np.flatnonzero(frozen))
    acc = np.asarray(acceptance, np.float64)
    if frozen_chains:
        pinned = " with acceptance pinned at 1" if np.all(acc[frozen] > 0.99) else ""
        msgs.append(
            f"{sampler_name}: chain(s) {list(frozen_chains)} did not move{pinned} during "
            "sampling; the run is not exploring the target: check the log density for NaN/inf "
            "regions, use an adjusted kernel, or reparameterize."
        )
    low_acc = bool(is_adjusted and np.any(acc < 0.05) and not frozen_chains)
    if low_acc:
        msgs.append(
            f"{sampler_name}: acceptance is below 5% in chain(s) "
            f"{np.flatnonzero(acc < 0.05).tolist()}; the step size is too large for the target: "
            "raise the target acceptance, run a longer warmup, or reparameterize."
        )
    divergent = num_divergent > 0
    if divergent:
        frac = num_divergent / max(num_chains * num_steps, 1)
        msgs.append(
            f"{sampler_name}: {num_divergent} divergent transition(s) ({100 * frac:.2g}% of the "
            "steps) after warmup, so the samples may be biased: raise the target acceptance "
            "(e.g. StepSizeAdaptation(target=0.95)) or reparameterize (e.g. non-centered)."
        )
    high_rhat = low_ess = False
    if rhat is not None and num_chains > 1:
        r = _finite(rhat)
        high_rhat = bool(r.size and r.max() > RHAT_MAX)
        if high_rhat:
            msgs.append(
                f"{sampler_name}: R-hat is {_fmt(r.max())} (> {RHAT_MAX}), the chains disagree; "
                "run longer (more warmup and steps), use more dispersed starting points, or "
                "reparameterize."
            )
    if ess is not None:
        e = _finite(ess)
        low_ess = bool(e.size and e.min() / num_chains < ESS_PER_CHAIN_MIN)
        if low_ess:
            msgs.append(
                f"{sampler_name}: bulk ESS is {e.min():.0f} ({e.min() / num_chains:.0f} per "
                f"chain, < {ESS_PER_CHAIN_MIN:.0f}), too few for reliable estimates; run longer "
                "or reparameterize."
            )
    return HealthReport(
        step_size_collapsed=bool(collapsed),
        step_size_exploded=bool(exploded),
        frozen_chains=frozen_chains,
        low_acceptance=low_acc,
        divergent=bool(divergent),
        high_rhat=high_rhat,
        low_ess=low_ess,
        messages=tuple(msgs),
    )


def warn(report: HealthReport, stacklevel: int = 3) -> None:
    """Raise one `SamplingWarning` per problem of `report`."""
    for msg in report.messages:
        warnings.warn(msg, SamplingWarning, stacklevel=stacklevel)
