"""Who a caller is: bearer tokens from a token file (YAML; docs/security.md), each mapped to a
``Principal`` (``service.auth``: roles and what each may call).

A token is given as ``token`` or ``token_sha256`` (the file need not hold secrets). An agent
token says which nodes it speaks for: a Slurm hostlist, or ``"*"`` for every node (a deliberate
choice, never a default); under mutual TLS those are narrowed to the DNS names of its client
certificate. A top-level ``queues:`` list declares queues (``service.queues``). With no token
file the server runs *open*: every caller is ``OPEN_PRINCIPAL`` (admin), allowed only on
loopback (or with ``--insecure``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from typing import Any, Callable

import yaml

from xpod.hal.errors import XpodError
from xpod.hal.hostlist import HostlistError, expand
from xpod.scheduler.service.auth import OPEN_PRINCIPAL, Principal, Role
from xpod.scheduler.service.errors import ApiError, Code
from xpod.scheduler.service.queues import OPEN_QUEUES, QueuePolicy, Queues


class Unauthenticated(ApiError):
    """A call without a valid bearer token; ``str`` is the one-line message sent to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.UNAUTHENTICATED, Code.UNAUTHENTICATED.value, message)


def bearer(context: Any) -> str | None:
    """A call's ``authorization`` metadata (None without one)."""
    return next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)


#: the peer property gRPC fills with a client certificate's subjectAltName entries (mutual TLS)
_SAN_PROPERTY = "x509_subject_alternative_name"


#: metadata a front end (``frontends``) adds to a call it proxies: the DNS names of the caller's
#: client certificate, comma-separated. Believed only on the main server's Unix socket, which only
#: this user's processes reach; from any other peer it is ignored.
PEER_NAMES_KEY = "x-xpod-peer-dns-names"


def certificate_names(auth_context: dict | None) -> frozenset[str]:
    """The subjectAltName entries of a call's client certificate (none without mutual TLS)."""
    raw = (auth_context or {}).get(_SAN_PROPERTY) or ()
    return frozenset(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in raw)


def peer_names(context: Any) -> frozenset[str]:
    """The client certificate's names for a call: its own TLS peer's, or, for a call a front end
    proxied over the main server's Unix socket, the names the front end read (``PEER_NAMES_KEY``)."""
    auth_context = getattr(context, "auth_context", None)
    names = certificate_names(auth_context() if auth_context is not None else None)
    if names:
        return names
    peer = getattr(context, "peer", None)
    if peer is None or not str(peer()).startswith("unix:"):
        return frozenset()
    for key, value in context.invocation_metadata() or ():
        if key == PEER_NAMES_KEY:
            return frozenset(n for n in str(value).split(",") if n)
    return frozenset()


def narrow_to_certificate(principal: Principal, names: frozenset[str]) -> Principal:
    """An agent that presented a client certificate speaks only for the ``names`` in its
    subjectAltName (``peer_names``; intersected with its token's ``nodes``). Other callers, and
    connections without a client certificate, are unchanged."""
    if principal.role is not Role.AGENT or not names:
        return principal
    nodes = names if principal.nodes is None else principal.nodes & names
    return dataclasses.replace(principal, nodes=nodes)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """Maps a bearer token to its ``Principal``. ``None`` tokens file = open server."""

    def __init__(self, principals_by_hash: dict[str, Principal] | None, queues: Queues = OPEN_QUEUES) -> None:
        self._by_hash = principals_by_hash
        self.queues = queues  # the queues the file declares (``service.queues``); open: any, capped

    @property
    def open(self) -> bool:
        return self._by_hash is None

    def authenticate(self, authorization: str | None) -> Principal:
        """``authorization`` is the ``authorization`` metadata value (``Bearer TOKEN``)."""
        if self._by_hash is None:
            return OPEN_PRINCIPAL
        if not authorization:
            raise Unauthenticated("missing bearer token: pass --token, XPOD_TOKEN or 'token:' in the config file")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization metadata must be 'Bearer TOKEN'")
        digest = token_sha256(token.strip())
        for known, principal in self._by_hash.items():
            # compare every entry in constant time, so timing does not tell how much matched
            if hmac.compare_digest(known, digest):
                return principal
        raise Unauthenticated("unknown bearer token")

    @classmethod
    def open_server(cls) -> "Authenticator":
        return cls(None)

    @classmethod
    def from_file(cls, path: str) -> "Authenticator":
        principals, queues = load_access(path)
        return cls(principals, queues)


_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_QUEUE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # as admission checks spec.queue


def load_tokens(path: str) -> dict[str, Principal]:
    """The principals of a token file (``load_access``)."""
    return load_access(path)[0]


