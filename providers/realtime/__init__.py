"""Realtime speech-to-speech model providers the call bridge talks to (docs/compatibility.md, Realtime voice)."""
