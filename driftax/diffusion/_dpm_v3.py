"""DPM-Solver-v3 (Zheng, Lu, Bao & Zhu 2023): empirical model statistics and the solver on them.

The probability-flow ODE in the half log-SNR `lam = log(alpha/sigma)` reads
`dx/dlam = a(lam) x - sigma eps(x, lam)` with `a = dlog(alpha)/dlam` and `eps` the noise
prediction. DPM-Solver-v3 moves the part of the field that is linear in `x` and the part of its
time dependence that is linear in itself into the exponential integrator, using three
per-dimension statistics of the field along the path (the "empirical model statistics", EMS):

- `l(lam) = E[diag(sigma d eps / dx)]`, so `N = sigma eps - l x` is the least-linear remainder;
- `s(lam), b(lam)`: the least-squares fit `f' ~ s f + b` of the total `lam`-derivative of
  `f = N / alpha` along the ODE, so that `g = exp(-S) f - B` (with `S = int s`,
  `B = int exp(-S) b`) is as constant in `lam` as a linear model of `f` allows.

The exact solution of the ODE from `lam_s` to `lam_t` is then

    x_t = (alpha_t/alpha_s) exp(-(L_t - L_s)) x_s
          - alpha_t int exp(L_lam - L_t + S_lam) (g(lam) + B_lam) dlam,      L = int l,

and the solver replaces `g` by its polynomial interpolation through the current and previous
steps' values (order 1 to 3, one field evaluation per step). The integrals are computed by
Gauss-Legendre quadrature with `L, S, B` interpolated from the statistics grid. Where the field is
linear in `x` (Gaussian data), `f` does not depend on `x`, `g` is constant, and the first-order
step is exact up to the quadrature of the statistics.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_int
from .._custom_types import Array, Key
from ._path import AbstractPath
from ._solve import _checked_model
from ._solvers import AbstractSolver

__all__ = ["EmpiricalModelStatistics", "estimate_model_statistics", "DPMSolverV3"]


def _composite_gauss_legendre(panels: int = 16, nodes: int = 4):
    """Nodes on [-1, 1] and weights of `panels` equal panels of `nodes`-point Gauss-Legendre
    (the interpolated statistics are only piecewise smooth, so panels beat one high order)."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    edges = np.linspace(-1.0, 1.0, panels + 1)
    half = 0.5 * np.diff(edges)
    mid = 0.5 * (edges[1:] + edges[:-1])
    return (mid[:, None] + half[:, None] * x).ravel(), (half[:, None] * w).ravel()


_GL_NODES, _GL_WEIGHTS = _composite_gauss_legendre()


def _same_path(p: AbstractPath, q: AbstractPath) -> bool:
    if type(p) is not type(q):
        return False
    lp, lq = jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(q)
    if len(lp) != len(lq):
        return False
    try:
        return all(
            np.allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=0) for a, b in zip(lp, lq)
        )
    except (TypeError, jax.errors.ConcretizationTypeError):  # traced leaves: compare structure only
        return True


def _cumtrapz(values: Array, lams: Array) -> Array:
    """Cumulative trapezoid integral along axis 0 (first value 0)."""
    dl = jnp.diff(lams).reshape((-1,) + (1,) * (values.ndim - 1))
    inc = 0.5 * (values[1:] + values[:-1]) * dl
    return jnp.concatenate([jnp.zeros_like(values[:1]), jnp.cumsum(inc, axis=0)], axis=0)


def _interp(lams: Array, table: Array, lam: Array) -> Array:
    """Linear interpolation of `table` (shape `(T, *event)`) at scalar `lam` (clamped)."""
    i = jnp.clip(jnp.searchsorted(lams, lam, side="right") - 1, 0, lams.shape[0] - 2)
    w = jnp.clip((lam - lams[i]) / (lams[i + 1] - lams[i]), 0.0, 1.0)
    return (1.0 - w) * table[i] + w * table[i + 1]


