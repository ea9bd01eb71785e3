"""Every public sampler, bijection, solver and path is in its conformance registry.

The generic conformance / order tests are driven by registries (tests/samplers/registry.py,
tests/flows/test_bijections.py, tests/diffusion/test_solvers.py, tests/diffusion/test_paths.py). A
new public class that is not registered would silently skip them; this test catches it. A class
counts as registered when some registry entry builds an instance of exactly that class.
"""

from __future__ import annotations

import inspect
from functools import cache

import jax
import pytest

import driftax.diffusion as dd
import driftax.flows as fl
import driftax.samplers as ds

from .diffusion.test_paths import PATHS
from .diffusion.test_solvers import ALL_SOLVERS
from .flows.test_bijections import REGISTRY as BIJECTIONS
from .samplers.registry import ALL_SAMPLERS

# family -> (public namespace, abstract base)
FAMILIES = {
    "sampler": (ds, ds.AbstractSampler),
    "bijection": (fl, fl.AbstractBijection),
    "solver": (dd, dd.AbstractSolver),
    "path": (dd, dd.AbstractPath),
}

# Exempt: ONLY abstract bases and helpers that are not a concept instance on their own.
EXEMPT = {
    "sampler": {  # the base and its capability bases
        "AbstractSampler",
        "AbstractStepSizeSampler",
        "AbstractMetricSampler",
        "AbstractSGMCMC",
    },
    "bijection": {"AbstractBijection"},  # the base
    "solver": {"AbstractSolver"},  # the base
    "path": {"AbstractPath"},  # the base
}

# (family, class) -> reason: public classes not yet in their registry. Each is xfail(strict=True),
# so the entry must go as soon as the class is registered.
MISSING: dict[tuple[str, str], str] = {
    (
        "solver",
        "IIASolver",
    ): "its coefficients are fitted for one grid (`solve(..., ts=solver.ts)`), "
    "which the registry's `num_steps=`/default-schedule tests cannot pass; its conformance is "
    "tested in tests/diffusion/test_iia.py",
}


@cache
def _registered(family: str) -> set[type]:
    if family == "sampler":
        return {type(factory()) for factory in ALL_SAMPLERS.values()}
    if family == "bijection":
        key = jax.random.key(0)
        return {type(builder(key)) for builder, _, _ in BIJECTIONS.values()}
    if family == "solver":
        return {type(s) for s in ALL_SOLVERS}
    return {type(p) for p in PATHS}


@cache
def _public(family: str) -> dict[str, type]:
    """name -> class of every public subclass of the family's base (aliases counted once)."""
    namespace, base = FAMILIES[family]
    found: dict[type, str] = {}
    for name in sorted(dir(namespace)):
        obj = getattr(namespace, name)
        if name.startswith("_") or not inspect.isclass(obj) or not issubclass(obj, base):
            continue
        # an alias (e.g. GVP = TrigonometricInterpolant) is the same class: keep its own name
        if obj not in found or name == obj.__name__:
            found[obj] = name
    return {name: cls for cls, name in found.items()}


def _cases():
    for family in FAMILIES:
        for name in sorted(_public(family)):
            if name in EXEMPT[family]:
                continue
            marks = []
            if (family, name) in MISSING:
                marks = [pytest.mark.xfail(strict=True, reason=MISSING[family, name])]
            yield pytest.param(family, name, marks=marks, id=f"{family}-{name}")


@pytest.mark.parametrize("family, name", list(_cases()))
def test_public_class_is_registered(family, name):
    cls = _public(family)[name]
    assert cls in _registered(family), (
        f"public {family} {name} is not in its conformance registry "
        f"(add an entry so the generic conformance tests cover it)"
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_exemptions_are_abstract(family):
    """The exemption list holds only abstract bases (and the names exist)."""
    public = _public(family)
    for name in EXEMPT[family]:
        assert name in public, f"stale exemption {name}"
        assert inspect.isabstract(public[name]) or name.startswith("Abstract"), name


def test_registries_nonempty():
    for family in FAMILIES:
        assert _registered(family), family
