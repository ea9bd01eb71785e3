"""The adaptation `driftax.sample` picks for a sampler when `adaptation="auto"`.

It sits above both adaptation modules (`_adaptation`: window and ChEES; `_microcanonical_adaptation`:
MCLMC and MAMS), so neither has to import the other's samplers.
"""

from __future__ import annotations

from ._adaptation import AbstractAdaptation, ChEESAdaptation, NoAdaptation, WindowAdaptation
from ._base import AbstractMetricSampler, AbstractSampler, AbstractStepSizeSampler
from ._hamiltonian import ChEESHMC
from ._microcanonical_adaptation import microcanonical_adaptation


def default_adaptation(sampler: AbstractSampler) -> AbstractAdaptation:
    """The adaptation `driftax.sample` uses when `adaptation="auto"`: `ChEESAdaptation` for
    `ChEESHMC`, `MCLMCAdaptation` / `MAMSAdaptation` for `MCLMC` / `MAMS`; otherwise
    `WindowAdaptation` with a diagonal metric, per chain for adjusted samplers and pooled across
    chains for unadjusted ones."""
    if isinstance(sampler, ChEESHMC):
        return ChEESAdaptation()
    if (own := microcanonical_adaptation(sampler)) is not None:  # MCLMC, MAMS: their own
        return own
    if isinstance(sampler, AbstractStepSizeSampler):
        # unadjusted samplers pool across chains: their energy-error statistic is noisier and
        # a poor per-chain metric makes them unstable rather than merely slow
        return WindowAdaptation(
            metric="diagonal" if isinstance(sampler, AbstractMetricSampler) else None,
            pooled=not sampler.is_adjusted,
        )
    return NoAdaptation()