def _interp_integral(lams: Array, values: Array, cumulative: Array, lam: Array) -> Array:
    """The exact integral from `lams[0]` to `lam` of the piecewise-linear interpolant of `values`
    (`cumulative` is its value at the grid points): consistent with `_interp` of `values`,
    which makes the integrating factor exact for the interpolated `l`."""
    i = jnp.clip(jnp.searchsorted(lams, lam, side="right") - 1, 0, lams.shape[0] - 2)
    h = lams[i + 1] - lams[i]
    d = jnp.clip(lam - lams[i], 0.0, h)
    return cumulative[i] + values[i] * d + (values[i + 1] - values[i]) * (0.5 * d * d / h)


class EmpiricalModelStatistics(eqx.Module):
    """DPM-Solver-v3's empirical model statistics of one field on one path, on a grid in the half
    log-SNR `lam` (increasing, from the noise end to the data end). Build with
    [`estimate_model_statistics`][]; use with [`DPMSolverV3`][].

    Fields: `path` (the path they were estimated on; [`DPMSolverV3`][] refuses another),
    `lams` (shape `(T,)`), the statistics `l`, `s`, `b` and their integrals `L = int l`,
    `S = int s`, `B = int exp(-S) b` from `lams[0]` (each of shape `(T, *event_shape)`).
    """

    path: AbstractPath
    lams: Array
    l: Array  # noqa: E741
    s: Array
    b: Array
    L: Array
    S: Array
    B: Array

    def __init__(self, path: AbstractPath, lams, l, s, b):  # noqa: E741
        if not isinstance(path, AbstractPath):
            raise TypeError(
                f"`path` must be a driftax.diffusion AbstractPath, got {type(path).__name__}."
            )
        lams = jnp.asarray(lams)
        if lams.ndim != 1 or lams.shape[0] < 2:
            raise ValueError(f"`lams` must be 1-D with at least 2 times, got shape {lams.shape}.")
        if not bool(jnp.all(jnp.diff(lams) > 0)):
            raise ValueError("`lams` must be strictly increasing (noise end to data end).")
        arrays = [jnp.asarray(v, lams.dtype) for v in (l, s, b)]
        for name, v in zip("lsb", arrays):
            if v.shape[:1] != lams.shape or v.shape != arrays[0].shape:
                raise ValueError(
                    f"`{name}` must have shape (len(lams), *event_shape) = "
                    f"{(lams.shape[0], *arrays[0].shape[1:])}, got {v.shape}."
                )
            if not bool(jnp.all(jnp.isfinite(v))):
                raise ValueError(f"`{name}` has non-finite entries.")
        self.path = path
        self.lams = lams
        self.l, self.s, self.b = arrays
        self.L = _cumtrapz(self.l, lams)
        self.S = _cumtrapz(self.s, lams)
        self.B = _cumtrapz(jnp.exp(-self.S) * self.b, lams)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.l.shape[1:])


