"""Schrödinger bridges and optimal-transport couplings (private; the public names are
re-exported by `driftax.diffusion`)."""
