"""`WeightedSampleResult`: the one result type of everything that samples an unnormalized
density with importance weights and reports log Z (SMC, AIS, the learned diffusion samplers,
later FAB). Every such method fills the same field names; method-specific per-stage arrays go
in `extras`."""

from __future__ import annotations

import equinox as eqx
import numpy as np

from .._custom_types import Array, PyTree
from ..energies._metrics_logz import LogZEstimate, log_z_importance


class WeightedSampleResult(eqx.Module):
    """Weighted samples of an unnormalized density with their log-normalizer estimate.

    **Fields:**

    - `samples`: the final samples / particles in the user's structure (the energy's
      `unravel`): a pytree with a leading `(num_samples,)` axis on every leaf (with
      `num_runs`: `(num_runs, num_samples)`).
    - `log_weights`: their normalized log-weights, `(num_samples,)` (`-inf` for a non-finite
      path or particle; uniform right after a resampling). Use them for estimates.
    - `log_normalizer`: the estimate of `log Z` with its standard error (a `LogZEstimate`;
      with `num_runs`, one per run: see `pooled_log_normalizer`).
    - `ess`: Kish effective sample size of the final weights (`driftax.energies.importance_ess`).
    - `elbo`, `eubo`: lower / upper bounds on `log Z` where the method provides them
      (`None` otherwise).
    - `num_grad_evals`, `num_energy_evals`: target gradients / log-density evaluations spent.
    - `num_divergent`: divergent MCMC moves (0 for methods without MCMC moves).
    - `num_nonfinite`: samples whose weight or position was not finite (reported, excluded).
    - `extras`: method-specific diagnostics, a dict of arrays (e.g. SMC's per-stage `betas`,
      `stage_ess`, `acceptance_rate`: see [`SMC`][]).
    - `num_runs`: `None` for one run, else the number of independent runs stacked on a leading
      axis of every array above.
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
    num_runs: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.num_runs is not None and (
            isinstance(self.num_runs, bool)
            or not isinstance(self.num_runs, (int, np.integer))
            or self.num_runs < 1
        ):
            raise ValueError(f"`num_runs` must be None or a positive int, got {self.num_runs!r}.")
        if not isinstance(self.log_normalizer, LogZEstimate):
            raise TypeError(
                "`log_normalizer` must be a LogZEstimate, got "
                f"{type(self.log_normalizer).__name__}."
            )

    @property
    def pooled_log_normalizer(self) -> LogZEstimate:
        """`log Z` with its standard error over all runs: for one run, `log_normalizer`; for
        several, the log of the mean of the runs' `Ẑ` with the delta-method error from their
        spread (`driftax.energies.log_z_importance` of the runs' `log_normalizer.value`)."""
        if self.num_runs is None:
            return self.log_normalizer
        return log_z_importance(self.log_normalizer.value)
