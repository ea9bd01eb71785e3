"""Classic low-dimensional reference targets: funnel, banana, many-well, double well, Rezende–Mohamed."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate

from .._checks import check_finite, check_int, check_positive, check_sample_shape
from .._custom_types import Array, Key, Point, Scalar, Shape
from ._base import (
    AbstractKnownMoments,
    AbstractKnownNormalizer,
    AbstractSampleable,
    check_event,
)
from ._gaussian import normal_log_density

_LOG_2PI = math.log(2.0 * math.pi)


class _AbstractNormalizedCentred(AbstractSampleable, AbstractKnownNormalizer, AbstractKnownMoments):
    """A normalized target (`log_normalizer == 0`) with mean zero: subclasses give `variance`."""

    @property
    def log_normalizer(self) -> Scalar:
        return jnp.zeros(())

    @property
    def mean(self) -> Array:
        return jnp.zeros(self.event_shape)


class Funnel(_AbstractNormalizedCentred):
    """Neal's funnel: `x₀ ~ N(0, scale²)`, `xᵢ | x₀ ~ N(0, exp(x₀))` for `i = 1..dim-1`.

    Normalized (`log_normalizer == 0`), with exact samples and moments
    (`Var xᵢ = exp(scale²/2)`). Build it with [`funnel`][].
    """

    scale: float = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    def log_density(self, x: Point) -> Scalar:
        x = check_event(x, self.event_shape)
        x0, rest = x[0], x[1:]
        return normal_log_density(x0, scale=self.scale) + (
            normal_log_density(rest, log_scale=0.5 * x0)
        )

    def sample(self, key: Key, shape: Shape | int = ()) -> Array:
        shape = check_sample_shape(shape)
        eps = jax.random.normal(key, (*shape, *self.event_shape))
        x0 = self.scale * eps[..., :1]
        return jnp.concatenate([x0, eps[..., 1:] * jnp.exp(0.5 * x0)], axis=-1)

    @property
    def variance(self) -> Array:
        d = self.event_shape[0]
        rest = math.exp(0.5 * self.scale**2)
        return jnp.asarray([self.scale**2] + [rest] * (d - 1))


def funnel(dim: int = 10, *, scale: float = 3.0) -> Funnel:
    """Neal's funnel in `dim` dimensions (default 10) with `x₀ ~ N(0, scale²)` (default scale 3)."""
    dim = check_int(dim, "dim", minimum=2)
    return Funnel(scale=float(check_positive(scale, "scale")), event_shape=(dim,))


class Banana(_AbstractNormalizedCentred):
    """The twisted Gaussian: `x₁ ~ N(0, scale²)`, `x₂ | x₁ ~ N(curvature·(x₁² − scale²), 1)`,
    further coordinates `N(0, 1)`.

    Normalized, with exact samples and moments (`Var x₂ = 1 + 2 curvature² scale⁴`). Build it
    with [`banana`][].
    """

    scale: float = eqx.field(static=True)
    curvature: float = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    def log_density(self, x: Point) -> Scalar:
        x = check_event(x, self.event_shape)
        shift = self.curvature * (x[0] ** 2 - self.scale**2)
        lp = normal_log_density(x[0], scale=self.scale) + normal_log_density(x[1] - shift)
        return lp + normal_log_density(x[2:])

    def sample(self, key: Key, shape: Shape | int = ()) -> Array:
        shape = check_sample_shape(shape)
        eps = jax.random.normal(key, (*shape, *self.event_shape))
        x0 = self.scale * eps[..., 0]
        x1 = eps[..., 1] + self.curvature * (x0**2 - self.scale**2)
        return jnp.concatenate([x0[..., None], x1[..., None], eps[..., 2:]], axis=-1)

    @property
    def variance(self) -> Array:
        v = np.ones(self.event_shape)
        v[0] = self.scale**2
        v[1] = 1.0 + 2.0 * self.curvature**2 * self.scale**4
        return jnp.asarray(v)


