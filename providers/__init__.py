"""Pluggable backends: carriers (and, later, speech and responder providers), looked up by name."""
