"""driftax.diffusion (see DESIGN.md)."""
