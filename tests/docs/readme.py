"""The README's fenced code blocks: language, line, text, and the marker that keeps a block from the documentation test."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# The exact marker, on the line right before a block's opening fence.
MARKER = re.compile(r"^<!-- not run by the documentation test: (?P<reason>\S.*?) -->$")
MARKER_TEXT = "not run by the documentation test"
FENCE = re.compile(r"^(?P<indent> *)```(?P<language>[\w-]*)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # the opening fence's line in the README (1-based)
    language: str
    text: str  # without the fences and the list item's indentation
    skip_reason: str | None  # the marker's reason, None when the block is run

    @property
    def commands(self) -> list[str]:
        """The block's lines without comments and blank lines (a rough view, enough to recognise `make serve`)."""
        return [line.split("#", 1)[0].strip() for line in self.text.splitlines() if line.split("#", 1)[0].strip()]


class ReadmeError(ValueError):
    """The README's blocks cannot be read: a fence left open, or a marker that marks no block."""


def blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            if _is_marker_line(lines[index]) and not _opens_block(lines, index + 1):
                raise ReadmeError(f"{path.name}:{index + 1}: the marker is not right before an sh code block")
            index += 1
            continue
        indent = opening["indent"]
        end = next((j for j in range(index + 1, len(lines)) if lines[j].rstrip() == f"{indent}```"), None)
        if end is None:
            raise ReadmeError(f"{path.name}:{index + 1}: this code block is never closed")
        previous = lines[index - 1].strip() if index else ""
        if _is_marker_line(previous) and not MARKER.match(previous):
            raise ReadmeError(f"{path.name}:{index}: write the marker exactly as "
                              "<!-- not run by the documentation test: <reason> -->")
        marker = MARKER.match(previous)
        text = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[index + 1:end])
        found.append(Block(index + 1, opening["language"], text + "\n", marker["reason"] if marker else None))
        index = end + 1
    return found


def _opens_block(lines: list[str], index: int) -> bool:
    return index < len(lines) and bool(FENCE.match(lines[index])) and FENCE.match(lines[index])["language"] == "sh"


def shell_blocks(path: Path) -> list[Block]:
    return [block for block in blocks(path) if block.language == "sh"]


def _is_marker_line(line: str) -> bool:
    """An HTML comment line meant as the marker (prose may quote the marker's text)."""
    return line.strip().startswith("<!--") and MARKER_TEXT in line
