"""Telephony text-to-speech providers for media streams (behaviour.md §1.4, §4.4, ai-providers.md §5)."""
