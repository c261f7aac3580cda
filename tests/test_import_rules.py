"""Which package may import which: dependencies point one way (core ← providers ← calls; routing under calls).

Every import statement counts, at any depth (inside functions and TYPE_CHECKING blocks too),
relative ones resolved to the module they name. A broken rule fails with the file and line.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ("calls", "providers", "routing")

# package -> (packages it must not import, {module: what that one module may import anyway}); why in the comments
RULES: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    # Django-free types both sides share.
    "core": (("django", "calls", "providers", "routing", "voicecall_project"), {}),
    # Carriers and AI providers get what they need from the call as arguments (see CarrierBackend).
    "providers": (("calls", "routing", "voicecall_project"), {}),
    # calls uses routing (policy, routes, pairing); routing's own logic never reaches back. The
    # admin page is a surface on top of both: it shows the config in force next to the routes.
    "routing": (("calls", "voicecall_project"), {"routing.admin": ("calls.config",)}),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import statement in the file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_of(path).split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def files_of(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def violations(package: str) -> list[str]:
    forbidden, allowed = RULES[package]
    problems = []
    for path in files_of(package):
        module = module_name(path)
        exceptions = allowed.get(module, ())
        for line, imported in imports_of(path):
            if any(within(imported, bad) for bad in forbidden) and not any(within(imported, ok) for ok in exceptions):
                problems.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {imported}")
    return problems


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_follow_the_rules(package):
    assert violations(package) == []


def test_settings_import_no_app_code():
    """settings.py, and what it imports from the project, import none of the apps nor core."""
    seen: set[str] = set()
    pending = ["voicecall_project.settings"]
    problems = []
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = ROOT / (module.replace(".", "/") + ".py")
        for line, imported in imports_of(path):
            if any(within(imported, app) for app in (*APPS, "core")):
                problems.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {imported}")
            elif within(imported, "voicecall_project") and (ROOT / (imported.replace(".", "/") + ".py")).exists():
                pending.append(imported)
    assert problems == []
    assert "voicecall_project.rpc_tokens" in seen  # the walk follows project modules


def test_the_check_sees_relative_and_nested_imports(tmp_path, monkeypatch):
    """The rules would catch `from ..x import` and imports inside functions, not just top-level ones."""
    package = tmp_path / "core" / "sub"
    package.mkdir(parents=True)
    (tmp_path / "core" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("from .. import x\n\ndef f():\n    from calls.models import Call\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert imports_of(package / "mod.py") == [(1, "core"), (4, "calls.models")]
    assert violations("core") == ["core/sub/mod.py:4: core.sub.mod imports calls.models"]


def test_core_imports_without_django_or_the_apps():
    """Importing every core module in a fresh interpreter loads neither Django nor an app."""
    import os
    import subprocess
    import sys

    modules = sorted(module_name(path) for path in files_of("core"))
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'django', 'calls', 'providers', 'routing', 'voicecall_project'}))\n"
    )
    environ = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
