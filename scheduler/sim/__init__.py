"""Simulation: a virtual-clock engine that drives the real scheduler core (``engine``), and
the replays built on it (``openb``: the FGD paper's packing experiment; ``jobs``: a job trace
over time, with ``trace`` reading it and making its sizes legal and ``audit`` checking every
placement against the cluster's rules without asking a plugin; ``mix``: serving that
follows its demand beside training)."""