def banana(dim: int = 2, *, scale: float = 10.0, curvature: float = 0.03) -> Banana:
    """The banana (twisted Gaussian) target; `dim >= 2`, extra coordinates are standard normal."""
    dim = check_int(dim, "dim", minimum=2)
    return Banana(
        scale=float(check_positive(scale, "scale")),
        curvature=float(check_finite(curvature, "curvature")),
        event_shape=(dim,),
    )


class _Well1D:
    """Quadrature facts of the 1-D well `exp(-a x⁴ + b x² + c x)` (computed once, in float64)."""

    def __init__(self, a: float, b: float, c: float):
        self.a, self.b, self.c = a, b, c
        self.bound = self._support()
        f = self.unnormalized
        mode_grid = np.linspace(-self.bound, self.bound, 200_001)
        self.log_max = float(np.max(self.log_unnormalized(mode_grid))) + 1e-9
        self.z = integrate.quad(f, -np.inf, np.inf, epsabs=0, epsrel=1e-13, limit=200)[0]
        self.m1 = (
            integrate.quad(lambda x: x * f(x), -np.inf, np.inf, epsrel=1e-13, limit=200)[0] / self.z
        )
        m2 = integrate.quad(lambda x: x * x * f(x), -np.inf, np.inf, epsrel=1e-13, limit=200)[0]
        self.var = m2 / self.z - self.m1**2

    def log_unnormalized(self, x):
        return -self.a * x**4 + self.b * x**2 + self.c * x

    def unnormalized(self, x):
        return float(np.exp(self.log_unnormalized(x)))

    def _support(self) -> float:
        # Smallest symmetric interval outside which the density is below e^-60 of its peak.
        grid = np.linspace(-50, 50, 200_001)
        lp = self.log_unnormalized(grid)
        keep = grid[lp > lp.max() - 60.0]
        return float(max(abs(keep.min()), abs(keep.max())))


