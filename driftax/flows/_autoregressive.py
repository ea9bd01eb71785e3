"""Masked autoregressive layers (MAF / IAF) with affine or spline transformers."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_int
from .._custom_types import Shape
from ._bijection import AbstractBijection, check_input
from ._nn import MLP, condition_size, hidden_widths, made_masks
from ._transformers import AbstractTransformer, make_transformer


class MaskedAutoregressive(AbstractBijection):
    """An autoregressive layer `y_i = τ(x_i; θ_i(x_<i, condition))` with a MADE conditioner.

    `transform` is one network pass (parallel); `inverse` is sequential (`d` network passes in a
    `lax.scan`). A masked autoregressive flow (MAF) uses this layer inverted, so that density
    evaluation is the parallel direction; an inverse autoregressive flow (IAF) uses it as is, so
    that sampling is. See [`masked_autoregressive_flow`][].

    **Arguments:**

    - `key`: PRNG key for the conditioner.
    - `dim`: the dimension `d` of the vector event.
    - `transformer`, `hidden`, `depth`, `cond_dim`, `activation`, `**transformer_options`: as
      for [`Coupling`][].
    """

    made: MLP
    transformer: AbstractTransformer
    event_shape: Shape = eqx.field(static=True)
    cond_shape: Shape | None = eqx.field(static=True)

    def __init__(
        self,
        key,
        dim: int,
        *,
        transformer="affine",
        hidden=64,
        depth: int | None = None,
        cond_dim: int | None = None,
        activation: Callable = jax.nn.relu,
        **transformer_options,
    ):
        d = check_int(dim, "dim")
        nc = condition_size(cond_dim)
        self.transformer = make_transformer(transformer, **transformer_options)
        widths = hidden_widths(hidden, depth)
        masks, _ = made_masks(d, nc, widths, self.transformer.num_params)
        self.made = MLP(
            key, d + nc, d * self.transformer.num_params, widths, activation=activation, masks=masks
        )
        self.event_shape = (d,)
        self.cond_shape = None if cond_dim is None else (nc,)

    def _raw(self, x, condition):
        inp = x if condition is None else jnp.concatenate([x, condition.reshape(-1)])
        return self.made(inp).reshape(self.event_shape[0], self.transformer.num_params)

    def transform_and_log_det(self, x, condition=None):
        x, condition = check_input(self, x, condition)
        y, log_grad = self.transformer.transform_and_log_det(x, self._raw(x, condition))
        return y, jnp.sum(log_grad)

    def inverse_and_log_det(self, y, condition=None):
        y, condition = check_input(self, y, condition, "y")
        d = self.event_shape[0]

        def body(carry, i):
            x, log_det = carry
            raw_i = jax.lax.dynamic_index_in_dim(self._raw(x, condition), i, keepdims=True)
            y_i = jax.lax.dynamic_slice_in_dim(y, i, 1)
            x_i, lg = self.transformer.inverse_and_log_det(y_i, raw_i)
            return (jax.lax.dynamic_update_slice_in_dim(x, x_i, i, 0), log_det + lg[0]), None

        (x, log_det), _ = jax.lax.scan(
            body, (jnp.zeros_like(y), jnp.zeros((), y.dtype)), jnp.arange(d)
        )
        return x, log_det
