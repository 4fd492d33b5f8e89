"""Who a caller is: bearer tokens read from a token file, each mapped to a ``Principal``
(``service.auth``: the roles and what each may call).

Token file (YAML)::

    tokens:
      - name: alice            # shown in events and errors
        token: "..."           # or token_sha256: <64 hex digits>, so the file need not hold secrets
        role: submitter        # admin | agent | submitter
        queues: [research]     # submitters only: the queues they may submit into, see and cancel
      - {name: ops, role: admin, token_sha256: "..."}
      - {name: rack1, role: agent, token: "...", nodes: "cm-n[00-03]"}   # Slurm hostlist syntax

An agent token must say which nodes it speaks for: ``nodes:`` a hostlist (every node RPC naming
another node is PERMISSION_DENIED), or ``nodes: "*"`` for every node (one trusted agent process
for a whole pod, e.g. a simulated one: a deliberate choice, never a default). Under mutual TLS an agent's nodes are further narrowed to
the DNS names in its client certificate's subjectAltName (``principal_for_peer``).

With no token file the server runs *open*: every caller is ``OPEN_PRINCIPAL`` (admin). The
server only allows that on loopback (or with ``--insecure``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re

import yaml

from xpod.hal.errors import XpodError
from xpod.hal.hostlist import HostlistError, expand
from xpod.scheduler.service.auth import OPEN_PRINCIPAL, Principal, Role


class AuthError(Exception):
    """Base of the two refusals; ``str`` is the one-line message sent to the caller."""


class Unauthenticated(AuthError):
    pass


class PermissionDenied(AuthError):
    pass


#: the peer property gRPC fills with a client certificate's subjectAltName entries (mutual TLS)
_SAN_PROPERTY = "x509_subject_alternative_name"


def narrow_to_certificate(principal: Principal, auth_context: dict | None) -> Principal:
    """An agent that presented a client certificate speaks only for the names in its
    subjectAltName (intersected with its token's ``nodes``). Other callers, and connections
    without a client certificate, are unchanged."""
    if principal.role is not Role.AGENT or not auth_context:
        return principal
    raw = auth_context.get(_SAN_PROPERTY) or ()
    names = frozenset(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in raw)
    if not names:
        return principal
    nodes = names if principal.nodes is None else principal.nodes & names
    return dataclasses.replace(principal, nodes=nodes)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """Maps a bearer token to its ``Principal``. ``None`` tokens file = open server."""

    def __init__(self, principals_by_hash: dict[str, Principal] | None) -> None:
        self._by_hash = principals_by_hash

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
        return cls(load_tokens(path))


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def load_tokens(path: str) -> dict[str, Principal]:
    """Read a token file; any problem is an ``XpodError`` naming ``FILE:LINE`` and the field."""
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
    unknown = set(top) - {"tokens"}
    if unknown:
        key = next(k for k, _ in root.value if k.value in unknown)
        raise fail(key, f"unknown key {key.value!r}; the only key is 'tokens'")
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
    return out
