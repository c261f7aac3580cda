"""`voicecall doctor [--fix]`: find legacy config keys and rewrite them in the config file, and report what else makes the file invalid."""
from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import json5

from core.config.legacy import Change, migrate_block, migrate_tts
from core.config.loader import WRAPPER_PREFIX, load_config_file


class DoctorError(Exception):
    pass


@dataclass
class DoctorReport:
    path: Path
    changes: list[Change]
    rewritten: bool = False
    backup: Path | None = None
    had_comments: bool = False
    # What else keeps the file (as rewritten, with --fix) from loading: "<key path>: <message>" lines.
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing left to do: no errors, and no legacy key that was not rewritten (exit status 0)."""
        return not self.errors and (not self.changes or self.rewritten)


def doctor(path: Path, *, fix: bool, environ: Mapping[str, str] | None = None) -> DoctorReport:
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
    # Loaded as the gateway would (variables from this process's environment): legacy keys load with a warning,
    # anything else wrong is an error.
    report.errors = list(load_config_file(path, environ=environ).errors)
    return report


def doctor_text(report: DoctorReport) -> str:
    """The errors first (they are what keeps calls from working), then the legacy keys found, if any."""
    lines: list[str] = []
    if report.errors:
        count = len(report.errors)
        lines.append(f"{count} config error{'s' if count != 1 else ''} in {report.path} (the gateway does not start "
                     "calls until they are fixed; `python manage.py voicecall setup` says how):")
        lines += [f"  - {error}" for error in report.errors]
    if report.changes or not report.errors:  # "no legacy keys" beside errors would read as a clean bill
        lines += _legacy_lines(report)
    return "\n".join(lines)


def _legacy_lines(report: DoctorReport) -> list[str]:
    if not report.changes:
        return [f"No legacy config keys in {report.path}."]
    lines = [f"Legacy config keys in {report.path}:"]
    lines += [f"  - {change}" for change in report.changes]
    if report.rewritten:
        lines.append(f"Rewrote {report.path} (the original is at {report.backup}).")
        if report.had_comments:
            lines.append("Note: the rewritten file is plain JSON; comments from the JSON5 original were not kept.")
    else:
        lines.append("Run `python manage.py voicecall doctor --fix` to rewrite them.")
    return lines
