"""`WeightedSampleResult`: the one result type of everything that samples an unnormalized
density with importance weights and reports log Z (SMC, AIS, the learned diffusion samplers,
later FAB). Every such method fills the same field names; method-specific per-stage arrays go
in `extras`."""

from __future__ import annotations

import equinox as eqx

from .._custom_types import Array, PyTree
from ..energies._metrics_logz import LogZEstimate


class WeightedSampleResult(eqx.Module):
    """Weighted samples of an unnormalized density with their log-normalizer estimate.

    **Fields:**

    - `samples`: the final samples / particles in the user's structure (the energy's
      `unravel`): a pytree with a leading `(num_samples,)` axis on every leaf (with
      `num_runs`: `(num_runs, num_samples)`).
    - `log_weights`: their normalized log-weights, `(num_samples,)` (`-inf` for a non-finite
      path or particle; uniform right after a resampling). Use them for estimates.
    - `log_normalizer`: the estimate of `log Z` with its standard error (a `LogZEstimate`).
    - `ess`: Kish effective sample size of the final weights.
    - `elbo`, `eubo`: lower / upper bounds on `log Z` where the method provides them
      (`None` otherwise).
    - `num_grad_evals`, `num_energy_evals`: target gradients / log-density evaluations spent.
    - `num_divergent`: divergent MCMC moves (0 for methods without MCMC moves).
    - `num_nonfinite`: samples whose weight or position was not finite (reported, excluded).
    - `extras`: method-specific diagnostics (e.g. SMC's per-stage `betas`, `ess`,
      `acceptance_rate`), a dict of arrays.
    """

    samples: PyTree
    log_weights: Array
    log_normalizer: LogZEstimate
    ess: Array
    elbo: LogZEstimate | None = None
    eubo: LogZEstimate | None = None
    num_grad_evals: Array | int = 0
    num_energy_evals: Array | int = 0
    num_divergent: Array | int = 0
    num_nonfinite: Array | int = 0
    extras: dict = eqx.field(default_factory=dict)
