"""The ``xpod`` command: ``main.py`` builds the parser from one module per command and runs it;
``app.py`` wires the server, agents and embedded stack (``xpod server``, ``xpod up``, ``xpod demo``)."""

from xpod.runtime.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
