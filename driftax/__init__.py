"""driftax: sampling and generative modelling in JAX on one energy/score interface."""

from . import diffusion as diffusion, energies as energies, flows as flows, samplers as samplers
from ._warnings import SamplingWarning as SamplingWarning
from .samplers import SampleResult as SampleResult, sample as sample

__version__ = "0.1.0"
