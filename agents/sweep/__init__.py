"""``cascade sweep``: the real pipeline over a grid of settings, one measured point at a time.

- :mod:`agents.sweep.grid`: the grid file (validated) and its points;
- :mod:`agents.sweep.metrics`: one point's figures from its frame records;
- :mod:`agents.sweep.runner`: the broker, tiers and links kept across points, and one point's run;
- :mod:`agents.sweep.plots`: the sweep's PNG plots;
- :mod:`agents.sweep.command`: the command (resume, progress, JSON, CSV).
"""
