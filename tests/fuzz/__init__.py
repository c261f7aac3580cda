"""Fuzzing through the real ASGI application: webhooks, the RPC envelope and media frames (`make fuzz`)."""
