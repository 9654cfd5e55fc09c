"""The fenced code blocks of README.md and docs/*.md, for the tests that run
them. A block may follow an HTML comment that says how it is tested:

- ``<!-- NAME -->`` (a plain word, e.g. ``quickstart``, ``lightning``): a
  test of its own runs it (it finds the block with :func:`named`);
- ``<!-- run: script -->``: run as a script of its own, in a new process;
- ``<!-- requires: cuda -->``: run only where a CUDA GPU is;
- ``<!-- eval: final -->`` before a table: the rows are checked against the
  saved evaluation records.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_MARK = re.compile(r"<!--\s*([^>]*?)\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    page: pathlib.Path
    line: int
    lang: str
    code: str
    mark: str  # the comment on the line before the fence, or ""

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: pathlib.Path) -> list[Block]:
    """Every fenced block; MyST directives (```{toctree} ...) have a lang
    that starts with ``{``."""
    lines = page.read_text().split("\n")
    out, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            start, lang = i, lines[i][3:].strip()
            i += 1
            while lines[i] != "```":
                i += 1
            mark = _MARK.search(lines[start - 1]) if start else None
            out.append(Block(page, start + 1, lang, "\n".join(lines[start + 1 : i]) + "\n",
                             mark.group(1) if mark else ""))
        i += 1
    return out


def named(page: str, name: str) -> str:
    """The code of the block marked ``<!-- name -->`` on ``page`` (relative to the root)."""
    found = [b for b in blocks(ROOT / page) if b.mark == name]
    if len(found) != 1:
        raise LookupError(f"{page}: {len(found)} blocks marked <!-- {name} -->")
    return found[0].code


def table_after(page: pathlib.Path, mark: str) -> list[str]:
    """The rows of the Markdown table that follows ``<!-- mark -->``."""
    text = page.read_text()
    rest = text[text.index(f"<!-- {mark} -->"):].split("\n")[1:]
    return [ln for ln in rest[: next(i for i, ln in enumerate(rest) if not ln.startswith("|"))]]
