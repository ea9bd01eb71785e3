"""The time-conditioned residual MLP of `driftax.diffusion` (public as `driftax.diffusion.MLP`);
it lives in the shared `driftax._nn`."""

from __future__ import annotations

from .._nn import TimeMLP as MLP

__all__ = ["MLP"]
