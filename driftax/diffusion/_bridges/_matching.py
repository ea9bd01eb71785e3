"""Bridge matching: conditional flow matching with minibatch couplings (independent, exact OT,
entropic OT with Brownian-bridge noise = SB-CFM, Tong et al. 2024) and the diffusion
Schrödinger bridge by iterative Markovian fitting (DSBM / IMF, Shi et al. 2023), whose
alternating forward / backward bridge matching converges to the Schrödinger bridge.

Brownian bridge between a pair `(x0, x1)` with reference `sigma W`:
`x_t = (1 - t) x0 + t x1 + sigma sqrt(t (1 - t)) z`; its forward drift is
`(x1 - x_t) / (1 - t)`, its backward drift (in reversed time) `(x0 - x_t) / t`, and its
probability-flow velocity `x1 - x0 + sigma (1 - 2t) / (2 sqrt(t (1 - t))) z`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._checks import check_int
from ..._custom_types import Array, Key, Point, Scalar, ScalarLike
from ._fit import check_marginals, fit_bridge
from ._gaussian import check_sigma
from ._ot import entropic_plan, exact_assignment

_COUPLINGS = ("independent", "exact", "entropic", "given")


class BridgeDrift(eqx.Module):
    """A learned bridge: networks `forward(t, x)` and/or `backward(t, x)` (ONE unbatched `x`,
    bridge time `t` in `[0, 1]`) and the reference noise `sigma`.

    - `kind="drift"`: `forward` is the SDE drift `dX = drift dt + sigma dW` from `t = 0` to
      `t = 1` and `backward` the drift of the reversed SDE from `t = 1` to `t = 0` (DSBM keeps
      both); [`solve_bridge`][] runs either.
    - `kind="velocity"`: `forward` is a probability-flow velocity (flow matching / SB-CFM),
      solved as an ODE with `Euler()` / `Heun()`.
    """

    forward: Callable | None
    backward: Callable | None = None
    sigma: float = eqx.field(static=True, default=0.0)
    kind: str = eqx.field(static=True, default="drift")

    def __check_init__(self):
        if self.kind not in ("drift", "velocity"):
            raise ValueError(f"`kind` must be 'drift' or 'velocity', got {self.kind!r}.")
        if self.forward is None and self.backward is None:
            raise ValueError("give a `forward` or a `backward` network.")
        if not (self.sigma >= 0):
            raise ValueError(f"`sigma` must be >= 0, got {self.sigma!r}.")
        if self.kind == "velocity" and self.backward is not None:
            raise ValueError("a velocity model has no `backward` network.")

    def drift(self, t: ScalarLike, x: Point) -> Point:
        """The forward SDE drift (`kind="drift"`; for `kind="velocity"` only with `sigma=0`)."""
        if self.forward is None or (self.kind == "velocity" and self.sigma > 0):
            raise TypeError("this bridge has no forward SDE drift.")
        return self.forward(t, x)

    def backward_drift(self, t: ScalarLike, x: Point) -> Point:
        """The drift of the reversed SDE at bridge time `t`."""
        if self.backward is None:
            raise TypeError("this bridge has no `backward` network.")
        return self.backward(t, x)

    def velocity(self, t: ScalarLike, x: Point) -> Point:
        """The probability-flow velocity (`kind="velocity"`)."""
        if self.kind != "velocity" or self.forward is None:
            raise TypeError("a drift model has no probability-flow velocity (no score).")
        return self.forward(t, x)


class AffineDrift(eqx.Module):
    """A field affine in `x` with polynomial coefficients in `t`: `f(t, x) = b(t) + A(t) x`,
    `b` and `A` each a Chebyshev series of degree `degree` in `2t - 1` (starts at zero).

    The drifts, backward drifts and probability-flow velocities of every Gaussian Schrödinger
    bridge (and of every Gaussian-to-Gaussian bridge-matching fixed point) are of this form, so
    it isolates the error of a bridge-matching algorithm from that of a network: use it as the
    `forward` / `backward` net of a [`BridgeDrift`][] on Gaussian endpoints.

    **Arguments:** `dim` (`d`), `degree` (`>= 0`, default 6). Called on ONE unbatched `x`.
    """

    coeffs: Array  # (degree + 1, d, d + 1): [A_k | b_k]
    degree: int = eqx.field(static=True)

    def __init__(self, dim: int, degree: int = 6):
        d = check_int(dim, "dim")
        self.degree = check_int(degree, "degree", minimum=0)
        self.coeffs = jnp.zeros((self.degree + 1, d, d + 1), jnp.result_type(float))

    def __call__(self, t: ScalarLike, x: Point) -> Point:
        s = 2.0 * jnp.asarray(t, self.coeffs.dtype) - 1.0
        basis = [jnp.ones_like(s), s]
        for _ in range(2, self.degree + 1):
            basis.append(2.0 * s * basis[-1] - basis[-2])
        mat = jnp.tensordot(jnp.stack(basis[: self.degree + 1]), self.coeffs, 1)
        return mat[:, :-1] @ x + mat[:, -1]


def _pair(coupling, key, x0, x1, sigma):
    if coupling in ("independent", "given"):
        return x0, x1
    if coupling == "exact":
        return x0, x1[exact_assignment(x0, x1)]
    plan = entropic_plan(x0, x1, epsilon=2.0 * sigma**2)
    idx = jax.random.categorical(key, jnp.log(plan + 1e-30), axis=1)
    return x0, x1[idx]


class BridgeMatchingLoss(eqx.Module):
    """Regression of a [`BridgeDrift`][] onto Brownian-bridge targets, on a batch `(x0, x1)` of
    source and target samples paired by a minibatch coupling.

    **Fields:**

    - `sigma`: the bridge noise (`0`: straight interpolation, plain conditional flow matching).
    - `coupling`: `"independent"` (CFM), `"exact"` (exact OT on the minibatch by the Hungarian
      algorithm: OT-CFM), `"entropic"` (pairs drawn from the Sinkhorn plan with `epsilon =
      2 sigma^2` for the cost `|x - y|^2`: SB-CFM, needs `sigma > 0`), or `"given"` (the batch
      rows are already pairs, e.g. from [`dsbm`][]'s simulated couplings).
    - `direction`: `"forward"` trains `model.forward` (drift target `(x1 - x_t) / (1 - t)`, or
      the velocity target for `kind="velocity"`), `"backward"` trains `model.backward`
      (target `(x0 - x_t) / t`).
    - `t_min`: times are uniform on `[t_min, 1 - t_min]` (the drift targets blow up at the ends).
    """

    sigma: float = eqx.field(static=True, default=0.0)
    coupling: str = eqx.field(static=True, default="independent")
    direction: str = eqx.field(static=True, default="forward")
    t_min: float = eqx.field(static=True, default=1e-3)

    def __check_init__(self):
        if not self.sigma >= 0:
            raise ValueError(f"`sigma` must be >= 0, got {self.sigma!r}.")
        if self.coupling not in _COUPLINGS:
            raise ValueError(f"`coupling` must be one of {_COUPLINGS}, got {self.coupling!r}.")
        if self.coupling == "entropic" and not self.sigma > 0:
            raise ValueError(
                "coupling='entropic' (SB-CFM) needs `sigma` > 0 (epsilon = 2 sigma^2)."
            )
        if self.direction not in ("forward", "backward"):
            raise ValueError(
                f"`direction` must be 'forward' or 'backward', got {self.direction!r}."
            )
        if not 0 <= self.t_min < 0.5:
            raise ValueError(f"`t_min` must lie in [0, 0.5), got {self.t_min!r}.")

    def __call__(self, model: BridgeDrift, batch, *, key: Key) -> Scalar:
        x0, x1 = batch
        kc, kt, kz = jax.random.split(key, 3)
        x0, x1 = _pair(self.coupling, kc, x0, x1, self.sigma)
        n = x0.shape[0]
        t = jax.random.uniform(kt, (n,), x0.dtype, self.t_min, 1.0 - self.t_min)
        z = jax.random.normal(kz, x0.shape, x0.dtype)
        sigma = self.sigma
        velocity = model.kind == "velocity"
        forward = self.direction == "forward"
        net = model.forward if forward else model.backward
        if net is None:
            raise ValueError(
                f"direction={self.direction!r} needs the model's {self.direction} net."
            )

        def one(a, b, zz, ti):
            s = jnp.sqrt(ti * (1.0 - ti))
            xt = (1.0 - ti) * a + ti * b + sigma * s * zz
            if velocity:
                want = b - a + sigma * (1.0 - 2.0 * ti) / (2.0 * s) * zz
            elif forward:
                want = (b - xt) / (1.0 - ti)
            else:
                want = (a - xt) / ti
            return jnp.mean((net(ti, xt) - want) ** 2)

        return jnp.mean(jax.vmap(one)(x0, x1, z, t))


class DSBMResult(eqx.Module):
    """What [`dsbm`][] returns: the final bridge (both drifts) and the loss of every fit."""

    bridge: BridgeDrift
    losses: Array  # (num_iterations, num_steps)


def dsbm(
    bridge: BridgeDrift,
    source: Array,
    target: Array,
    *,
    key: Key,
    optimizer,
    num_iterations: int,
    num_steps: int,
    batch_size: int = 256,
    num_sde_steps: int = 50,
    num_pairs: int | None = None,
) -> DSBMResult:
    """The diffusion Schrödinger bridge by iterative Markovian fitting (DSBM-IMF, Shi et al.
    2023), alternating forward and backward bridge matching.

    Iteration 0 fits the forward drift on the independent coupling (a bridge-matching / SGM
    initialization). Each later iteration simulates the last fitted process to get a new
    coupling and fits the OTHER direction on it: after a forward fit, pairs
    `(x0, X1)` with `x0 ~ source` and `X1` simulated forward train the backward drift; after a
    backward fit, pairs `(X0, x1)` with `x1 ~ target` simulated backward train the forward
    drift. Each fit is the Markovian projection of the mixture of Brownian bridges over the
    current coupling; the alternation keeps the true marginal on the side that was not
    simulated, and the fixed point is the Schrödinger bridge with reference `bridge.sigma · W`.

    **Arguments:** `bridge` (a [`BridgeDrift`][] with `kind="drift"`, both nets and
    `sigma > 0`), `source`, `target` (samples `(n0, d)`, `(n1, d)`), `key`, `optimizer`,
    `num_iterations` (fits, `>= 1`), `num_steps` and `batch_size` (per fit), `num_sde_steps`
    (Euler–Maruyama steps of each simulation), `num_pairs` (pairs simulated per iteration,
    default `min(n0, n1)`).

    **Returns:** a [`DSBMResult`][] (the last forward fit is the drift to use for
    `source -> target`).
    """
    from ._solve import solve_bridge

    if not isinstance(bridge, BridgeDrift) or bridge.kind != "drift":
        raise TypeError("`bridge` must be a BridgeDrift(kind='drift').")
    if bridge.forward is None or bridge.backward is None:
        raise ValueError("`bridge` needs both a `forward` and a `backward` network.")
    check_sigma(bridge.sigma, "bridge.sigma")
    x0, x1 = check_marginals(source, target)
    num_iterations = check_int(num_iterations, "num_iterations")
    m = min(x0.shape[0], x1.shape[0]) if num_pairs is None else check_int(num_pairs, "num_pairs")
    all_losses = []
    pairs = (x0, x1)
    coupling = "independent"
    for it in range(num_iterations):
        key, kfit, k0, k1, ksim = jax.random.split(key, 5)
        direction = "forward" if it % 2 == 0 else "backward"
        loss = BridgeMatchingLoss(sigma=bridge.sigma, coupling=coupling, direction=direction)
        bridge, losses = fit_bridge(
            bridge,
            loss,
            pairs[0],
            pairs[1],
            key=kfit,
            optimizer=optimizer,
            num_steps=num_steps,
            batch_size=batch_size,
            paired=coupling == "given",
        )
        all_losses.append(losses)
        coupling = "given"
        if direction == "forward":
            start = x0[jax.random.choice(k0, x0.shape[0], (m,), replace=m > x0.shape[0])]
            end = cast(Array, solve_bridge(bridge, start, key=ksim, num_steps=num_sde_steps))
            pairs = (start, end)
        else:
            start = x1[jax.random.choice(k1, x1.shape[0], (m,), replace=m > x1.shape[0])]
            end = cast(
                Array,
                solve_bridge(bridge, start, key=ksim, num_steps=num_sde_steps, reverse=True),
            )
            pairs = (end, start)
    return DSBMResult(bridge=bridge, losses=jnp.stack(all_losses))
