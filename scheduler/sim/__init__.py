"""Simulation: a virtual-clock engine that drives the real scheduler core (``engine``), and
the replays built on it (``openb``: the FGD paper's packing experiment)."""
