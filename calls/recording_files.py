"""Where recording files live: one directory (recording.directory, else recordings/ in the data directory), a folder per call."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from core.config import VoiceCallConfig


def recordings_directory(config: VoiceCallConfig) -> Path:
    configured = config.recording.directory
    return Path(configured).expanduser() if configured else Path(settings.DATA_DIR) / "recordings"


def relative_name(call_id: object, recording_id: object, extension: str) -> str:
    """The name a recording's file is stored under (Recording.file): <call id>/<recording id>.<extension>."""
    return f"{call_id}/{recording_id}.{extension.lstrip('.')}"


def file_path(config: VoiceCallConfig, name: str) -> Path:
    """The absolute path of a stored name; ValueError when the name would leave the directory."""
    root = recordings_directory(config).resolve()
    path = (root / name).resolve()
    if not name or root not in path.parents:
        raise ValueError(f"recording file name {name!r} is outside the recordings directory")
    return path
