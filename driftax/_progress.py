"""One progress-bar mechanism for every compiled loop (the sampler driver, the training loop).

A bar lives on the host, keyed by an integer id that the compiled loop carries as a traced
argument (so opening a new bar never recompiles). The loop calls [`report`][] every step; it
costs nothing when the loop was built with `every == 0` (no callback in the graph).
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import jax
import jax.numpy as jnp

_BARS: dict[int, Any] = {}  # id -> tqdm bar (tqdm is imported lazily)
_BAR_IDS = itertools.count(1)


def _tick(bar_id, done, value):
    bar = _BARS.get(int(bar_id))
    if bar is None:
        return
    done = int(done)
    if done > bar.n:
        bar.update(done - bar.n)
    if value is not None:
        try:
            bar.set_postfix(loss=f"{float(value):.4g}", refresh=False)
        except Exception:  # noqa: BLE001 - a progress bar never breaks a run
            pass


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True):
    """Open a tqdm bar for a loop of `total` steps; yields `(bar_id, every)` to pass into the
    compiled loop (`(0, 0)` when disabled). The bar is closed (and pending host callbacks are
    flushed) on exit. In a multi-process run every process compiles the same loop, but only
    process 0 shows the bar (the others' callbacks find no bar and do nothing)."""
    if not enabled:
        yield 0, 0
        return
    from tqdm.auto import tqdm

    bar_id = next(_BAR_IDS)
    if jax.process_index() == 0:
        _BARS[bar_id] = tqdm(total=total, desc=desc)
    try:
        yield bar_id, max(1, total // 100)
        jax.effects_barrier()
    finally:
        bar = _BARS.pop(bar_id, None)
        if bar is not None:
            bar.close()


def report(bar_id, step, total: int, every: int, value=None) -> None:
    """Inside a compiled loop: advance bar `bar_id` to `step + 1` every `every` steps (and at
    the end), optionally showing `value` (e.g. the loss). A no-op when `every == 0`."""
    if not every:
        return
    done = step + 1
    jax.lax.cond(
        (done % every == 0) | (done == total),
        lambda: jax.debug.callback(_tick, bar_id, done, value),
        lambda: None,
    )


def bar_id_array(bar_id: int):
    """The bar id as the int32 array a compiled loop takes (a new bar never recompiles)."""
    return jnp.asarray(bar_id, jnp.int32)
