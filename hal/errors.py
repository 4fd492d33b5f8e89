"""Errors shared by every room of xpod.

``XpodError`` and its subclasses are errors a *user* can cause (bad YAML, a bad flag, a
device that is not there). The CLI prints them as one line and exits non-zero; they never
surface as a traceback. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class XpodError(Exception):
    """A user-facing error: ``str(err)`` is one line that says what is wrong and what to do."""


class BackendUnavailable(XpodError):
    """A backend cannot be used on this host (SDK missing, no devices, tool failed)."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"backend {backend!r} is unavailable: {reason}")
        self.backend = backend
        self.reason = reason


class CapabilityUnsupported(XpodError):
    """A caller asked a backend for something it declares it lacks (see ``Capability``)."""

    def __init__(self, backend: str, capability: object, reason: str) -> None:
        name = getattr(capability, "value", capability)
        super().__init__(f"backend {backend!r} does not support {name}: {reason}")
        self.backend = backend
        self.capability = capability
        self.reason = reason


class ToolOutputError(XpodError):
    """A management tool's output could not be read; names the tool and the line."""

    def __init__(self, tool: str, message: str, line_no: int | None = None, line: str | None = None) -> None:
        where = f" line {line_no}" if line_no is not None else ""
        shown = f": {line.strip()!r}" if line is not None else ""
        super().__init__(f"{tool} output{where}: {message}{shown}")
        self.tool = tool
        self.line_no = line_no


class BackendRegistrationError(XpodError):
    """An entry point in ``xpod.backends`` does not yield a valid backend."""
