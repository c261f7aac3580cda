"""Streaming speech-to-text providers for media streams (behaviour.md §4.5, ai-providers.md §2, §4)."""
