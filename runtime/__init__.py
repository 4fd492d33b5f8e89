"""What runs beside the scheduler, one folder per role: ``agent/`` (node agent, task supervisor,
launcher, device exporter), ``client/`` (the one way to the server), ``cli/`` (the ``xpod``
command: one composition root, one module per command) and ``moe/`` (expert placement and
token dispatch)."""
