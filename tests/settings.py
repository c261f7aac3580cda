"""Test settings: the real settings, with background work run inline and no services auto-started."""
import os

os.environ["VOICECALL_BACKGROUND"] = "inline"
os.environ["VOICECALL_EMBEDDED_SCHEDULER"] = "false"
os.environ["VOICECALL_AUTOSTART_SERVICES"] = "false"
os.environ["VOICECALL_CONFIG"] = ""

from voicecall_project.settings import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