def estimate_model_statistics(
    field,
    path: AbstractPath,
    data: Array,
    *,
    key: Key,
    parameterization: str = "score",
    num_times: int = 1000,
    ridge: float = 1e-8,
) -> EmpiricalModelStatistics:
    """Estimate DPM-Solver-v3's empirical model statistics (EMS) of `field` along `path`.

    At `num_times` half log-SNRs uniform over the whole path, the data are noised (`x = alpha x0 +
    sigma z`) and, per dimension: `l` is the mean diagonal of `sigma d eps/dx` (exact, one JVP per
    dimension), and `s, b` the least-squares fit of `f' ~ s f + b`, where `f = (sigma eps - l x) /
    alpha` and `f'` is its total derivative along the probability-flow ODE (a JVP in `(lam, x)`;
    `dl/dlam` by forward differentiation of the estimate). `s = Cov(f', f) / (Var f + ridge E[f^2])`, so a
    dimension where `f` does not vary with `x` (a linear field) gets `s = 0`.

    **Arguments:**

    - `field`: `field(t, x)` for one unbatched `x` (an exact field or a trained model).
    - `path`: the path the statistics are for (and that [`DPMSolverV3`][] must then sample).
    - `data`: samples of the data distribution, shape `(n, *event_shape)` (a few hundred suffice).
    - `key`: PRNG key for the noise.
    - `parameterization`: what `field` returns (`"score"`, `"noise"`, `"data"`, `"velocity"`).
    - `num_times`: size of the statistics grid (at least 8).
    - `ridge`: relative regularisation of the `s` fit (>= 0).

    **Returns:** an [`EmpiricalModelStatistics`][].
    """
    model, data = _checked_model(field, path, data, parameterization)
    num_times = check_int(num_times, "num_times", minimum=8)
    if not (isinstance(ridge, (int, float)) and np.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"`ridge` must be a finite number >= 0, got {ridge!r}.")
    if data.ndim < 2 or data.shape[0] < 2:
        raise ValueError(f"`data` must have shape (n >= 2, *event_shape), got {data.shape}.")
    ends = np.asarray(path.half_log_snr(jnp.asarray([path.t_noise, path.t_data])))
    if not np.all(np.isfinite(ends)):
        raise ValueError(
            f"the {type(path).__name__} path has an infinite log-SNR at an end; DPM-Solver-v3 "
            "needs finite ends."
        )
    lams = jnp.linspace(float(ends[0]), float(ends[1]), num_times, dtype=data.dtype)
    event = data.shape[1:]
    dim = int(np.prod(event))
    noise = jax.random.normal(key, data.shape, data.dtype)  # common to all times: smooth in lam

    def log_alpha(lam):
        return jnp.log(path.alpha(path.t_from_half_log_snr(lam)))

    def scaled_eps(lam, x):  # sigma * eps at (lam, x)
        t = path.t_from_half_log_snr(lam)
        return path.sigma(t) * model.get(t, x, "noise")

    def l_stat(lam, xs):
        def diag(x):
            basis = jnp.eye(dim, dtype=x.dtype).reshape((dim,) + event)
            cols = jax.vmap(lambda v: jax.jvp(lambda y: scaled_eps(lam, y), (x,), (v,))[1])(basis)
            return jnp.diagonal(cols.reshape(dim, dim)).reshape(event)

        return jnp.mean(jax.vmap(diag)(xs), axis=0)

    def points(lam, z):
        t = path.t_from_half_log_snr(lam)
        return path.alpha(t) * data + path.sigma(t) * z

    @jax.jit
    def first(lams, noise):
        # l and its exact lam-derivative (the noise is common to all times, so l is smooth)
        return jax.lax.map(
            lambda lam: jax.jvp(
                lambda a: l_stat(a, points(a, noise)), (lam,), (jnp.ones_like(lam),)
            ),
            lams,
        )

    l_tab, dl_tab = first(lams, noise)

    def sb_stat(lam, lv, dl, xs):
        a = jax.grad(log_alpha)(lam)
        alpha = jnp.exp(log_alpha(lam))

        def f_and_df(x):
            se, dse = jax.jvp(
                scaled_eps, (lam, x), (jnp.ones_like(lam), a * x - scaled_eps(lam, x))
            )
            f = (se - lv * x) / alpha
            # d/dlam [(se - l x) / alpha] along dx/dlam = a x - se
            df = (dse - dl * x - lv * (a * x - se)) / alpha - a * f
            return f, df

        f, df = jax.vmap(f_and_df)(xs)
        mf, mdf = jnp.mean(f, axis=0), jnp.mean(df, axis=0)
        var = jnp.mean((f - mf) ** 2, axis=0)
        cov = jnp.mean((f - mf) * (df - mdf), axis=0)
        scale = jnp.mean(f**2, axis=0) + jnp.finfo(f.dtype).tiny
        s = cov / (var + ridge * scale + jnp.finfo(f.dtype).tiny)
        s = jnp.where(var > 1e-10 * scale, s, 0.0)
        return s, mdf - s * mf

    @jax.jit
    def second(lams, l_tab, dl_tab, noise):
        return jax.lax.map(
            lambda a: sb_stat(a[0], a[1], a[2], points(a[0], noise)), (lams, l_tab, dl_tab)
        )

    s_tab, b_tab = second(lams, l_tab, dl_tab, noise)
    return EmpiricalModelStatistics(path, lams, l_tab, s_tab, b_tab)


