"""`voicecall doctor [--fix]`: find legacy config keys and rewrite them in the config file."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import json5

from core.config.legacy import Change, migrate_block, migrate_tts
from core.config.loader import WRAPPER_PREFIX


class DoctorError(Exception):
    pass


@dataclass
class DoctorReport:
    path: Path
    changes: list[Change]
    rewritten: bool = False
    backup: Path | None = None
    had_comments: bool = False


def doctor(path: Path, *, fix: bool) -> DoctorReport:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DoctorError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json5.loads(text)
    except ValueError as exc:
        raise DoctorError(f"{path} is not valid JSON or JSON5: {exc}") from None
    if not isinstance(data, dict):
        raise DoctorError(f"{path}: the config must be a JSON object")

    wrapped = "plugins" in data
    if wrapped:
        try:
            entry = data["plugins"]["entries"]["voice-call"]
            block = entry.get("config", {})
        except (KeyError, TypeError, AttributeError):
            raise DoctorError(f"{path}: plugins.entries.voice-call is missing") from None
        if not isinstance(block, dict):
            raise DoctorError(f"{path}: plugins.entries.voice-call.config must be an object")
        new_block, changes = migrate_block(block, WRAPPER_PREFIX)
        if isinstance(data.get("tts"), dict):
            changes += migrate_tts(data["tts"], "tts.")
        entry["config"] = new_block
    else:
        data, changes = migrate_block(data)

    report = DoctorReport(path=path, changes=changes)
    if fix and changes:
        try:
            json.loads(text)
        except ValueError:
            report.had_comments = True
        report.backup = path.with_name(path.name + ".bak")
        shutil.copy2(path, report.backup)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        report.rewritten = True
    return report


def doctor_text(report: DoctorReport) -> str:
    if not report.changes:
        return f"No legacy config keys in {report.path}."
    lines = [f"Legacy config keys in {report.path}:"]
    lines += [f"  - {change}" for change in report.changes]
    if report.rewritten:
        lines.append(f"Rewrote {report.path} (the original is at {report.backup}).")
        if report.had_comments:
            lines.append("Note: the rewritten file is plain JSON; comments from the JSON5 original were not kept.")
    else:
        lines.append("Run `python manage.py voicecall doctor --fix` to rewrite them.")
    return "\n".join(lines)
