"""Frame sources: image sets, torchvision datasets, video files and cameras, paced at a chosen rate."""

from agents.sources.base import Frame, open_source, paced

__all__ = ["Frame", "open_source", "paced"]
