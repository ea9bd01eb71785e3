"""A registry of every reference target in TARGETS.md, with its pinned default variant.

Tests run generic conformance checks over it and `make demo` tours it. Builders are lazy, so
building the registry costs nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from . import _classic, _gaussian, _mixture
from ._base import AbstractEnergy


@dataclasses.dataclass(frozen=True)
class TargetInfo:
    """One reference target: how to build its default variant and what it is.

    **Fields:**

    - `name`: the constructor's name in `driftax.energies`.
    - `build`: a zero-argument callable returning the energy (the pinned default variant).
    - `variant`: a short description of the variant `build` uses.
    - `bounds`: a plotting box `((x0, x1), (y0, y1))` for 2-D targets, else `None`.
    - `small`: a zero-argument callable building a small version for fast tests.
    """

    name: str
    build: Callable[[], AbstractEnergy]
    variant: str
    bounds: tuple | None = None
    small: Callable[[], AbstractEnergy] | None = None

    def build_small(self) -> AbstractEnergy:
        """The small version of the target (or the default one if it is already small)."""
        return (self.small or self.build)()


def _lazy(name: str, *args, **kwargs) -> Callable[[], AbstractEnergy]:
    def build():
        from driftax import energies

        return getattr(energies, name)(*args, **kwargs)

    return build


def reference_targets() -> dict[str, TargetInfo]:
    """Every reference target of TARGETS.md by name, with its pinned default variant."""
    box = lambda h: ((-h, h), (-h, h))
    infos = [
        TargetInfo(
            "gaussian", lambda: _gaussian.gaussian([0.0, 0.0], [[1.0, 0.8], [0.8, 1.0]]),
            "2-D, correlation 0.8", box(4.0),
        ),
        TargetInfo(
            "ill_conditioned_gaussian", lambda: _gaussian.ill_conditioned_gaussian(100, 100.0),
            "d=100, kappa=100, diagonal", None, lambda: _gaussian.ill_conditioned_gaussian(10, 100.0),
        ),
        TargetInfo(
            "gaussian_mixture",
            lambda: _mixture.gaussian_mixture([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], [0.5, 1.0]),
            "2 components, 2-D", box(5.0),
        ),
        TargetInfo("gmm40", lambda: _mixture.gmm40(), "2-D, FAB means, scale 1.0", box(50.0)),
        TargetInfo("gmm25", lambda: _mixture.gmm25(), "5x5 grid, variance 0.3", box(14.0)),
        TargetInfo("gmm9", lambda: _mixture.gmm9(), "3x3 grid, variance 0.3", box(9.0)),
        TargetInfo("four_mode_gmm", lambda: _mixture.four_mode_gmm(16), "d=16", None, lambda: _mixture.four_mode_gmm(4)),
        TargetInfo("funnel", lambda: _classic.funnel(10), "d=10, scale 3", None, lambda: _classic.funnel(3)),
        TargetInfo("banana", lambda: _classic.banana(2), "2-D, scale 10, curvature 0.03", ((-30.0, 30.0), (-8.0, 25.0))),
        TargetInfo("many_well", lambda: _classic.many_well(32), "d=32", None, lambda: _classic.many_well(4)),
        TargetInfo("double_well_2d", lambda: _classic.double_well_2d(), "a=1, b=6, c=0.5", ((-3.0, 3.0), (-3.5, 3.5))),
        *[
            TargetInfo(f"rezende_{n}", lambda n=n: _classic.rezende(n), "U1 on R^2" if n == "u1" else f"{n.upper()} on [-4, 4]^2", box(4.0))
            for n in ("u1", "u2", "u3", "u4")
        ],
        TargetInfo("dw4", _lazy("dw4"), "4 particles in 2-D, pairs counted once"),
        TargetInfo("lj13", _lazy("lj13"), "13 particles in 3-D, pairs counted once"),
        TargetInfo("lj55", _lazy("lj55"), "55 particles in 3-D, pairs counted once", None, _lazy("lj13")),
        TargetInfo("phi4", _lazy("phi4"), "1-D chain N=64, a=0.1, b=0, beta=20", None, _lazy("phi4", 8)),
        TargetInfo("u1_lattice", _lazy("u1_lattice", 8, 6.0), "L=8, beta=6", None, _lazy("u1_lattice", 4, 2.0)),
        TargetInfo("logistic_regression", _lazy("logistic_regression"), "breast cancer, N(0,1) prior"),
        TargetInfo("lgcp", _lazy("lgcp"), "40x40 grid, synthetic counts", None, _lazy("lgcp", 8)),
        TargetInfo("rosenbrock", _lazy("rosenbrock", 2), "2-D, a=1, q=0.1", ((-3.0, 5.0), (-2.0, 14.0))),
        TargetInfo("item_response", _lazy("item_response"), "2PL, 200 students x 20 items, fixed hyperpriors"),
        TargetInfo("horseshoe_logistic_regression", _lazy("horseshoe_logistic_regression"), "breast cancer, regularized horseshoe c=2, tau0=0.1"),
    ]  # fmt: skip
    return {i.name: i for i in infos}