class DPMSolverV3(AbstractSolver):
    """DPM-Solver-v3 (Zheng et al. 2023): the multistep exponential integrator on a field's
    empirical model statistics (see [`estimate_model_statistics`][]); 1 NFE/step, order up to 3.

    Run it through `driftax.diffusion.solve(DPMSolverV3(statistics), field, path, x_init, ...)`
    with the SAME path the statistics were estimated on (another path raises). The grid must lie
    in the path's log-SNR range (any grid from `t_noise` to `t_data` does).

    **Arguments:**

    - `statistics`: an [`EmpiricalModelStatistics`][].
    - `max_order`: 1 to 3 (default 3); the first steps use lower orders while the history fills.
    - `lower_order_final`: lower the order over the last steps when `num_steps < 15` (default True).
    - `corrector`: add the UniC-style corrector (default False): at the start of each step after
      the first, the previous step is redone with the field's value at its predicted end point as
      one more interpolation node (order + 1), and the step starts from that corrected point.
      The field is evaluated at the predicted point as before, so there is no extra evaluation;
      the last step is not corrected.

    Differences from the paper: the predictor interpolates `g` through the last `max_order`
    values (Lagrange); the corrector interpolates through the new value and the predictor's
    nodes, not the paper's pseudo-order differences.
    """

    statistics: EmpiricalModelStatistics
    max_order: int = eqx.field(default=3, static=True)
    lower_order_final: bool = eqx.field(default=True, static=True)
    corrector: bool = eqx.field(default=False, static=True)

    exponential: ClassVar[bool] = True

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.max_order

    def __check_init__(self):
        if not isinstance(self.statistics, EmpiricalModelStatistics):
            raise TypeError(
                "`statistics` must be EmpiricalModelStatistics (from estimate_model_statistics), "
                f"got {type(self.statistics).__name__}."
            )
        if self.max_order not in (1, 2, 3):
            raise ValueError(f"`max_order` must be 1, 2 or 3, got {self.max_order!r}.")

    def init(self, model, t0, x0) -> Any:
        st = self.statistics
        if not _same_path(model.path, st.path):
            raise ValueError(
                f"`statistics` were estimated on {st.path!r} but the solve uses path "
                f"{model.path!r}; estimate them on the path you sample."
            )
        if tuple(x0.shape) != st.event_shape:
            raise ValueError(
                f"`statistics` have event shape {st.event_shape} but the points have shape "
                f"{tuple(x0.shape)}."
            )
        size = self.max_order - 1 + int(self.corrector)
        hist = (jnp.zeros((size,) + x0.shape, x0.dtype), jnp.zeros((size,), x0.dtype))
        return (*hist, x0) if self.corrector else hist

    def _g(self, model, t, lam, x):
        st = self.statistics
        path = model.path
        alpha, sigma = path.alpha(t), path.sigma(t)
        eps = model.get(t, x, "noise")
        f = (sigma * eps - _interp(st.lams, st.l, lam) * x) / alpha
        return jnp.exp(-_interp(st.lams, st.S, lam)) * f - _interp(st.lams, st.B, lam)

    def _advance(self, path, t0, t1, x0, node_lams, node_gs, num_nodes):
        """The exponential-integrator update from `t0` to `t1` with `g` replaced by its Lagrange
        interpolant through the first `num_nodes` (a traced integer) of `node_lams/node_gs`."""
        st = self.statistics
        lam0, lam1 = path.half_log_snr(t0), path.half_log_snr(t1)
        k = node_lams.shape[0]
        h = lam1 - lam0
        q = lam0 + 0.5 * h * (jnp.asarray(_GL_NODES, x0.dtype) + 1.0)
        w = 0.5 * h * jnp.asarray(_GL_WEIGHTS, x0.dtype)
        L1 = _interp_integral(st.lams, st.l, st.L, lam1)
        kern = jax.vmap(
            lambda lq: jnp.exp(
                _interp_integral(st.lams, st.l, st.L, lq) - L1 + _interp(st.lams, st.S, lq)
            )
        )(q)  # (Q, *event)
        Bq = jax.vmap(lambda lq: _interp(st.lams, st.B, lq))(q)
        # Lagrange basis of the first `num_nodes` nodes at the quadrature points, (k, Q)
        active = jnp.arange(k) < num_nodes
        basis = []
        for m in range(k):
            val = jnp.ones_like(q)
            for j in range(k):
                if j == m:
                    continue
                den = node_lams[m] - node_lams[j]
                factor = (q - node_lams[j]) / jnp.where(active[j] & active[m], den, 1.0)
                val = val * jnp.where(active[j], factor, 1.0)
            basis.append(jnp.where(active[m], val, 0.0))
        basis = jnp.stack(basis)
        extra = (1,) * (x0.ndim)
        g_q = jnp.tensordot(basis, node_gs, axes=(0, 0))  # (Q, *event)
        integral = jnp.sum(w.reshape((-1,) + extra) * kern * (g_q + Bq), axis=0)
        a0, a1 = path.alpha(t0), path.alpha(t1)
        L0 = _interp_integral(st.lams, st.l, st.L, lam0)
        return (a1 / a0) * jnp.exp(-(L1 - L0)) * x0 - a1 * integral

    def _order(self, index, n):
        order = jnp.minimum(index + 1, self.max_order)
        if self.lower_order_final:
            order = jnp.where(n < 15, jnp.minimum(order, n - index), order)
        return jnp.maximum(order, 1)

    def step(self, model, ts, index, x0, state, *, key):
        del key
        path = model.path
        t0, t1 = ts[index], ts[index + 1]
        lam0 = path.half_log_snr(t0)
        g0 = self._g(model, t0, lam0, x0)
        k = self.max_order
        n = ts.shape[0] - 1
        if self.corrector:
            g_hist, lam_hist, x_prev = state
            # UniC-style: redo the previous step with the new value g0 as one more node (the
            # field was evaluated at the predicted x0 anyway: no extra evaluation)
            t_prev = ts[jnp.maximum(index - 1, 0)]
            nodes_c = jnp.concatenate([lam0[None], lam_hist])
            gs_c = jnp.concatenate([g0[None], g_hist])
            num_c = jnp.minimum(self._order(jnp.maximum(index - 1, 0), n) + 1, k + 1)
            x_corr = self._advance(path, t_prev, t0, x_prev, nodes_c, gs_c, num_c)
            x0 = jnp.where(index > 0, x_corr, x0)
        else:
            g_hist, lam_hist = state
        # predictor: interpolation nodes lam0 and the previous k - 1 (most recent first)
        node_lams = jnp.concatenate([lam0[None], lam_hist[: k - 1]])
        node_gs = jnp.concatenate([g0[None], g_hist[: k - 1]])
        x1 = self._advance(path, t0, t1, x0, node_lams, node_gs, self._order(index, n))
        size = g_hist.shape[0]
        if size:
            g_hist = jnp.concatenate([g0[None], g_hist[:-1]])
            lam_hist = jnp.concatenate([lam0[None], lam_hist[:-1]])
        if self.corrector:
            return x1, (g_hist, lam_hist, x0)
        return x1, (g_hist, lam_hist)