def load_access(path: str) -> tuple[dict[str, Principal], Queues]:
    """Read a token file: its principals by token SHA-256, and the queues it declares (its
    ``queues:`` list, each submitter's queues, ``default``; none auto-created: ``service.queues``).
    Any problem is an ``XpodError`` naming ``FILE:LINE`` and the field."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise XpodError(f"{path}: cannot read the token file: {err.strerror}") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise XpodError(f"{path}{where}: not valid YAML: {getattr(err, 'problem', err)}") from None

    def fail(node, message: str) -> XpodError:
        return XpodError(f"{path}:{node.start_mark.line + 1}: {message}")

    if not isinstance(root, yaml.MappingNode):
        raise XpodError(f"{path}:1: a token file is a mapping with a 'tokens:' list")
    top = {k.value: v for k, v in root.value}
    unknown = set(top) - {"tokens", "queues"}
    if unknown:
        key = next(k for k, _ in root.value if k.value in unknown)
        raise fail(key, f"unknown key {key.value!r}; the keys are 'tokens' and 'queues'")
    declared = _load_queues(top.get("queues"), fail)
    tokens = top.get("tokens")
    if not isinstance(tokens, yaml.SequenceNode) or not tokens.value:
        raise fail(tokens or root, "'tokens' must be a non-empty list")
    out: dict[str, Principal] = {}
    names: set[str] = set()
    for entry in tokens.value:
        if not isinstance(entry, yaml.MappingNode):
            raise fail(entry, "each token is a mapping with name, role and token (or token_sha256)")
        fields = {k.value: v for k, v in entry.value}
        for k, _ in entry.value:
            if k.value not in ("name", "token", "token_sha256", "role", "queues", "nodes"):
                raise fail(k, f"unknown key {k.value!r}; expected name, token, token_sha256, role, queues, nodes")
        for required in ("name", "role"):
            if required not in fields:
                raise fail(entry, f"missing {required!r}")
        name = fields["name"].value
        if not isinstance(name, str) or not name:
            raise fail(fields["name"], "name must be a non-empty string")
        if name in names:
            raise fail(fields["name"], f"duplicate name {name!r}")
        names.add(name)
        try:
            role = Role(fields["role"].value)
        except (ValueError, TypeError):
            raise fail(fields["role"], f"role {fields['role'].value!r} is not one of admin, agent, submitter") from None
        if ("token" in fields) == ("token_sha256" in fields):
            raise fail(entry, f"token {name!r}: give exactly one of 'token' or 'token_sha256'")
        if "token" in fields:
            secret = fields["token"].value
            if not isinstance(secret, str) or len(secret) < 16:
                raise fail(fields["token"], f"token {name!r}: a token must be at least 16 characters")
            digest = token_sha256(secret)
        else:
            digest = str(fields["token_sha256"].value).lower()
            if not _HEX64.match(digest):
                raise fail(fields["token_sha256"], f"token {name!r}: token_sha256 must be 64 hex digits")
        queues: frozenset[str] = frozenset()
        if role is Role.SUBMITTER:
            qnode = fields.get("queues")
            if not isinstance(qnode, yaml.SequenceNode) or not qnode.value:
                raise fail(qnode or entry, f"submitter {name!r} needs a non-empty 'queues' list")
            queues = frozenset(str(q.value) for q in qnode.value)
        elif "queues" in fields:
            raise fail(fields["queues"], f"'queues' applies to submitters only ({name!r} is {role.value})")
        nodes: frozenset[str] | None = None
        if role is Role.AGENT:
            nnode = fields.get("nodes")
            if not isinstance(nnode, yaml.ScalarNode) or not str(nnode.value).strip():
                raise fail(
                    nnode or entry,
                    f"agent {name!r} needs 'nodes': the nodes it speaks for as a Slurm hostlist "
                    '("cm-n[00-03]"), or "*" for every node',
                )
            if nnode.value.strip() != "*":
                try:
                    nodes = frozenset(expand(nnode.value.strip()))
                except HostlistError as err:
                    raise fail(nnode, f"agent {name!r}: nodes: {err}") from None
        elif "nodes" in fields:
            raise fail(fields["nodes"], f"'nodes' applies to agents only ({name!r} is {role.value})")
        if digest in out:
            raise fail(entry, f"token {name!r} has the same token as {out[digest].name!r}")
        out[digest] = Principal(name, role, queues, nodes)
        for q in sorted(queues - set(declared)):
            if q != "default":
                declared[q] = QueuePolicy(q)
    return out, Queues(tuple(declared.values()), auto_queues=0)


def _load_queues(node: Any, fail: Callable[[Any, str], XpodError]) -> dict[str, QueuePolicy]:
    """The ``queues:`` list: names, or mappings with name, max_pending, max_stored_bytes."""
    if node is None:
        return {}
    if not isinstance(node, yaml.SequenceNode):
        raise fail(node, "'queues' must be a list of queue names or {name, max_pending, max_stored_bytes}")
    out: dict[str, QueuePolicy] = {}
    for entry in node.value:
        limits: dict[str, int] = {}
        if isinstance(entry, yaml.ScalarNode):
            name = str(entry.value)
        elif isinstance(entry, yaml.MappingNode):
            fields = {k.value: v for k, v in entry.value}
            for k, v in entry.value:
                if k.value not in ("name", "max_pending", "max_stored_bytes"):
                    raise fail(k, f"unknown key {k.value!r}; expected name, max_pending, max_stored_bytes")
                if k.value != "name":
                    text = str(v.value) if isinstance(v, yaml.ScalarNode) else ""
                    if not text.isdigit() or int(text) < 1:
                        raise fail(v, f"{k.value}: {text[:40]!r} is not a positive whole number")
                    limits[k.value] = int(text)
            if "name" not in fields or not isinstance(fields["name"], yaml.ScalarNode):
                raise fail(entry, "a queue needs a 'name'")
            name = str(fields["name"].value)
        else:
            raise fail(entry, "each queue is a name or a mapping with 'name'")
        if not _QUEUE_NAME.match(name):
            raise fail(entry, f"queue {name[:80]!r} must be a DNS label: 1..63 of a-z, 0-9 and '-'")
        if name in out:
            raise fail(entry, f"queue {name!r} is declared twice")
        out[name] = QueuePolicy(name, limits.get("max_pending"), limits.get("max_stored_bytes"))
    return out
