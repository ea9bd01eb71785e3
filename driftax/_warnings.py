"""The warnings driftax raises about a run's health."""

from __future__ import annotations


class SamplingWarning(UserWarning):
    """A run that went wrong (frozen chains, collapsed step size, divergences, poor R-hat or
    ESS): raised after warmup / sampling with one plain sentence of what happened and what to
    try. The same flags are fields of the result."""
