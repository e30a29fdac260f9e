"""InfluxDB line protocol: escaping and one generic point (frame records have their own faster path)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

#: What a key needs changed: line-protocol specials, backslashes, control characters.
_NEEDS_ESCAPE = re.compile(r"[\\, =\x00-\x1f\x7f]")
_SPECIALS = re.compile(r"[, =]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: A backslash InfluxDB would read as escaping what follows it, or that ends the key.
_STRANDED_BACKSLASH = re.compile(r"\\(?=[, =]|$)")


def escape_key(text: str) -> str:
    r"""A measurement, tag key, tag value or field key with line-protocol specials escaped.

    InfluxDB 1.x unescapes only a backslash before a comma, an equals sign or a space, and keeps
    every other backslash as it is (``\\`` stays two). So a backslash before one of those, or at
    the end (the line becomes unparsable), cannot be written: it becomes ``/``. Control characters
    become spaces (a newline would end the line). Checked against influxd 1.6.7.
    """
    if not _NEEDS_ESCAPE.search(text):
        return text
    text = _STRANDED_BACKSLASH.sub("/", _CONTROL.sub(" ", text))
    return _SPECIALS.sub(lambda m: "\\" + m.group(0), text)


def field_value(value: bool | int | float | str) -> str | None:
    """A field value in line-protocol syntax; None for a value InfluxDB cannot store (NaN, infinity)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    # A newline would be kept inside the quotes, but split the point in the run directory's .lp files,
    # which `influx -import` reads line by line: it is written as backslash-n and stored as those two.
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
