"""Benchmarks: each prints its figure against a baseline measured in the same run (``make bench``)."""

from agents.allocator import keep_freed_memory

# Benchmarks time models in their own process too (baselines, "alone" figures): with the same malloc
# settings as every cascade command, so both sides of a ratio run under the same allocator.
keep_freed_memory()
