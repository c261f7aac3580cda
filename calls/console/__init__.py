"""The operator console: admin pages beyond the model lists (live calls, actions, setup, latency)."""
