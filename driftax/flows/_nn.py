"""Flow conditioners: the shared MLP (from `driftax._nn`) and MADE's connectivity masks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._nn import MLP as MLP, hidden_widths as hidden_widths


def condition_size(cond_dim) -> int:
    """The number of condition entries a conditioner takes: `cond_dim` checked (a positive int),
    or 0 for `None` (an unconditional layer)."""
    if cond_dim is None:
        return 0
    if isinstance(cond_dim, bool) or int(cond_dim) < 1:
        raise ValueError(f"`cond_dim` must be a positive int or None, got {cond_dim!r}.")
    return int(cond_dim)


def made_masks(
    dim: int, cond_dim: int, hidden: Sequence[int], params_per_dim: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Boolean masks making output block `j` (of `params_per_dim` outputs) depend only on inputs
    `x_<j` (and on all `cond_dim` conditioning inputs). Returns `(masks, out_ranks)`."""
    in_ranks = np.concatenate([np.arange(dim), -np.ones(cond_dim, int)])
    ranks = [in_ranks]
    for width in hidden:
        if cond_dim == 0:
            r = np.arange(width) % max(dim - 1, 1) if dim > 1 else np.zeros(width, int)
        else:
            r = np.arange(width) % dim - 1
        ranks.append(r)
    out_ranks = np.repeat(np.arange(dim), params_per_dim)
    masks = []
    for a, b in zip(ranks[:-1], ranks[1:], strict=True):
        masks.append(b[:, None] >= a[None, :])
    masks.append(out_ranks[:, None] > ranks[-1][None, :])
    return masks, out_ranks
