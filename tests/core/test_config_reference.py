"""docs/configuration.md is generated from the config schema and must match it."""
from __future__ import annotations

import typing

from pydantic import BaseModel

from core.config import reference
from core.config.schema import VoiceCallConfig


def test_the_committed_configuration_reference_is_up_to_date():
    current = reference.DOC_PATH.read_text(encoding="utf-8") if reference.DOC_PATH.exists() else ""
    assert current == reference.render(), (
        f"docs/configuration.md is stale; regenerate it with: {reference.REGENERATE}"
    )


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    seen.add(model)
    for info in model.model_fields.values():
        for arg in _flatten(info.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in seen:
                _models(arg, seen)


def _flatten(annotation):
    yield annotation
    for arg in typing.get_args(annotation):
        yield from _flatten(arg)


def test_every_key_of_every_config_object_has_a_description():
    models: set[type[BaseModel]] = set()
    _models(VoiceCallConfig, models)
    missing = [
        f"{model.__name__}.{name}"
        for model in models
        for name in model.model_fields
        if not (reference.field_docstrings(model).get(name) or "").strip()
    ]
    assert missing == []


def test_every_key_has_a_row_with_its_path_type_and_default():
    text = reference.render()
    for row in (
        "| `maxConcurrentCalls` | integer > 0 | `1` |",
        "| `streaming.providers.<id>.vadThreshold` | number 0–1 | unset |",
        "| `numbers.<number>.inboundGreeting` | string | unset |",
        "| `webhookSecurity.trustedProxyIPs` | list of string | `[]` |",
        "| `twilio.authToken` | secret | unset |",
        '| `outbound.defaultMode` | `"notify"` \\| `"conversation"` | `"notify"` |',
        "| `realtime.tools[].name` | string | required |",
    ):
        assert row in text


def test_a_model_used_in_two_places_is_described_once_and_referred_to():
    text = reference.render()
    assert text.count("\n## `tts`\n") == 1
    assert "## `numbers.<number>.tts`" not in text
    assert "Same keys as `tts`." in text


def test_check_reports_a_stale_file_with_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reference, "DOC_PATH", tmp_path / "configuration.md")
    assert reference.main(["--check"]) == 1
    assert reference.REGENERATE in capsys.readouterr().err
    assert reference.main(["--write"]) == 0
    assert reference.main(["--check"]) == 0
