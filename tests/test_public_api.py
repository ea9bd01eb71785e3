"""The public names promised in DESIGN.md exist, and every public name has a real docstring."""

import inspect

import pytest

import driftax
import driftax.energies as de

SUBPACKAGES = ["energies", "samplers", "flows", "diffusion"]

PROMISED = {
    "energies": [
        "AbstractEnergy", "from_log_density", "from_numpyro", "gaussian", "ill_conditioned_gaussian",
        "gaussian_mixture", "gmm40", "gmm25", "gmm9", "four_mode_gmm", "funnel", "banana",
        "many_well", "double_well_2d", "rezende", "dw4", "lj13", "lj55", "phi4", "u1_lattice",
        "logistic_regression", "lgcp",
    ],
}  # fmt: skip


@pytest.mark.parametrize("sub, name", [(s, n) for s, names in PROMISED.items() for n in names])
def test_promised_names_exist(sub, name):
    module = getattr(driftax, sub)
    assert hasattr(module, name), f"driftax.{sub}.{name} is promised by DESIGN.md"


def _public_objects():
    for sub in SUBPACKAGES:
        module = getattr(driftax, sub)
        for name in sorted(vars(module)):
            if name.startswith("_"):
                continue
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                if getattr(obj, "__module__", "").startswith("driftax"):
                    yield f"driftax.{sub}.{name}", obj


@pytest.mark.parametrize(
    "qualname, obj", list(_public_objects()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_public_names_have_docstrings(qualname, obj):
    doc = inspect.getdoc(obj) or ""
    # Dataclasses (and so Equinox modules) without a docstring get their signature as __doc__.
    assert doc and not doc.startswith(f"{obj.__name__}("), f"{qualname} has no docstring"
    if inspect.isclass(obj):
        for attr, member in vars(obj).items():
            if attr.startswith("_") or not callable(member):
                continue
            if not (inspect.getdoc(getattr(obj, attr)) or ""):
                pytest.fail(f"{qualname}.{attr} has no docstring")


def test_energies_public_list_is_importable():
    assert callable(de.reference_targets)
