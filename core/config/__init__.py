"""The call config as data: schema, secrets, legacy rewrite, merge, cross-field rules and the loader.

Which config is in force for the running process is not kept here but in `calls.config`.
"""
from __future__ import annotations

from .loader import LoadedConfig, load_config_data, load_config_file
from .schema import VoiceCallConfig
from .secrets import Secret, SecretError

__all__ = ["LoadedConfig", "Secret", "SecretError", "VoiceCallConfig", "load_config_data", "load_config_file"]
