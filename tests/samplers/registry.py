"""A registry of every sampler (and integrator) for the generic tests."""

import jax
import jax.numpy as jnp

import driftax.energies as de
import driftax.flows as fl
import driftax.samplers as ds

# name -> factory(step_size) ; step sizes suited to a unit-scale Gaussian
SAMPLERS = {
    "RandomWalk": lambda: ds.RandomWalk(step_size=0.8),
    "ULA": lambda: ds.ULA(step_size=0.05),
    "MALA": lambda: ds.MALA(step_size=0.3),
    "HMC": lambda: ds.HMC(step_size=0.3, num_integration_steps=5),
    "HMC-jitter": lambda: ds.HMC(
        step_size=0.3, num_integration_steps=5, jitter_step_size=0.2, jitter_num_steps=True
    ),
    "HMC-yoshida": lambda: ds.HMC(step_size=0.5, num_integration_steps=3, integrator="yoshida"),
    "NUTS": lambda: ds.NUTS(step_size=0.4),
    "ChEESHMC": lambda: ds.ChEESHMC(step_size=0.3, trajectory_length=1.5),
    "BAOAB": lambda: ds.UnderdampedLangevin(step_size=0.2, integrator="BAOAB"),
    "OBABO": lambda: ds.UnderdampedLangevin(step_size=0.2, integrator="OBABO"),
    "UBU": lambda: ds.UnderdampedLangevin(step_size=0.2, integrator="UBU"),
    "RMP-kinetic": lambda: ds.RandomizedMidpoint(step_size=0.2),
    "RMP-overdamped": lambda: ds.RandomizedMidpoint(step_size=0.05, dynamics="overdamped"),
    "MCLMC": lambda: ds.MCLMC(step_size=0.4, L=1.5),
    "MCLMC-leapfrog": lambda: ds.MCLMC(step_size=0.2, L=1.5, integrator="leapfrog"),
    "MAMS": lambda: ds.MAMS(step_size=0.4, L=1.5),
}


def _flow(dim: int = 2):
    """A small untrained planar flow on R^dim (a poor but valid proposal)."""
    return fl.planar_flow(jax.random.key(7), dim, 2, init_scale=0.3)


def _ssm_model(theta):
    """A scalar linear-Gaussian model with parameters θ in R^2 (for the particle MCMC kernels)."""
    return de.linear_gaussian_ssm(
        jnp.tanh(theta[:1])[None],
        0.5 + jnp.exp(0.1 * theta[1:])[None],
        jnp.ones((1, 1)),
        jnp.ones((1, 1)),
        jnp.zeros(1),
        jnp.ones((1, 1)),
    )


_SSM_OBSERVATIONS = jnp.linspace(-1.0, 1.0, 5)[:, None]

# kernels built on other kernels or on a flow; their factories build for a 2-D event
COMPOSITE_SAMPLERS = {
    "PT-MALA": lambda: ds.ParallelTempering(
        ds.MALA(step_size=0.3), num_replicas=3, max_temperature=4.0
    ),
    "PT-RandomWalk": lambda: ds.ParallelTempering(
        ds.RandomWalk(step_size=0.8), num_replicas=3, max_temperature=4.0, swap="seo"
    ),
    "IMH": lambda: fl.IndependentMH(_flow()),
    "ISIR": lambda: fl.ISIR(_flow(), num_proposals=4),
    "FlowLocalHybrid": lambda: fl.FlowLocalHybrid(_flow(), ds.MALA(step_size=0.3)),
    "NeuTra-HMC": lambda: fl.NeuTra(ds.HMC(step_size=0.3, num_integration_steps=3), _flow()),
    "PMMH": lambda: ds.PMMH(_ssm_model, _SSM_OBSERVATIONS, num_particles=8, step_size=0.8),
    "ParticleGibbs": lambda: ds.ParticleGibbs(
        _ssm_model, _SSM_OBSERVATIONS, num_particles=4, theta_sampler=ds.RandomWalk(step_size=0.8)
    ),
    "CoarseToFineMALA": lambda: ds.CoarseToFineMALA(step_sizes=(0.3, 0.2)),
    "L2HMC": lambda: ds.L2HMC(
        ds.learned_leapfrog(jax.random.key(3), 2, num_layers=3, step_size=0.3, init_scale=0.1)
    ),
}

# stochastic-gradient kernels: minibatch scores on data energies, the exact score elsewhere
# (their statistical checks live in test_stochastic_gradient.py, on data energies)
DATA_SAMPLERS = {
    "SGLD": lambda: ds.SGLD(step_size=0.05, batch_size=8),
    "PreconditionedSGLD": lambda: ds.PreconditionedSGLD(step_size=0.05, batch_size=8),
    "SGHMC": lambda: ds.SGHMC(step_size=0.2, batch_size=8),
    "SGNHT": lambda: ds.SGNHT(step_size=0.1, batch_size=8),
    "StructuredSGLD": lambda: ds.StructuredSGLD(step_size=0.05, batch_size=8, buffer_size=20),
    "StructuredSGLD-dropout": lambda: ds.StructuredSGLD(
        step_size=0.05, batch_size=8, buffer_size=20, keep_probability=0.5
    ),
}

ALL_SAMPLERS = {**SAMPLERS, **COMPOSITE_SAMPLERS, **DATA_SAMPLERS}

HAMILTONIAN_INTEGRATORS = [ds.Leapfrog, ds.McLachlan, ds.Yoshida]
LANGEVIN_INTEGRATORS = [ds.BAOAB, ds.OBABO, ds.UBU]
