"""Few-step multistep solvers (iPNDM, DEIS) and the table-driven loop of `solve` shared by every
linear multistep solver (see `_AbstractTableSolver` in `_solvers.py`): the whole coefficient table
is computed eagerly in NumPy, and the compiled loop holds only the field and a few multiply-adds,
the same compiled loop for every solver with the same history length. Compilation is the cost of
a cold start, so this makes cold starts cheap.
"""

from __future__ import annotations

import abc
import functools
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array
from ._grid import _grid_impl
from ._solvers import (
    DDIM,
    AbstractSolver,
    Euler,
    Grid,
    Rows,
    _AbstractTableSolver,
    _effective_order,
    _history_count,
    _pick,
    grid_of,
)

# ------------------------------------------------------------------------------- iPNDM, DEIS

# Adams-Bashforth weights for equal steps, most recent value first.
_AB = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


class _AbstractNoiseMultistep(_AbstractTableSolver):
    """Multistep methods on the probability-flow ODE written in the VE-equivalent variables
    `y = x / alpha`, `rho = sigma / alpha = exp(-lambda)`: `dy/drho = eps`, the noise
    prediction. This form is exact for every Gaussian path (Karras et al. 2022); the update is
    `y1 = y0 + sum_m w_m eps_{i-m}` with weights from the grid.

    A step that starts where `alpha = 0` (infinite `rho`) is the first-order DDIM step."""

    max_order: eqx.AbstractVar[int]
    lower_order_final: eqx.AbstractVar[bool]

    exponential: ClassVar[bool] = True

    @property
    def order(self) -> int:
        return self.max_order

    @property
    def history(self) -> int:
        return self.max_order - 1

    def q_weights(self, xp, grid):
        # eps = (x - alpha D) / sigma
        return 1.0 / grid.sigma, -grid.alpha / grid.sigma

    @abc.abstractmethod
    def _weights(self, xp, grid, idx, k, count, rho) -> list:
        """The weights `w_m` (m < max_order, each of shape `idx.shape`) of the order-`k` update."""

    def rows(self, xp, grid, idx):
        n = grid.t.shape[0] - 1
        a, s, lam = grid.alpha, grid.sigma, grid.lam
        a0, s0, a1, s1 = a[idx], s[idx], a[idx + 1], s[idx + 1]
        finite = xp.isfinite(lam[idx]) & (a0 > 0)
        count = _history_count(xp, lam, idx, self.history)
        k = _effective_order(self.max_order, count, idx, n, self.lower_order_final, finite, xp=xp)
        a0s = xp.where(finite, a0, 1.0)
        rho = s / xp.where(a > 0, a, 1.0)  # a finite dummy where alpha = 0 (never selected)
        w = self._weights(xp, grid, idx, k, count, rho)
        cx = xp.where(finite, a1 / a0s, s1 / s0)
        cd = xp.where(finite, 0.0, a1)  # DDIM from alpha0 = 0: x1 = (s1/s0) x0 + a1 D0
        c = xp.stack([xp.where(finite, a1 * wm, 0.0) for wm in w], axis=-1)
        return Rows(cx, cd, c)


class IPNDM(_AbstractNoiseMultistep):
    """iPNDM (Zhang & Chen 2023, "improved PNDM"): the Adams–Bashforth method of order up to
    `max_order` on the noise prediction in the variables `y = x/alpha`, `rho = sigma/alpha`, with
    the fixed weights of equal steps and lower orders while the history fills up; 1 NFE/step.

    The leading method at NFE 5–10 in the same-network comparison of Zhou et al. (diff-sampler,
    EDM CIFAR-10). The fixed weights give order `max_order` on grids uniform in `rho` and order 2
    on other smooth grids (their error is O(h · Δh)).

    **Arguments:**

    - `max_order`: 1 to 4 (default 4, "iPNDM-4"; 1 is DDIM).
    - `lower_order_final`: lower the order over the last steps when `num_steps < 15`.

    ```python
    import jax
    import driftax.diffusion as dd
    import driftax.energies as de

    path = dd.VP()
    field = de.NoisedGaussianMixture(de.gmm9(), path)
    x = dd.solve(dd.IPNDM(), field.score, path, path.prior_sample(jax.random.key(0), (64, 2)), num_steps=10)
    ```
    """

    max_order: int = eqx.field(default=4, static=True)
    lower_order_final: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        if self.max_order not in (1, 2, 3, 4):
            raise ValueError(f"`max_order` must be 1, 2, 3 or 4, got {self.max_order!r}.")

    def _weights(self, xp, grid, idx, k, count, rho):
        h = rho[idx + 1] - rho[idx]
        zero = xp.zeros_like(h)
        by_order = [[w * h for w in _AB[j]] + [zero] * (3 - j) for j in range(4)]
        return [
            _pick(xp, k, [by_order[j][m] for j in range(self.max_order)])
            for m in range(self.max_order)
        ]


