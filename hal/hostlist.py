"""Slurm hostlist syntax: ``cm-n[00-47]``, ``gpu[01-04,07],cpu1``, ``r[1-2]-n[01-04]``.

``expand`` follows Slurm's rules: a bracket holds comma-separated numbers and ``lo-hi``
ranges; the width of ``lo`` as written sets the zero padding (``[00-47]`` gives ``00``..``47``,
``[8-10]`` gives ``8, 9, 10``); several brackets in one name give their cartesian product, left
bracket outermost. Nested brackets are not supported. ``compress`` is its inverse up to order:
``expand(compress(hosts))`` is ``sorted_hosts(set(hosts))``.

Malformed input raises ``HostlistError`` (an ``XpodError``) saying what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import XpodError

#: characters a host name may hold besides the bracket syntax
_NAME_CHARS = re.compile(r"^[A-Za-z0-9._-]*$")
#: the most hosts one expression may expand to (guards against "n[0-999999999]")
MAX_HOSTS = 1_000_000


class HostlistError(XpodError):
    """A hostlist expression that cannot be read."""


def _split_top(expr: str) -> list[str]:
    """Split at commas outside brackets; checks that brackets balance and do not nest."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(expr):
        if ch == "[":
            if depth:
                raise HostlistError(
                    f"hostlist {expr!r}: nested '[' at character {i + 1} (nested brackets are not supported)"
                )
            depth = 1
        elif ch == "]":
            if not depth:
                raise HostlistError(f"hostlist {expr!r}: ']' at character {i + 1} has no matching '['")
            depth = 0
        elif ch == "," and not depth:
            parts.append(expr[start:i])
            start = i + 1
    if depth:
        raise HostlistError(f"hostlist {expr!r}: '[' is never closed")
    parts.append(expr[start:])
    return parts


def _expand_bracket(body: str, expr: str) -> list[str]:
    out: list[str] = []
    if not body:
        raise HostlistError(f"hostlist {expr!r}: empty brackets '[]'")
    for item in body.split(","):
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise HostlistError(f"hostlist {expr!r}: {item!r} is not a number or a lo-hi range of numbers")
        if not sep:
            out.append(lo)
            continue
        a, b = int(lo), int(hi)
        if b < a:
            raise HostlistError(f"hostlist {expr!r}: range {item!r} runs backwards")
        if b - a + 1 > MAX_HOSTS:
            raise HostlistError(f"hostlist {expr!r}: range {item!r} has more than {MAX_HOSTS} hosts")
        width = len(lo)
        out.extend(str(n).zfill(width) for n in range(a, b + 1))
    return out


def _expand_one(part: str, expr: str) -> list[str]:
    if not part:
        raise HostlistError(f"hostlist {expr!r}: empty host name (two commas in a row, or a trailing comma?)")
    pieces = re.split(r"(\[[^\]]*\])", part)
    names = [""]
    for piece in pieces:
        if piece.startswith("["):
            options = _expand_bracket(piece[1:-1], expr)
            if len(names) * len(options) > MAX_HOSTS:
                raise HostlistError(f"hostlist {expr!r} expands to more than {MAX_HOSTS} hosts")
            names = [n + o for n in names for o in options]
        else:
            if not _NAME_CHARS.match(piece):
                bad = next(c for c in piece if not _NAME_CHARS.match(c))
                raise HostlistError(f"hostlist {expr!r}: character {bad!r} is not allowed in a host name")
            names = [n + piece for n in names]
    return names


def expand(expr: str) -> list[str]:
    """Every host an expression names, in the order written (repeats kept; see ``repeats``)."""
    if not isinstance(expr, str):
        raise HostlistError(f"hostlist must be text, got {type(expr).__name__}")
    expr = expr.strip()
    if not expr:
        raise HostlistError("hostlist is empty")
    if any(ch.isspace() for ch in expr):
        raise HostlistError(f"hostlist {expr!r}: spaces are not allowed (separate hosts with commas)")
    out: list[str] = []
    for part in _split_top(expr):
        out.extend(_expand_one(part, expr))
        if len(out) > MAX_HOSTS:
            raise HostlistError(f"hostlist {expr!r} expands to more than {MAX_HOSTS} hosts")
    return out


def repeats(hosts: Iterable[str]) -> list[str]:
    """Hosts that occur more than once, each listed once, in first-repeat order."""
    seen: set[str] = set()
    dup: list[str] = []
    for h in hosts:
        if h in seen and h not in dup:
            dup.append(h)
        seen.add(h)
    return dup


_TAIL_NUM = re.compile(r"^(.*?)(\d+)([^\d]*)$")


def _key(host: str) -> tuple:
    m = _TAIL_NUM.match(host)
    if not m:
        return (host, "", -1, 0)
    prefix, digits, suffix = m.groups()
    return (prefix, suffix, len(digits), int(digits))


def sorted_hosts(hosts: Iterable[str]) -> list[str]:
    """Natural order: by prefix and suffix, then numeric width, then number."""
    return sorted(hosts, key=_key)


def compress(hosts: Iterable[str]) -> str:
    """The shortest-form expression (per Slurm) for a set of hosts, in natural order.

    Hosts are grouped by the text around their last run of digits and by that run's width;
    consecutive numbers become ``lo-hi`` ranges, written at the group's width.
    """
    uniq = sorted_hosts(set(hosts))
    out: list[str] = []
    i = 0
    while i < len(uniq):
        prefix, suffix, width, num = _key(uniq[i])
        if width <= 0:
            out.append(uniq[i])
            i += 1
            continue
        nums = [num]
        j = i + 1
        while j < len(uniq):
            p2, s2, w2, n2 = _key(uniq[j])
            if (p2, s2, w2) != (prefix, suffix, width):
                break
            nums.append(n2)
            j += 1
        if len(nums) == 1:
            out.append(uniq[i])
        else:
            ranges: list[str] = []
            start = prev = nums[0]
            for n in nums[1:] + [None]:
                if n is not None and n == prev + 1:
                    prev = n
                    continue
                fmt = lambda v: str(v).zfill(width)  # noqa: E731
                ranges.append(fmt(start) if start == prev else f"{fmt(start)}-{fmt(prev)}")
                if n is not None:
                    start = prev = n
            out.append(f"{prefix}[{','.join(ranges)}]{suffix}")
        i = j
    return ",".join(out)
