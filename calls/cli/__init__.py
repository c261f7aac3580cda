"""The pieces behind `manage.py voicecall`: setup checks, latency stats, tail, doctor."""
