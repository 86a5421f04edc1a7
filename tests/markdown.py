"""Reading Markdown as GitHub renders it, for the tests that keep the documents honest:
the anchors of its headings and its fenced code blocks."""

from __future__ import annotations

import re
from dataclasses import dataclass

FRAGMENT = "<!-- fragment -->"
"""Written on the line before a config example that is only part of a file."""
_FENCE = re.compile(r"^( *)```(\S*)\s*$")
_HEADING = re.compile(r"^(#{1,6}) +(.+?) *#* *$")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


@dataclass(frozen=True, slots=True)
class Block:
    """A fenced code block: its language, its text (dedented as the fence is), the line
    it starts on, and whether the line before it marks it as a fragment."""

    lang: str
    body: str
    line: int
    fragment: bool


def blocks(text: str) -> list[Block]:
    """Every fenced code block of ``text``, in order."""
    found = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, lang = opening.groups()
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        before = next((line for line in reversed(lines[:index]) if line.strip()), "")
        body = "\n".join(line.removeprefix(indent) for line in lines[index + 1 : end])
        found.append(Block(lang, body + "\n", index + 1, before.strip() == FRAGMENT))
        index = end + 1
    return found


def prose(text: str) -> str:
    """``text`` without its fenced code blocks (their lines left empty, so that line
    numbers stay)."""
    kept = []
    inside = False
    for line in text.splitlines():
        if _FENCE.match(line) and (not inside or line.strip() == "```"):
            inside = not inside
            kept.append("")
            continue
        kept.append("" if inside else line)
    return "\n".join(kept)


def headings(text: str) -> list[tuple[int, str]]:
    """Every heading outside code blocks: its level and its text."""
    matches = (_HEADING.match(line) for line in prose(text).splitlines())
    return [(len(match.group(1)), match.group(2)) for match in matches if match]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading's text: links reduced to their text, lower case,
    punctuation dropped (hyphens and underscores kept), each space a hyphen."""
    text = _LINK.sub(r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> list[str]:
    """The anchor of every heading of ``text``, in order; a repeated one gets GitHub's
    ``-1``, ``-2``… suffix."""
    seen: dict[str, int] = {}
    found = []
    for _level, heading in headings(text):
        anchor = slug(heading)
        if anchor in seen:
            seen[anchor] += 1
            anchor = f"{anchor}-{seen[anchor]}"
        else:
            seen[anchor] = 0
        found.append(anchor)
    return found
