"""Node-side runtime: the CLI, the launcher and node agent, MoE placement and token dispatch."""
