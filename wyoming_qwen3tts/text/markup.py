"""Markup and emoji removal: what a language model writes for a screen, cut down to what is spoken.

Markdown (headings, emphasis, lists, links, images, code, tables, rules), HTML or SSML
tags and emoji carry no words of their own, so their marks are dropped and their text kept.
Fenced code blocks are dropped whole: read out, code is noise.
"""

from __future__ import annotations

import html
import re

_FENCED_CODE = re.compile(r"^[ \t]*(```|~~~).*?(^[ \t]*\1[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`+([^`]*)`+")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_TAG = re.compile(r"</?[A-Za-z][\w:-]*(?:\s+[^<>]*?)?/?>|<!--.*?-->", re.DOTALL)
_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]+(.*?)[ \t#]*$", re.MULTILINE)
_BLOCKQUOTE = re.compile(r"^[ \t]*(?:>[ \t]?)+", re.MULTILINE)
_RULE = re.compile(r"^[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t]*$", re.MULTILINE)
_BULLET = re.compile(r"^([ \t]*)[-*+•][ \t]+(?:\[[ xX]\][ \t]+)?", re.MULTILINE)
_TABLE_RULE = re.compile(
    r"^[ \t]*\|?[ \t]*:?-{2,}:?[ \t]*(?:\|[ \t]*:?-{2,}:?[ \t]*)*\|?[ \t]*$", re.MULTILINE
)
_TABLE_PIPES = re.compile(r"[ \t]*\|[ \t]*")
_EMPHASIS = re.compile(r"(\*{1,3}|_{1,3}|~~)(?=\S)(.+?)(?<=\S)\1")
_STRAY_MARKS = re.compile(r"(?<![\w*])\*{1,3}(?![\w*])|(?<!\w)_{2,3}(?!\w)")
# Pictographs, dingbats, flags, keycap and skin-tone modifiers, joiners and variation selectors.
_EMOJI = re.compile(
    "[ \t]*["
    "\U0001f000-\U0001faff"
    "\U00002600-\U000027bf"
    "\U00002b00-\U00002bff"
    "\U0001f1e6-\U0001f1ff"
    "\U0000fe00-\U0000fe0f"
    "\U0000200d"
    "\U000020e3"
    "\U0000231a-\U0000231b\U000023e9-\U000023fa"
    "]+"
)
_HEADING_END = re.compile(r"[.!?:;。！？]$")


def strip_markup(text: str, full_stop: str = ".") -> str:
    """Remove Markdown marks, HTML/SSML tags and emoji; keep the words. Headings end with full_stop."""
    text = _FENCED_CODE.sub("", text)
    text = _INLINE_CODE.sub(r"\1", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _TAG.sub(" ", text)
    text = html.unescape(text)
    text = _HEADING.sub(lambda match: _end_heading(match, full_stop), text)
    text = _BLOCKQUOTE.sub("", text)
    text = _RULE.sub("", text)
    text = _TABLE_RULE.sub("", text)
    text = _end_list_items(text, full_stop)
    text = _table_cells(text)
    previous = None
    while previous != text:  # nested emphasis: ***a*** or **a _b_**
        previous, text = text, _EMPHASIS.sub(r"\2", text)
    text = _STRAY_MARKS.sub("", text)
    text = _EMOJI.sub("", text)
    text = re.sub(r"[ \t]*\n[ \t]*", "\n", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def _end_heading(match: re.Match[str], full_stop: str) -> str:
    """A heading is a sentence of its own: give it an end so it is not run into the next line."""
    heading = match.group(1).strip()
    return heading if not heading or _HEADING_END.search(heading) else heading + full_stop


def _end_list_items(text: str, full_stop: str) -> str:
    """Drop bullets; an item ends with a comma, the last of a list with a full stop, so each gets a pause."""
    lines = text.split("\n")
    bullets = [_BULLET.match(line) is not None for line in lines]
    for index, line in enumerate(lines):
        if not bullets[index]:
            continue
        item = _BULLET.sub(r"\1", line).rstrip()
        if item and not _HEADING_END.search(item) and not item.endswith((",", "，", "、")):
            last = index + 1 == len(lines) or not bullets[index + 1]
            item += full_stop if last else ("、" if full_stop == "。" else ",")
        lines[index] = item
    return "\n".join(lines)


def _table_cells(text: str) -> str:
    """ "| a | b |" -> "a, b": table rows become lists of their cells."""
    lines = []
    for line in text.split("\n"):
        if line.strip().startswith("|") and line.strip().endswith("|"):
            cells = [cell for cell in _TABLE_PIPES.split(line.strip().strip("|")) if cell]
            line = ", ".join(cells)
        lines.append(line)
    return "\n".join(lines)
