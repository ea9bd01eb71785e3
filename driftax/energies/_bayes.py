"""Bayesian posteriors: logistic regression on the breast-cancer data, and the log-Gaussian Cox
process (LGCP) of Møller et al. (1998) on a synthetic point pattern.

The data ship inside the package (`driftax/energies/data/`, see its README for provenance and
licences) and are read with `importlib.resources`.
"""

from __future__ import annotations

import functools
import importlib.resources
import itertools
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Point, Scalar, Shape
from ._base import AbstractEnergy, AbstractKnownMoments, check_event
from ._data import AbstractDataEnergy, ControlVariate
from ._gaussian import normal_log_density

_LOGREG_DATA = "breast_cancer.npz"
_LOGREG_REFERENCE = "logreg_reference.npz"
_LGCP_DATA = "lgcp_synthetic_points.npz"
_LGCP_REFERENCE = "lgcp_reference.npz"
_LOGREG_SCRIPT = "benchmarks/make_logreg_reference.py"
_REFERENCES_SCRIPT = "benchmarks/make_references.py"


def _data_file(name: str):
    return importlib.resources.files("driftax.energies").joinpath("data").joinpath(name)


def _load_npz(name: str) -> dict[str, np.ndarray]:
    with _data_file(name).open("rb") as f, np.load(f, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# --------------------------------------------------------------------------------------------------
# Logistic regression
# --------------------------------------------------------------------------------------------------


def breast_cancer_data(standardize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The Breast Cancer Wisconsin (Diagnostic) data: 569 cases, 30 real features.

    **Arguments:**

    - `standardize`: if `True` (default), each feature is centred and divided by its population
      standard deviation (`ddof=0`, as scikit-learn's `StandardScaler`).

    **Returns:** `(X, y)`: features `(569, 30)` (float64) and labels `(569,)` (int; 1 = benign,
    0 = malignant, the scikit-learn convention).
    """
    data = _load_npz(_LOGREG_DATA)
    x, y = data["X"].astype(np.float64), data["y"].astype(np.int64)
    if standardize:
        x = (x - x.mean(0)) / x.std(0)
    return x, y


def _stored(key: str, doc: str) -> property:
    """A read-only property: the entry `key` of the stored reference run (`_ref`)."""
    return property(lambda self: self._ref(key), doc=doc)


class _ReferenceMoments(AbstractKnownMoments):
    """Reference posterior moments from a stored long NUTS run, with their Monte Carlo standard
    errors (`reference_mcse_mean` / `reference_mcse_variance`) and the run's details
    (`reference_info`). `_reference` is `None` when the stored file is missing."""

    _reference_script: ClassVar[str]
    _reference: dict[str, Array] | None
    _reference_info: tuple[tuple[str, float], ...] = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    def _ref(self, key: str) -> Array:
        if self._reference is None:
            raise NotImplementedError(
                "The reference posterior moments of this target (this variant) are not stored; "
                f"generate them with `python {self._reference_script}`."
            )
        return self._reference[key]

    mean = _stored("mean", "The reference posterior mean.")
    variance = _stored("variance", "The reference posterior variance (per coordinate).")
    reference_mcse_mean = _stored(
        "mcse_mean", "Monte Carlo standard error of the reference `mean` (per coordinate)."
    )
    reference_mcse_variance = _stored(
        "mcse_variance", "Monte Carlo standard error of the reference `variance` (per coordinate)."
    )

    @property
    def reference_info(self) -> dict[str, float]:
        """How the reference was made: chains, draws, minimum ESS, maximum split R-hat, seed."""
        self._ref("mean")  # raises if there is no reference
        return dict(self._reference_info)


class LogisticRegression(_ReferenceMoments, AbstractDataEnergy):
    r"""Bayesian logistic regression with a `N(0, prior_scale²·I)` prior on the weights `w`
    (intercept first, then one weight per standardized feature):

    `log_density(w) = Σᵢ [yᵢ zᵢ − log(1 + e^{zᵢ})] + log N(w; 0, prior_scale²·I)`, `z = X̃ w`,

    where `X̃` is the design matrix with a leading column of ones. The prior is normalized, so
    log Z is the log marginal likelihood. Build it with [`logistic_regression`][].

    **Ground truth:** `mean` and `variance` of the posterior from a long NUTS run (blackjax, float64;
    see `benchmarks/make_logreg_reference.py`), with their Monte Carlo standard errors
    `reference_mcse_mean` / `reference_mcse_variance` and the run's details in `reference_info`.
    Compare an estimate against them with a tolerance that combines both errors.

    It is a data energy ([`AbstractDataEnergy`][driftax.energies.AbstractDataEnergy]): the data
    are `(design, labels)` (569 rows), so stochastic-gradient samplers get minibatch estimates.
    """

    _reference_script: ClassVar[str] = _LOGREG_SCRIPT
    design: Array
    labels: Array
    prior_scale: float = eqx.field(static=True)
    control_variate: ControlVariate | None = None

    def log_prior(self, x: Point) -> Scalar:
        return normal_log_density(x, scale=self.prior_scale)

    def log_likelihood(self, x: Point, datum) -> Scalar:
        row, label = datum
        z = row @ x
        return label * z - jax.nn.softplus(z)

    @property
    def data(self):
        return (self.design, self.labels)

    def log_density(self, x: Point) -> Scalar:
        w = check_event(x, self.event_shape)
        z = self.design @ w
        log_lik = jnp.sum(self.labels * z - jax.nn.softplus(z))
        log_prior = normal_log_density(w, scale=self.prior_scale)
        return log_lik + log_prior


def logistic_regression(*, with_reference: bool = True) -> LogisticRegression:
    """Bayesian logistic regression on the breast-cancer data ([`LogisticRegression`][]): 31
    weights (intercept + 30 standardized features), `N(0, 1)` prior, 569 observations.

    **Arguments:**

    - `with_reference`: load the stored reference moments (default). `False` builds the target
      without them (`mean`/`variance` then raise `NotImplementedError`); the script that makes the
      reference uses this.
    """
    x, y = breast_cancer_data(standardize=True)
    design = np.concatenate([np.ones((x.shape[0], 1)), x], axis=1)
    dtype = jnp.result_type(float)
    reference, info = None, ()
    if with_reference and _data_file(_LOGREG_REFERENCE).is_file():
        raw = _load_npz(_LOGREG_REFERENCE)
        reference = {k: jnp.asarray(v, dtype) for k, v in raw.items() if np.ndim(v)}
        info = tuple((k, float(v)) for k, v in raw.items() if not np.ndim(v))
    return LogisticRegression(
        design=jnp.asarray(design, dtype),
        labels=jnp.asarray(y, dtype),
        prior_scale=1.0,
        event_shape=(design.shape[1],),
        _reference=reference,
        _reference_info=info,
    )


# --------------------------------------------------------------------------------------------------
# Log-Gaussian Cox process
# --------------------------------------------------------------------------------------------------

LGCP_SIGNAL_VARIANCE = 1.91
"""σ² of the LGCP prior (Møller et al. 1998, as in Heng et al. 2017 and AFT/CRAFT)."""
LGCP_LENGTH_SCALE = 1.0 / 33.0
"""β of the LGCP prior: the covariance is `σ² exp(−‖i − j‖ / (grid·β))` on bin indices."""
LGCP_MEAN = math.log(126.0) - 0.5 * LGCP_SIGNAL_VARIANCE
"""μ = log 126 − σ²/2 (126 is the number of points of the Finnish pines data)."""


def lgcp_covariance(grid: int) -> np.ndarray:
    """The LGCP prior covariance on a `grid×grid` lattice (NumPy float64, shape `(grid², grid²)`):
    `K[p, q] = σ² exp(−‖idx_p − idx_q‖₂ / (grid·β))`, with integer bin indices `(i, j)` flattened
    row-major (`p = i·grid + j`)."""
    idx = np.array(list(itertools.product(range(grid), range(grid))), dtype=np.float64)
    dist = np.sqrt(((idx[:, None, :] - idx[None, :, :]) ** 2).sum(-1))
    return LGCP_SIGNAL_VARIANCE * np.exp(-dist / (grid * LGCP_LENGTH_SCALE))


def bin_counts(points: np.ndarray, grid: int) -> np.ndarray:
    """Counts of `points` (shape `(n, 2)`, in `[0, 1]²`) in the cells of a `grid×grid` lattice;
    `counts[i, j]` counts points with `floor(grid·p₀) = i` and `floor(grid·p₁) = j` (points on the
    upper edge go to the last cell, as in the AFT code)."""
    cells = np.minimum(np.floor(np.asarray(points) * grid).astype(np.int64), grid - 1)
    counts = np.zeros((grid, grid), dtype=np.int64)
    np.add.at(counts, (cells[:, 0], cells[:, 1]), 1)
    return counts


def simulate_lgcp_points(seed: int = 0, grid: int = 40) -> dict[str, np.ndarray]:
    """Simulate the synthetic LGCP data set: a latent field `f ~ N(μ, K)` on a `grid×grid` lattice,
    Poisson counts with means `exp(f)/grid²`, and each count's points placed uniformly in its cell.
    This is how the shipped `lgcp_synthetic_points.npz` was made (`seed=0, grid=40`).

    **Returns:** a dict with `points` `(n, 2)`, `counts` `(grid, grid)` and `latent_field`
    `(grid, grid)`.
    """
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(lgcp_covariance(grid))
    field = LGCP_MEAN + chol @ rng.standard_normal(grid * grid)
    counts = rng.poisson(np.exp(field) / grid**2).reshape(grid, grid)
    cells = np.repeat(
        np.stack(np.unravel_index(np.arange(grid * grid), (grid, grid)), -1),
        counts.reshape(-1),
        axis=0,
    )
    points = (cells + rng.uniform(size=cells.shape)) / grid
    return {"points": points, "counts": counts, "latent_field": field.reshape(grid, grid)}


def lgcp_points() -> np.ndarray:
    """The shipped synthetic point pattern in the unit square, shape `(n, 2)` (see
    `simulate_lgcp_points`); the Finnish pines data are not shipped."""
    return _load_npz(_LGCP_DATA)["points"]


class LGCP(AbstractEnergy):
    r"""Posterior of a log-Gaussian Cox process on a `grid×grid` lattice in the unit square, as in
    Heng et al. (2017) and the AFT/CRAFT `LogGaussianCoxPines` target.

    Latent field `f ∈ ℝ^{grid²}` (bins flattened row-major), prior `N(μ·1, K)` with
    `K = σ² exp(−‖i − j‖/(grid·β))` on integer bin indices, `σ² = 1.91`, `β = 1/33`,
    `μ = log 126 − σ²/2`; discretized Poisson likelihood `Σ_p [f_p c_p − a·exp(f_p)]` with bin
    area `a = 1/grid²` (the `−log c_p!` constant is dropped, as in the AFT code). The prior is
    normalized.

    `whitened=False` (the default, as in the AFT/CRAFT experiments): the point is `f` itself.
    `whitened=True`: the point is `e` with `f = μ + L e` (`K = L Lᵀ`), the prior is `N(0, I)`.
    The two parameterisations differ by the constant Jacobian `|det L|`, which the unwhitened
    prior's normalizer absorbs, so **both have the same log Z** (the log marginal likelihood).

    **Data:** a synthetic point pattern simulated once from the prior (seed 0, see
    `simulate_lgcp_points`) is shipped; the Finnish pines data used in the papers are not, so
    numbers are not comparable to published ones. Smaller grids bin the same points.

    **Ground truth:** for the grids with a stored reference (40, the default, and 4),
    `log_normalizer` is the mean of independent tempered-SMC estimates and
    `log_normalizer_stderr` their standard error (`reference_info` has the run settings and
    cross-checks); see `benchmarks/make_references.py` and `driftax/energies/data/README.md`.
    Compare an estimate against it with a tolerance that includes `log_normalizer_stderr`. Other
    grids raise `NotImplementedError`.
    """

    grid: int = eqx.field(static=True)
    whitened: bool = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)
    counts: Array
    cholesky: Array
    mu: float = eqx.field(static=True)
    bin_area: float = eqx.field(static=True)
    half_log_det: float = eqx.field(static=True)
    _reference_info: tuple[tuple[str, float], ...] = eqx.field(static=True, default=())

    def latent_from_white(self, e: Point) -> Point:
        """`f = μ + L e`."""
        return self.mu + self.cholesky @ e

    def white_from_latent(self, f: Point) -> Point:
        """`e = L⁻¹ (f − μ)`."""
        return jax.scipy.linalg.solve_triangular(self.cholesky, f - self.mu, lower=True)

    def log_likelihood(self, f: Point) -> Scalar:
        """The discretized Poisson log likelihood of the latent field `f`."""
        return jnp.sum(f * self.counts - self.bin_area * jnp.exp(f))

    def log_density(self, x: Point) -> Scalar:
        x = check_event(x, self.event_shape)
        if self.whitened:
            e, f = x, self.latent_from_white(x)
            log_prior = normal_log_density(e)
        else:
            e, f = self.white_from_latent(x), x
            log_prior = normal_log_density(e) - self.half_log_det
        return log_prior + self.log_likelihood(f)

    @property
    def bin_counts(self) -> Array:
        """The data: counts per bin, shape `(grid, grid)`."""
        return self.counts.reshape(self.grid, self.grid)

    def _ref(self, key: str) -> float:
        info = dict(self._reference_info)
        if not info:
            grids = ", ".join(str(g) for g in _lgcp_reference_grids()) or "none"
            raise NotImplementedError(
                f"No reference log Z is stored for the {self.grid}x{self.grid} LGCP (stored grids: "
                f"{grids}); it needs a long SMC run: `python {_REFERENCES_SCRIPT} --target lgcp "
                f"--grids {self.grid}` (issue 6)."
            )
        return info[key]

    @property
    def log_normalizer(self) -> Scalar:
        """The reference log Z (log marginal likelihood, the same in both parameterisations): the
        mean of independent tempered-SMC runs. Its standard error is `log_normalizer_stderr`.
        Raises `NotImplementedError` for grids without a stored reference."""
        return jnp.asarray(self._ref("log_z"), jnp.result_type(float))

    @property
    def log_normalizer_stderr(self) -> float:
        """The standard error of `log_normalizer` (standard deviation of the independent SMC
        estimates / √runs)."""
        return self._ref("log_z_se")

    @property
    def reference_info(self) -> dict[str, float]:
        """How the reference log Z was made: runs, particles, MCMC steps, stages, acceptance,
        seed, seconds, and the cross-checks (`is_log_z` ± `is_log_z_se` by importance sampling
        from the variational Gaussian, with `is_ess`; `elbo`; `log_z_laplace`)."""
        self._ref("log_z")
        return dict(self._reference_info)


@functools.cache
def _lgcp_reference_table() -> dict[int, dict[str, float]]:
    if not _data_file(_LGCP_REFERENCE).is_file():
        return {}
    raw = _load_npz(_LGCP_REFERENCE)
    table = {}
    for grid in raw["grids"]:
        prefix = f"grid{int(grid)}_"
        table[int(grid)] = {
            k[len(prefix) :]: float(v)
            for k, v in raw.items()
            if k.startswith(prefix) and np.ndim(v) == 0
        }
    return table


def _lgcp_reference_grids() -> list[int]:
    return sorted(_lgcp_reference_table())


def lgcp(grid: int = 40, *, whitened: bool = False) -> LGCP:
    """The log-Gaussian Cox process target ([`LGCP`][]) on a `grid×grid` lattice (event shape
    `(grid²,)`; 1600 dimensions for the default 40×40).

    **Arguments:**

    - `grid`: cells per side (an int ≥ 1); small grids are for tests.
    - `whitened`: `False` (default): the latent field itself; `True`: the whitened
      parameterisation `f = μ + L e`. Same log Z either way.

    `log_normalizer` (± `log_normalizer_stderr`) is the stored SMC reference for `grid` 40 and 4.
    """
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ValueError(f"`grid` must be an int >= 1, got {grid!r}.")
    if not isinstance(whitened, (bool, np.bool_)):
        raise TypeError(f"`whitened` must be a bool, got {whitened!r}.")
    grid = int(grid)
    counts = bin_counts(lgcp_points(), grid).reshape(-1)
    chol = np.linalg.cholesky(lgcp_covariance(grid))
    dtype = jnp.result_type(float)
    return LGCP(
        grid=grid,
        whitened=bool(whitened),
        event_shape=(grid * grid,),
        counts=jnp.asarray(counts, dtype),
        cholesky=jnp.asarray(chol, dtype),
        mu=float(LGCP_MEAN),
        bin_area=1.0 / grid**2,
        half_log_det=float(np.sum(np.log(np.diag(chol)))),
        _reference_info=tuple(sorted(_lgcp_reference_table().get(grid, {}).items())),
    )