class ManyWell(AbstractSampleable, AbstractKnownNormalizer, AbstractKnownMoments):
    """`dim/2` independent copies of a 2-D double well on consecutive coordinate pairs
    `(x₀, x₁), (x₂, x₃), …`: `log p(x₁, x₂) = −a x₁⁴ + b x₁² + c x₁ − ½ x₂²`.

    The default `(a, b, c) = (1, 6, 0.5)` is the ManyWell of FAB and of the diffusion-sampler
    benchmarks. log Z, moments and exact samples come from 1-D quadrature and rejection
    sampling (the first coordinate of each pair, on an interval outside which the density is
    below `e⁻⁶⁰` of its peak; the second is standard normal). Build it with [`many_well`][] or
    [`double_well_2d`][].
    """

    a: float = eqx.field(static=True)
    b: float = eqx.field(static=True)
    c: float = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    @property
    def _well(self) -> _Well1D:
        return _well_facts(self.a, self.b, self.c)

    def log_density(self, x: Point) -> Scalar:
        x = check_event(x, self.event_shape)
        pairs = x.reshape(-1, 2)
        x1, x2 = pairs[:, 0], pairs[:, 1]
        return jnp.sum(-self.a * x1**4 + self.b * x1**2 + self.c * x1 - 0.5 * x2**2)

    def marginal_log_density(self, x1: Array) -> Array:
        """Normalized log density of the first coordinate of one pair (free energy = −this)."""
        w = self._well
        return -self.a * x1**4 + self.b * x1**2 + self.c * x1 - math.log(w.z)

    def sample(self, key: Key, shape: Shape | int = ()) -> Array:
        shape = check_sample_shape(shape)
        n_pairs = self.event_shape[0] // 2
        k1, k2 = jax.random.split(key)
        n = math.prod(shape) * n_pairs
        x1 = _rejection_1d(k1, n, self._well)
        x2 = jax.random.normal(k2, (n,), dtype=x1.dtype)
        return jnp.stack([x1, x2], axis=-1).reshape(*shape, *self.event_shape)

    @property
    def log_normalizer(self) -> Scalar:
        n_pairs = self.event_shape[0] // 2
        return jnp.asarray(n_pairs * (math.log(self._well.z) + 0.5 * _LOG_2PI))

    @property
    def mean(self) -> Array:
        n_pairs = self.event_shape[0] // 2
        return jnp.asarray(np.tile([self._well.m1, 0.0], n_pairs))

    @property
    def variance(self) -> Array:
        n_pairs = self.event_shape[0] // 2
        return jnp.asarray(np.tile([self._well.var, 1.0], n_pairs))

    @property
    def num_modes(self) -> int:
        """Number of modes, `2^(dim/2)`."""
        return 2 ** (self.event_shape[0] // 2)


_WELLS: dict[tuple[float, float, float], _Well1D] = {}


def _well_facts(a: float, b: float, c: float) -> _Well1D:
    k = (a, b, c)
    if k not in _WELLS:
        _WELLS[k] = _Well1D(a, b, c)
    return _WELLS[k]


def _rejection_1d(key: Key, n: int, well: _Well1D) -> Array:
    """Exact rejection sampling of `exp(-a x⁴ + b x² + c x)` from a uniform envelope."""
    lo, hi, log_m = -well.bound, well.bound, well.log_max
    a, b, c = well.a, well.b, well.c

    def one(k):
        def cond(state):
            return ~state[2]

        def body(state):
            k, _, _ = state
            k, ku, ka = jax.random.split(k, 3)
            x = jax.random.uniform(ku, (), minval=lo, maxval=hi)
            log_u = jnp.log(jax.random.uniform(ka, ()))
            return k, x, log_u <= (-a * x**4 + b * x**2 + c * x) - log_m

        return jax.lax.while_loop(cond, body, (k, jnp.zeros(()), jnp.array(False)))[1]

    return jax.vmap(one)(jax.random.split(key, n))


def many_well(d: int = 32, *, a: float = 1.0, b: float = 6.0, c: float = 0.5) -> ManyWell:
    """The ManyWell target in `d` dimensions (even; default 32, `2^16` modes).

    With the defaults, `log Z = (d/2)·(ln 11784.50927 + ½ ln 2π)` (164.696 for d = 32).
    """
    d = check_int(d, "d", minimum=2, even=True)
    a = float(check_positive(a, "a"))
    return ManyWell(
        a=a, b=float(check_finite(b, "b")), c=float(check_finite(c, "c")), event_shape=(d,)
    )


def double_well_2d(*, a: float = 1.0, b: float = 6.0, c: float = 0.5) -> ManyWell:
    """The 2-D double well of the stochastic-normalizing-flows paper,
    `E(x) = x₁⁴ − 6x₁² − 0.5x₁ + ½x₂²`, with 1-D quadrature ground truth (a `ManyWell` with d = 2)."""
    return many_well(2, a=a, b=b, c=c)


# --- Rezende & Mohamed (2015) test energies: U1 on R^2, U2-U4 on a box----------------------------------


def _w1(z1):
    return jnp.sin(2.0 * jnp.pi * z1 / 4.0)


def _rm_energy(name: str, z, xp=jnp):
    z1, z2 = z[..., 0], z[..., 1]
    logaddexp = xp.logaddexp
    if name == "u1":
        r = xp.sqrt(z1**2 + z2**2)
        return 0.5 * ((r - 2.0) / 0.4) ** 2 - logaddexp(
            -0.5 * ((z1 - 2.0) / 0.6) ** 2, -0.5 * ((z1 + 2.0) / 0.6) ** 2
        )
    w1 = xp.sin(2.0 * np.pi * z1 / 4.0)
    if name == "u2":
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if name == "u3":
        w2 = 3.0 * xp.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)
        return -logaddexp(-0.5 * ((z2 - w1) / 0.35) ** 2, -0.5 * ((z2 - w1 + w2) / 0.35) ** 2)
    w3 = 3.0 / (1.0 + xp.exp(-(z1 - 1.0) / 0.3))
    return -logaddexp(-0.5 * ((z2 - w1) / 0.4) ** 2, -0.5 * ((z2 - w1 + w3) / 0.35) ** 2)


