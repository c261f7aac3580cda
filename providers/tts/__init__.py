"""Telephony text-to-speech providers for media streams (docs/compatibility.md, Speech providers; Playback and pacing)."""
