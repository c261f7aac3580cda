"""Django-free types the call domain and the providers both import: events, errors, states, audio, config, URLs.

Nothing here imports Django, `calls`, `providers` or `routing` (tests/test_import_rules.py checks it),
so a carrier or a speech provider can be written and tested against these alone.
"""
