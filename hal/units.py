"""Quantities in cluster descriptors, normalised to base units on load.

- memory / bytes: an integer number of bytes, or Kubernetes-style ``64Gi``, ``80G``, ``80GB``,
  ``512MiB`` (``Ki Mi Gi Ti Pi`` are powers of 1024, ``K M G T P`` powers of 1000; a trailing
  ``B`` is allowed).
- bandwidth: an integer number of bytes per second, or ``392GB/s``, ``50GiB/s``, ``400Gb/s``,
  ``400Gbps`` (a lower-case ``b`` means bits).
- latency: a number of seconds, or ``1us``, ``1µs``, ``500ns``, ``2ms``, ``1s``.

Each parser returns the base-unit value or raises ``ValueError`` with a one-line reason; the
cluster loader turns that into a ``FILE:LINE:COL`` message.
"""

from __future__ import annotations

from typing import TypeGuard

import re

_PREFIX = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}
# "k" is accepted for kilo as SI writes it
_NUM = r"(\d+(?:\.\d+)?)"
_BYTES_RE = re.compile(rf"^{_NUM}\s*([KkMGTP]i?)?(B)?$")
_BW_RE = re.compile(rf"^{_NUM}\s*([KkMGTP]i?)?(B/s|b/s|bps|Bps)$")
_LAT_RE = re.compile(rf"^{_NUM}\s*(ns|us|µs|ms|s)$")
_LAT_SCALE = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}

#: the JSON Schema patterns for quantity strings (kept next to the parsers they mirror)
BYTES_PATTERN = _BYTES_RE.pattern
BANDWIDTH_PATTERN = _BW_RE.pattern
LATENCY_PATTERN = _LAT_RE.pattern


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_bytes(value: object) -> int:
    """Bytes from an integer or a quantity string (``64Gi`` -> 68719476736)."""
    if _is_number(value):
        if value != int(value) or value <= 0:
            raise ValueError(f"{value!r} is not a positive whole number of bytes")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a byte quantity")
    m = _BYTES_RE.match(value.strip())
    if not m:
        raise ValueError(f"cannot parse {value!r} as bytes (use an integer or e.g. 64Gi, 80GB)")
    n = float(m.group(1)) * _PREFIX[(m.group(2) or "").replace("k", "K")]
    if n <= 0 or n != int(n):
        raise ValueError(f"{value!r} is not a positive whole number of bytes")
    return int(n)


def parse_bandwidth(value: object) -> int:
    """Bytes per second from an integer or a rate string (``400Gb/s`` -> 50000000000)."""
    if _is_number(value):
        if value <= 0:
            raise ValueError(f"bandwidth must be > 0, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a bandwidth")
    m = _BW_RE.match(value.strip())
    if not m:
        raise ValueError(f"cannot parse {value!r} as a bandwidth (use bytes/s or e.g. 392GB/s, 400Gb/s)")
    n = float(m.group(1)) * _PREFIX[(m.group(2) or "").replace("k", "K")]
    if m.group(3) in ("b/s", "bps"):
        n /= 8
    if n <= 0:
        raise ValueError(f"bandwidth must be > 0, got {value!r}")
    return int(round(n))


def parse_latency(value: object) -> float:
    """Seconds from a number or a duration string (``1us`` -> 1e-06)."""
    if _is_number(value):
        if value < 0:
            raise ValueError(f"latency must be >= 0, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a latency")
    m = _LAT_RE.match(value.strip())
    if not m:
        raise ValueError(f"cannot parse {value!r} as a latency (use seconds or e.g. 1us, 500ns, 2ms)")
    return float(m.group(1)) * _LAT_SCALE[m.group(2)]


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} B"


def format_bandwidth(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("TB/s", 10**12), ("GB/s", 10**9), ("MB/s", 10**6)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} B/s"


def format_latency(s: float | None) -> str:
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.4g} {unit}"
    return f"{s / 1e-9:.4g} ns"