# Gauss-Legendre nodes and weights on [0, 1]
_GL_X, _GL_W = np.polynomial.legendre.leggauss(10)
_GL_X, _GL_W = 0.5 * (_GL_X + 1.0), 0.5 * _GL_W


def deis_quadrature_times(path, ts):
    """The times at the Gauss nodes in `rho = sigma/alpha` of every interval of `ts`, shape
    `(num_steps, num_nodes)` (non-finite where `alpha = 0` at an end)."""
    rho = jnp.exp(-path.half_log_snr(ts))
    nodes = rho[:-1, None] + (rho[1:] - rho[:-1])[:, None] * jnp.asarray(_GL_X, rho.dtype)
    return path.t_from_half_log_snr(-jnp.log(nodes))


class DEIS(_AbstractNoiseMultistep):
    """DEIS (Zhang & Chen 2023), the exponential integrator with polynomial extrapolation of the
    noise prediction in time ("tAB-DEIS"): over each step, `y = x/alpha` moves by
    `int eps(t) drho(t)` (`rho = sigma/alpha`), with `eps` replaced by the Lagrange polynomial in
    `t` through the last `max_order` noise predictions at their actual, unequal times; the
    integrals are computed by Gauss–Legendre quadrature in `rho` (10 nodes). 1 NFE/step, order
    `max_order` on any smooth grid.

    For a path with `alpha = 1` and `sigma = t` (EDM) this is also the ρAB-DEIS, and a step is
    exact when the noise prediction is a polynomial of degree `max_order - 1` in `t` that does
    not depend on `x`.

    **Arguments:**

    - `max_order`: 1 to 3 (default 3, "DEIS-tAB3"; 1 is DDIM).
    - `lower_order_final`: lower the order over the last steps when `num_steps < 15`.
    """

    max_order: int = eqx.field(default=3, static=True)
    lower_order_final: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        if self.max_order not in (1, 2, 3):
            raise ValueError(f"`max_order` must be 1, 2 or 3, got {self.max_order!r}.")

    def quadrature(self, path, ts):
        return deis_quadrature_times(path, ts)

    def _weights(self, xp, grid, idx, k, count, rho):
        n = grid.t.shape[0] - 1
        t = grid.t
        t0 = t[idx]
        h = t[idx + 1] - t0
        # the quadrature: times at the nodes (in rho) and the weights times the rho-length
        tq = grid.t_quad[idx]
        wq = (rho[idx + 1] - rho[idx])[..., None] * xp.asarray(_GL_W)
        tq = xp.where(xp.isfinite(tq), tq, t0[..., None])  # masked steps: finite dummies
        wq = xp.where(xp.isfinite(wq), wq, 0.0)
        nodes = [t0] + [
            xp.where(m <= count, t[xp.clip(idx - m, 0, n)], t0 - m * h)  # dummies: never used
            for m in range(1, self.max_order)
        ]
        by_order = []
        for j in range(1, self.max_order + 1):
            ws = []
            for m in range(j):
                basis = xp.ones_like(tq)
                for o in range(j):
                    if o != m:
                        basis = (
                            basis * (tq - nodes[o][..., None]) / (nodes[m] - nodes[o])[..., None]
                        )
                ws.append(xp.sum(basis * wq, axis=-1))
            by_order.append(ws + [xp.zeros_like(h)] * (self.max_order - j))
        return [
            _pick(xp, k, [by_order[j][m] for j in range(self.max_order)])
            for m in range(self.max_order)
        ]


# ------------------------------------------------------ the table form of the older solvers


def _euler_rows(xp, grid, idx):
    dt = grid.t[idx + 1] - grid.t[idx]
    return Rows(xp.ones_like(dt), xp.zeros_like(dt), dt[..., None])


def _ddim_rows(xp, grid, idx):
    lam, s, a = grid.lam, grid.sigma, grid.alpha
    h = lam[idx + 1] - lam[idx]
    c0 = -a[idx + 1] * xp.expm1(-h)
    return Rows(s[idx + 1] / s[idx], xp.zeros_like(c0), c0[..., None])


class _Table(NamedTuple):
    rows: Any  # (xp, grid, idx) -> Rows
    q_weights: Any  # (xp, grid) -> (px, pd)
    evaluate: str
    quadrature: Any = None  # (path, ts) -> times inside the intervals, or None


def _data_q(xp, grid):
    return xp.zeros_like(grid.alpha), xp.ones_like(grid.alpha)


def table_form(solver: AbstractSolver) -> _Table | None:
    """The coefficient-table form of `solver`, or None when it has none (several evaluations
    per step, noise, a corrector, or a user subclass that may change `step`)."""
    if isinstance(solver, _AbstractTableSolver):
        return _Table(solver.rows, solver.q_weights, solver.evaluate, solver.quadrature)
    if type(solver) is Euler:
        return _Table(_euler_rows, _data_q, "velocity")
    if type(solver) is DDIM and not solver.stochastic:
        return _Table(_ddim_rows, _data_q, "data")
    return None


