"""driftax.samplers (see DESIGN.md)."""
