"""Numbers we answer on: per-number routes, allowlisted callers, and the inbound decision."""
