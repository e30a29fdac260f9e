"""InfluxDB line protocol: escaping and one generic point (frame records have their own faster path)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

_NEEDS_ESCAPE = re.compile(r"[\\, =]")


def escape_key(text: str) -> str:
    """A measurement, tag key, tag value or field key with line-protocol specials escaped."""
    if not _NEEDS_ESCAPE.search(text):
        return text
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def field_value(value: bool | int | float | str) -> str | None:
    """A field value in line-protocol syntax; None for a value InfluxDB cannot store (NaN, infinity)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def point(
    measurement: str,
    tags: Mapping[str, str | None],
    fields: Mapping[str, bool | int | float | str | None],
    time_ns: int,
) -> str | None:
    """One line: tags sorted (what InfluxDB prefers), empty tags and unstorable fields left out; None with no field."""
    tag_text = "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in sorted(tags.items()) if v)
    parts = []
    for key, value in fields.items():
        text = None if value is None else field_value(value)
        if text is not None:
            parts.append(f"{escape_key(key)}={text}")
    if not parts:
        return None
    return f"{escape_key(measurement)}{tag_text} {','.join(parts)} {time_ns}"
