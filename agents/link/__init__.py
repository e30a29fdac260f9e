"""Emulated network links: a shaped userspace TCP proxy in front of the broker (``cascade link``)."""

from agents.link.proxy import LinkProxy, LinkShape, LinkStats, Shaper, parse_hostport

__all__ = ["LinkProxy", "LinkShape", "LinkStats", "Shaper", "parse_hostport"]
