"""Telephony carriers: one backend per carrier behind the interface in base.py."""