# ------------------------------------------------------------------------------ the solve


# The grid function is tiny and runs once per solve: compiling it without XLA's optimisation
# passes halves its compile time (a cold start's second-largest cost) at no measurable run cost.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.partial(
    jax.jit,
    static_argnames=("static", "num_steps", "schedule", "derivatives", "quadrature", "dtype"),
    compiler_options=_FAST_COMPILE,
)
def _grid_values_jit(dynamic, ts, *, static, num_steps, schedule, derivatives, quadrature, dtype):
    path = eqx.combine(dynamic, static)
    if ts is None:
        ts = _grid_impl(path, num_steps, schedule, 7.0, dtype)
    return grid_of(path, ts.astype(dtype), derivatives=derivatives, quadrature=quadrature)


def _grid_values(path, ts, num_steps, schedule, derivatives, quadrature, dtype):
    """The grid (made here when `ts` is None) and the path's coefficients on it."""
    dynamic, static = eqx.partition(path, eqx.is_array)
    return _grid_values_jit(
        dynamic,
        ts,
        static=static,
        num_steps=num_steps,
        schedule=schedule,
        derivatives=derivatives,
        quadrature=quadrature,
        dtype=np.dtype(dtype),
    )


def tables(form: _Table, grid_np: Grid):
    """The whole coefficient table in float64 NumPy: `(cx, cd, c, px, pd)`."""
    g = Grid(*(None if v is None else np.asarray(v, np.float64) for v in grid_np))
    n = g.t.shape[0] - 1
    with np.errstate(all="ignore"):
        r = form.rows(np, g, np.arange(n))
        px, pd = form.q_weights(np, g)
        out = [
            np.broadcast_to(np.asarray(v, np.float64), s)
            for v, s in [
                (r.cx, (n,)),
                (r.cd, (n,)),
                (r.c, r.c.shape),
                (px, (n + 1,)),
                (pd, (n + 1,)),
            ]
        ]
    return out


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _scan_table(model, x_init, ts, cx, cd, c, px, pd, evaluate, save_trajectory):
    """The loop of every table solver: the field and a few multiply-adds per step."""
    batch = x_init.shape[0]
    num_hist = c.shape[1] - 1
    hist0 = jnp.zeros((num_hist, *x_init.shape), x_init.dtype)

    def body(carry, i):
        x, hist, failed = carry
        f = jax.vmap(lambda z: model.get(ts[i], z, evaluate))(x)
        q = px[i] * x + pd[i] * f
        x1 = cx[i] * x + cd[i] * f + c[i, 0] * q
        for m in range(num_hist):
            x1 = x1 + c[i, m + 1] * hist[m]
        if num_hist:
            hist = jnp.concatenate([q[None], hist[:-1]], axis=0)
        finite = jnp.all(jnp.isfinite(x1.reshape(batch, -1)), axis=1)
        failed = jnp.where((failed < 0) & ~finite, i.astype(jnp.int32), failed)
        return (x1, hist, failed), (x1 if save_trajectory else None)

    failed0 = jnp.full((batch,), -1, jnp.int32)
    num_steps = ts.shape[0] - 1
    (x, _, failed), traj = jax.lax.scan(body, (x_init, hist0, failed0), jnp.arange(num_steps))
    if save_trajectory:
        traj = jnp.concatenate([x_init[None], traj], axis=0)  # pyright: ignore
    return x, traj, failed, jnp.all(jnp.isfinite(x_init))


def solve_by_table(form: _Table, model, x_init: Array, ts, schedule, num_steps, save_trajectory):
    """`solve` for a solver with a table form: grid values (one small compiled function), the
    table in NumPy, then the shared loop. Returns what `_integrate` returns."""
    dtype = x_init.dtype
    grid = _grid_values(
        model.path,
        ts,
        num_steps,
        schedule,
        form.evaluate == "velocity",
        form.quadrature,
        dtype,
    )
    grid_np = Grid(*(None if v is None else np.asarray(v) for v in grid))
    # cast in NumPy and transfer: `jnp.asarray` compiles a small copy/convert per array shape,
    # which a cold start pays once per array
    cx, cd, c, px, pd = (
        jax.device_put(np.asarray(v, np.dtype(dtype))) for v in tables(form, grid_np)
    )
    x, traj, failed, finite = _scan_table(
        model, x_init, grid.t, cx, cd, c, px, pd, form.evaluate, bool(save_trajectory)
    )
    diag = {"x_init_finite": finite, "alpha": grid_np.alpha, "lam": grid_np.lam}
    return x, traj, failed, grid.t, diag


def can_use_table(x_init, ts) -> bool:
    """The table needs concrete grid values: not inside an outer transformation."""
    return not isinstance(x_init, jax.core.Tracer) and not isinstance(ts, jax.core.Tracer)
