"""The configuration reference, docs/configuration.md, generated from the call config schema.

Every key's path, type, default and description come from the pydantic models in
core/config/schema.py (a field's description is the docstring under it, read by
field_docstrings). After changing the schema, regenerate the page and commit it:

    .venv/bin/python -m core.config.reference --write

Without --write the Markdown is printed; --check exits 1 when the file is stale.
tests/core/test_config_reference.py fails when the committed page differs from render().
"""
from __future__ import annotations

import argparse
import ast
import functools
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from core.config import schema
from core.config.schema import VoiceCallConfig

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = ROOT / "docs" / "configuration.md"
# Named from where the modules are, so that the page stays right if they move.
MODULE = __spec__.name if __spec__ is not None else __name__
SCHEMA_FILE = Path(schema.__file__).resolve().relative_to(ROOT).as_posix()
REGENERATE = f".venv/bin/python -m {MODULE} --write"

# The schema's named value types, as the page shows them.
TYPE_NAMES: list[tuple[Any, str]] = [
    (schema.E164, "E.164 number"),
    (schema.PositiveInt, "integer > 0"),
    (schema.NonNegativeInt, "integer ≥ 0"),
    (schema.Port, "integer 1–65535"),
    (schema.NonEmptyStr, "string"),
    (schema.Unit, "number 0–1"),
    (schema.Flag, "boolean"),
    (schema.HttpUrl, "http(s) URL"),
    (schema.Credential, "secret"),
    (schema.TtsTimeout, "integer 1000–120000"),
    (schema.CallSeconds, "integer 1–86400"),
]
PLAIN_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", Any: "any"}

HEADER = """\
# Configuration reference

<!-- Generated from {schema_file} by `{regenerate}`. Do not edit by hand. -->

The call config is the file named by `VOICECALL_CONFIG`, JSON or JSON5. It holds the same keys
as the OpenClaw `voice-call` plugin's config block, either bare or inside the whole
`{{"plugins": {{"entries": {{"voice-call": {{"enabled": true, "config": {{…}}}}}}}}}}` wrapper; with the
wrapper, a top-level `tts` block is the base the block's own `tts` deep-merges over (objects
merged key by key, arrays replaced). Every object is strict: an unknown key is an error naming
its path, except inside provider blocks (`streaming.providers.<id>`, `realtime.providers.<id>`,
`tts.providers.<id>`, `agents.<id>.identity`), where extra keys pass through to the provider.
Legacy keys still load with a warning; `voicecall doctor --fix` rewrites them (see
[compatibility](compatibility.md#legacy-keys-and-doctor---fix)).

Types: a **secret** is a plain string, `"${{ENV_NAME}}"`, or a SecretRef `{{"source": "env", "id":
"NAME"}}` / `{{"source": "file", "id": "/path", "pointer": "/json/pointer"}}`; it is resolved at
startup and never printed. An **E.164 number** matches `^\\+[1-9]\\d{{1,14}}$`. Integers and
booleans are strict (`"5"` is not 5). **unset** means the key has no value and the behaviour in
its description applies.

Keys marked "Accepted, no effect yet" load so that a plugin config works unchanged, and the
gateway names each one you set in a startup warning (see
[compatibility](compatibility.md#accepted-but-not-built-yet)). Deployment settings that are not
part of this file (database, Redis, tokens) are environment variables: see
[operations](operations.md#environment-variables).

## Checking a config: setup and doctor

`python manage.py voicecall setup` (and `smoke`, and the admin's setup page) checks the config in
force: plugin-enabled, provider, provider-config, webhook-exposure, mode, then a `WARN` line for
each warning. When the file cannot be used (it is missing, unreadable, not JSON/JSON5, or fails
validation) the gateway serves on defaults, so the other checks would judge those defaults, not
your file: setup then prints the file's errors first, each with its key path and the file's path,
and marks the other checks `SKIP <id>: not checked until the config file is valid`:

```text
Voice Call setup: needs attention
FAIL provider-config: The config file /etc/voicecall.json5 is invalid (1 error): fromNumber: Expected E.164 format, e.g. +15550001234
SKIP plugin-enabled: not checked until the config file is valid
SKIP provider: not checked until the config file is valid
SKIP webhook-exposure: not checked until the config file is valid
SKIP mode: not checked until the config file is valid
```

What to do about each failing check is on stderr (`FIX <id>: …`). With `--json` the same report
is `{{"ok": false, "checks": [...], "configFile": …, "configErrors": [{{"path", "message"}}], "fixes":
{{…}}, "warnings": [...]}}`; a skipped check is `{{"ok": false, "skipped": true}}`, and `path` is null
for an error about the file as a whole. A file that validates but lacks something (a credential
whose variable is not set, a cross-field rule) runs every check against what it says. `setup` and
`smoke` exit 1 whenever a check fails or is skipped; warnings alone never fail them.

Carrier identifiers of the wrong shape are warnings (the config still loads; the carrier would
refuse them at the first call): `twilio.accountSid` (AC and 32 hex digits), `twilio.authToken` (32
hex digits), `telnyx.connectionId` (digits), `telnyx.apiKey` (starts with KEY), `plivo.authId` (MA
or SA and 18 uppercase letters or digits), whether the value is in the file, a `${{VAR}}`
reference or an environment fallback (`TWILIO_ACCOUNT_SID`, …); the warning names the variable it
came from. A credential's value is never printed, only its length. The gateway logs every config
warning when it starts.

`python manage.py voicecall doctor` reads the file named by `VOICECALL_CONFIG`, lists its legacy
keys (`--fix` rewrites them, keeping a `.bak` copy) and, first, every error that keeps the file from loading,
reading variables from its own environment as the gateway would. Like a linter, it exits 0 when
there is nothing left to do, and 1 when the file cannot be read or parsed, has errors, or has
legacy keys that `--fix` was not given to rewrite. Without `VOICECALL_CONFIG` there is nothing to
check (exit 0).
"""


