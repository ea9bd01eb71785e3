"""driftax: sampling and generative modelling in JAX on one energy/score interface."""

from . import diffusion as diffusion, energies as energies, flows as flows, samplers as samplers

__version__ = "0.1.0"