_RM_NAMES = ("u1", "u2", "u3", "u4", "u1_box")
_RM_LOG_MAX = {"u1": math.log(2.0), "u2": 0.0, "u3": math.log(2.0), "u4": math.log(2.0)}
_RM_GRID: dict[tuple[str, float], tuple[float, np.ndarray, np.ndarray]] = {}
# U1 on R^2: its mass lies on the ring r = 2 (radial scale 0.4); outside [-8, 8]^2 (r > 8, 15
# radial scales out) the density is below exp(-110), so quadrature there is its integral on R^2.
_U1_QUADRATURE_HALF_WIDTH = 8.0
_U1_RING, _U1_RING_SCALE = 2.0, 0.4


def _rm_grid_facts(name: str, half_width: float, n: int = 2001):
    """log Z, mean and variance on the box by composite Simpson quadrature on an n×n grid."""
    key = (name, half_width)
    if key not in _RM_GRID:
        g = np.linspace(-half_width, half_width, n)
        z1, z2 = np.meshgrid(g, g, indexing="ij")
        p = np.exp(-_rm_energy(name, np.stack([z1, z2], -1), xp=np))
        z = integrate.simpson(integrate.simpson(p, x=g, axis=1), x=g)
        m = np.array(
            [integrate.simpson(integrate.simpson(p * c, x=g, axis=1), x=g) / z for c in (z1, z2)]
        )
        s = np.array(
            [
                integrate.simpson(integrate.simpson(p * (c - mc) ** 2, x=g, axis=1), x=g) / z
                for c, mc in ((z1, m[0]), (z2, m[1]))
            ]
        )
        _RM_GRID[key] = (float(np.log(z)), m, s)
    return _RM_GRID[key]


def _box_rejection(key: Key, name: str, h: float, dtype) -> Array:
    """One exact draw of `exp(-U)` on `[-h, h]^2`: uniform proposals, accepted with
    `exp(-U - max(-U))`."""
    log_m = _RM_LOG_MAX[name]

    def body(state):
        k, _, _ = state
        k, ku, ka = jax.random.split(k, 3)
        z = jax.random.uniform(ku, (2,), dtype, minval=-h, maxval=h)
        log_u = jnp.log(jax.random.uniform(ka, (), dtype))
        return k, z, log_u <= -_rm_energy(name, z) - log_m

    init = (key, jnp.zeros(2, dtype), jnp.array(False))
    return jax.lax.while_loop(lambda s: ~s[2], body, init)[1]


def _u1_rejection(key: Key, dtype) -> Array:
    """One exact draw of `exp(-U1)` on R^2.

    Write `exp(-U1(z)) = phi(r) m(z1)` with `phi(r) = exp(-(r - 2)^2 / (2 s^2))`, `s = 0.4`, and
    the bimodal factor `m = exp(-(z1-2)^2/0.72) + exp(-(z1+2)^2/0.72) <= 2`. In polar coordinates
    the radius has density `∝ r phi(r)` on `r > 0`, bounded by `(2 + |u|) phi` with `u = r - 2`:
    a mixture of `u ~ N(0, s^2)` (weight `2 s sqrt(2 pi)`) and `u = ±Rayleigh(s)` (weight
    `2 s^2`). A proposal from that mixture with a uniform angle is accepted with probability
    `r 1[r > 0] / (2 + |u|) · m(z1) / 2`, which gives exactly `exp(-U1)`.
    """
    s, ring = _U1_RING_SCALE, _U1_RING
    p_normal = 2.0 * s * math.sqrt(2.0 * math.pi)
    p_normal = p_normal / (p_normal + 2.0 * s * s)

    def body(state):
        k, _, _ = state
        k, kc, kn, kr, ks, kt, ka = jax.random.split(k, 7)
        normal = s * jax.random.normal(kn, (), dtype)
        rayleigh = s * jnp.sqrt(-2.0 * jnp.log(jax.random.uniform(kr, (), dtype, minval=1e-300)))
        sign = jnp.where(jax.random.bernoulli(ks), 1.0, -1.0).astype(dtype)
        u = jnp.where(jax.random.bernoulli(kc, p_normal), normal, sign * rayleigh)
        r = ring + u
        theta = jax.random.uniform(kt, (), dtype, maxval=2.0 * math.pi)
        z = jnp.stack([r * jnp.cos(theta), r * jnp.sin(theta)])
        z1 = z[0]
        log_m = jnp.logaddexp(-0.5 * ((z1 - 2.0) / 0.6) ** 2, -0.5 * ((z1 + 2.0) / 0.6) ** 2)
        log_acc = jnp.log(jnp.maximum(r, 0.0)) - jnp.log(ring + jnp.abs(u)) + log_m - math.log(2.0)
        log_v = jnp.log(jax.random.uniform(ka, (), dtype))
        return k, z, (r > 0) & (log_v <= log_acc)

    init = (key, jnp.zeros(2, dtype), jnp.array(False))
    return jax.lax.while_loop(lambda st: ~st[2], body, init)[1]


