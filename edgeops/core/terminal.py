"""Plain-text tables for the terminal."""

from __future__ import annotations

import re
from collections.abc import Sequence

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def clean(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters escaped (``\\x1b``): a value a device sent (an event's
    message, an agent version) cannot move the cursor or recolour the terminal, or break a row."""
    pattern = _CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def fmt(value: object, digits: int = 3) -> str:
    """A cell: floats with ``digits`` significant decimals, None as a dash, control characters
    escaped."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return (
            f"{value:.{digits}g}"
            if abs(value) < 1
            else f"{value:.{digits}f}".rstrip("0").rstrip(".")
        )
    return clean(str(value))


def render(
    headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None
) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(items: Sequence[str]) -> str:
        return "  ".join(
            item.rjust(w) if i else item.ljust(w)
            for i, (item, w) in enumerate(zip(items, widths, strict=True))
        ).rstrip()

    out = [title] if title else []
    out.append(line(list(headers)))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def render_pairs(pairs: Sequence[tuple[str, object]], title: str | None = None) -> str:
    """A two-column key: value listing."""
    width = max((len(k) for k, _ in pairs), default=0)
    lines = [title] if title else []
    lines.extend(f"{k.ljust(width)}  {fmt(v)}" for k, v in pairs)
    return "\n".join(lines)


def clip_words(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, cut at a word boundary and ended with "…" when it
    was longer (a table's reason column never ends mid-word)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"
