"""driftax.flows (see DESIGN.md)."""