class RezendeMohamed(AbstractSampleable, AbstractKnownNormalizer, AbstractKnownMoments):
    """One of the four 2-D test energies U1–U4 of Rezende & Mohamed (2015): `log_density = −U(z)`.

    U1 (a ring of radius 2 with two lobes) is normalizable and lives on ℝ² (`half_width=None`),
    as in the paper. U2–U4 are not normalizable on ℝ² (no confinement in z₁), so they live on the
    box `[−half_width, half_width]²` (default 4), `−inf` outside; a boxed U1 is the variant
    `"u1_box"` (or `"u1"` with an explicit `half_width`). Mixtures use `logaddexp`.

    log Z and moments come from Simpson quadrature on a 2001² grid (on the box, or on
    `[−8, 8]²` for U1 on ℝ², outside which its density is below `e^{−110}`). `sample` is exact
    rejection sampling: from the uniform distribution on the box (`exp(−U) ≤ 2`), or for U1 on ℝ²
    from a ring-shaped proposal (see `_u1_rejection`). Build it with [`rezende`][].
    """

    name: str = eqx.field(static=True)
    half_width: float | None = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)

    def log_density(self, x: Point) -> Scalar:
        x = check_event(x, self.event_shape)
        if self.half_width is None:
            return -_rm_energy(self.name, x)
        inside = jnp.all(jnp.abs(x) <= self.half_width)
        return jnp.where(inside, -_rm_energy(self.name, x), -jnp.inf)

    def sample(self, key: Key, shape: Shape | int = ()) -> Array:
        shape = check_sample_shape(shape)
        dtype = jnp.result_type(float)
        half_width = self.half_width
        if half_width is None:
            one = lambda k: _u1_rejection(k, dtype)
        else:
            one = lambda k: _box_rejection(k, self.name, half_width, dtype)
        n = math.prod(shape)
        return jax.vmap(one)(jax.random.split(key, n)).reshape(*shape, 2)

    def _facts(self):
        h = _U1_QUADRATURE_HALF_WIDTH if self.half_width is None else self.half_width
        return _rm_grid_facts(self.name, h)

    @property
    def log_normalizer(self) -> Scalar:
        return jnp.asarray(self._facts()[0])

    @property
    def mean(self) -> Array:
        return jnp.asarray(self._facts()[1])

    @property
    def variance(self) -> Array:
        return jnp.asarray(self._facts()[2])


def rezende(name: str = "u1", *, half_width: float | None = None) -> RezendeMohamed:
    """The Rezende–Mohamed test energy `name` ∈ {"u1", "u2", "u3", "u4", "u1_box"}.

    `"u1"` lives on ℝ² (as in the paper) unless a `half_width` is given; `"u2"`–`"u4"` and
    `"u1_box"` live on the box `[−half_width, half_width]²` (default `half_width = 4`).
    """
    if not isinstance(name, str) or name.lower() not in _RM_NAMES:
        raise ValueError(f"`name` must be one of {_RM_NAMES}, got {name!r}.")
    name = name.lower()
    if name == "u1" and half_width is None:
        return RezendeMohamed(name="u1", half_width=None, event_shape=(2,))
    name = "u1" if name == "u1_box" else name
    hw = 4.0 if half_width is None else float(check_positive(half_width, "half_width"))
    return RezendeMohamed(name=name, half_width=hw, event_shape=(2,))
