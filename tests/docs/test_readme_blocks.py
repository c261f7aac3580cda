"""Reading the README's code blocks: languages, lines, list indentation, and the marker that keeps a block from being run."""
from __future__ import annotations

import pytest

from tests.docs.readme import ReadmeError, blocks, shell_blocks

MARK = "<!-- not run by the documentation test: needs a carrier account -->"


def write(tmp_path, text: str):
    path = tmp_path / "README.md"
    path.write_text(text)
    return path


def test_blocks_keep_their_line_language_text_and_marker(tmp_path):
    path = write(tmp_path, f"# T\n\n```sh\nmake serve\n```\n\n{MARK}\n```sh\ncall --x\n```\n\n- item:\n\n  ```sh\n  celery a\n  ```\n"
                           "\n```json5\n{ a: 1 }\n```\n")
    found = blocks(path)
    assert [(b.line, b.language, b.text, b.skip_reason) for b in found] == [
        (3, "sh", "make serve\n", None),
        (8, "sh", "call --x\n", "needs a carrier account"),
        (14, "sh", "celery a\n", None),
        (18, "json5", "{ a: 1 }\n", None),
    ]
    assert [b.line for b in shell_blocks(path)] == [3, 8, 14]


def test_commands_leave_out_comments_and_blank_lines(tmp_path):
    path = write(tmp_path, "```sh\n# start it\nmake serve    # installs everything\n\n```\n")
    assert blocks(path)[0].commands == ["make serve"]


@pytest.mark.parametrize("text, problem", [
    ("```sh\nmake serve\n", "README.md:1: this code block is never closed"),
    (f"{MARK}\n\nsome prose\n```sh\nx\n```\n", "README.md:1: the marker is not right before an sh code block"),
    ("<!-- not run by the documentation test -->\n```sh\nx\n```\n", "README.md:1: write the marker exactly as"),
])
def test_a_broken_fence_or_marker_is_named_with_its_line(tmp_path, problem, text):
    with pytest.raises(ReadmeError, match=problem):
        blocks(write(tmp_path, text))


def test_prose_may_quote_the_marker(tmp_path):
    path = write(tmp_path, "A block is marked with `<!-- not run by the documentation test: <reason> -->`.\n")
    assert blocks(path) == []
