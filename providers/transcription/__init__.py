"""Streaming speech-to-text providers for media streams (docs/compatibility.md, Transcription)."""