def render() -> str:
    """The whole page, as docs/configuration.md should hold it."""
    sections: list[str] = []
    _sections(VoiceCallConfig, "", sections, _home_paths(VoiceCallConfig))
    return HEADER.format(regenerate=REGENERATE, schema_file=SCHEMA_FILE) + "".join(sections)


def field_docstrings(model: type[BaseModel]) -> dict[str, str]:
    """Each field's docstring (the string right under it), its own class's over inherited ones.

    Read from the source here, not by pydantic (use_attribute_docstrings): pydantic would look
    them up for every model each time the schema is imported, which only this page needs.
    """
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if issubclass(cls, BaseModel) and cls is not BaseModel:
            docs.update(_class_docstrings(inspect.getsourcefile(cls), cls.__qualname__))
    return docs


@functools.cache
def _class_docstrings(source_file: str, qualname: str) -> dict[str, str]:
    tree = ast.parse(Path(source_file).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == qualname:
            return {
                field.target.id: inspect.cleandoc(doc.value.value)
                for field, doc in zip(node.body, node.body[1:])
                if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)
            }
    return {}


def _home_paths(root: type[BaseModel]) -> dict[type[BaseModel], str]:
    """Where each model gets its own section: its shallowest path (e.g. TtsConfig at `tts`, not
    `numbers.<number>.tts`); other paths that hold it point there."""
    home: dict[type[BaseModel], str] = {root: ""}
    queue = [(root, "")]
    while queue:
        model, path = queue.pop(0)
        hints = typing.get_type_hints(model, include_extras=True)
        for name, info in model.model_fields.items():
            key = info.alias or name
            nested = _nested(hints[name], f"{path}.{key}" if path else key)
            if nested and nested[0] not in home:
                home[nested[0]] = nested[1]
                queue.append(nested)
    return home


def _sections(model: type[BaseModel], path: str, out: list[str], home: dict[type[BaseModel], str]) -> None:
    hints = typing.get_type_hints(model, include_extras=True)
    title = f"`{path}`" if path else "Top level"
    rows = [f"\n## {title}\n"]
    doc = _clean(model.__doc__) if path and "__doc__" in model.__dict__ else ""
    if doc:
        doc = re.sub(r"^[\w.<>]+: ", "", doc)
        rows.append(f"\n{_cell(doc[:1].upper() + doc[1:])}\n")
    rows.append("\n| Key | Type | Default | Description |\n|---|---|---|---|\n")
    children: list[tuple[type[BaseModel], str]] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        full = f"{path}.{key}" if path else key
        annotation = hints[name]
        description = _clean(field_docstrings(model).get(name))
        if not description:
            raise ValueError(f"{full}: the schema has no description for this key (add a docstring under the field)")
        nested = _nested(annotation, full)
        if nested is not None:
            child_model, child_path = nested
            if home[child_model] == child_path:
                children.append((child_model, child_path))
            else:
                description += f" Same keys as `{home[child_model]}`."
        rows.append(
            f"| `{full}` | {_cell(_type(annotation))} | {_cell(_default(info))} | {_cell(description)} |\n"
        )
    out.append("".join(rows))
    for child_model, child_path in children:
        _sections(child_model, child_path, out, home)


def _nested(annotation: Any, path: str) -> tuple[type[BaseModel], str] | None:
    """The model a key holds (directly, per map entry, or per list item) and its section path."""
    annotation = _strip(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, path
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict:
        found = _nested(args[1], "")
        if found:
            placeholder = "<number>" if args[0] == schema.E164 else "<id>"
            return found[0], f"{path}.{placeholder}"
    if origin is list:
        found = _nested(args[0], "")
        if found:
            return found[0], f"{path}[]"
    return None


def _strip(annotation: Any) -> Any:
    """Drop `| None` and Annotated metadata."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return _strip(args[0])
        return annotation
    if typing.get_origin(annotation) is typing.Annotated:
        return _strip(typing.get_args(annotation)[0])
    return annotation


def _type(annotation: Any) -> str:
    for named, label in TYPE_NAMES:
        if annotation == named:
            return label
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_type(arg) for arg in args if arg is not type(None))
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is Literal:
        return " | ".join(f'`"{value}"`' for value in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"map of {_type(args[0])} → {_type(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    return PLAIN_TYPES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(info: Any) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "(object)"
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def _cell(text: str) -> str:
    """A table cell: one line, pipes escaped (GitHub also needs that inside code spans), and `<`
    outside code spans escaped so that `<id>` is not taken for an HTML tag."""
    text = re.sub(r"(?<!\\)\|", r"\\|", " ".join(text.split()))
    parts = text.split("`")
    return "`".join(part if index % 2 else part.replace("<", "&lt;") for index, part in enumerate(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {DOC_PATH.name} in docs/")
    group.add_argument("--check", action="store_true", help="exit 1 when docs/configuration.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
        DOC_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {DOC_PATH}")
        return 0
    if args.check:
        current = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
        if current != text:
            print(f"{DOC_PATH} is stale; regenerate it with: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
