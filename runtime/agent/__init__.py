"""The node agent and what it runs: ``agent.py`` (registration, heartbeats, assignments, task
executors), ``supervisor.py`` (the per-task supervisor process), ``launch.py`` (process groups
with the torch.distributed rendezvous variables) and ``exporter.py`` (device metrics)."""
