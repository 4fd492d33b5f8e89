"""The xpod client: where the server is, who we are, and one method per RPC.

Address and token are resolved in this order (the first that gives a value wins, per value):

1. flags (``--server``, ``--token``, ``--token-file``),
2. environment (``XPOD_SERVER``, ``XPOD_TOKEN``, ``XPOD_TOKEN_FILE``),
3. the config file ``$XPOD_CONFIG`` or ``~/.config/xpod/config.yaml``
   (keys: ``server``, ``token``, ``token_file``, ``tls_ca``, ``tls_cert``, ``tls_key``),
4. the default address ``127.0.0.1:7070`` (no token).

A token file (``read_token_file``) holds one token and must not be readable by group or others
(mode 0600): a token on a command line is readable by every local user in ``/proc``. With
``tls_cert``/``tls_key`` the client presents a certificate (mutual TLS; an agent's certificate
names its nodes in its subjectAltName).

The address may be a comma-separated list (the config file may also give a YAML list): the
replicas of one scheduler sharing a PostgreSQL store (docs/high-availability.md). The client
talks to one at a time; a call refused with UNAVAILABLE (the server is gone, it follows another
replica: reason ``NOT_LEADER`` with the leader's address, or it lost its store) or that ran past
its deadline is sent again, the same request with the same request id, to the leader it named
or else the next address, for up to ``failover_s`` (backing off once every address was tried).
A submission retried so is acknowledged once: the store's request-id idempotency.

Every call has a deadline (``timeout_s``). A gRPC error becomes one ``XpodError`` line: an
unreachable server names the address; a refusal gives the code, the server's reason and
message (and ``field``, the path of a rejected field, which ``jobspec.JobFile.position`` maps
back to a line of the job file).
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from typing import Any, Iterable, Iterator, Mapping, Sequence


from xpod.hal.errors import XpodError
from xpod.scheduler.contract import (
    Assignment,
    LoadReport,
    MoeLoadReport,
    MoePlanAnswer,
    NodeRecord,
    TaskAllocation,
    TaskReport,
)

from .convert import job_state, spec_dict

DEFAULT_SERVER = "127.0.0.1:7070"


@dataclasses.dataclass(frozen=True)
class Target:
    server: str
    token: str | None
    tls_ca: str | None
    source: str  # where the address came from: flag, XPOD_SERVER, config file path, default
    tls_cert: str | None = None  # client certificate (PEM) for mutual TLS
    tls_key: str | None = None  # its private key (PEM)

    @property
    def addresses(self) -> tuple[str, ...]:
        """The replicas to try, in order (``server`` split at commas)."""
        return tuple(a.strip() for a in self.server.split(",") if a.strip()) or (DEFAULT_SERVER,)


def config_path() -> str:
    return os.environ.get("XPOD_CONFIG") or os.path.join(os.path.expanduser("~"), ".config", "xpod", "config.yaml")


def read_token_file(path: str, what: str = "--token-file") -> str:
    """The token in ``path`` (surrounding whitespace dropped). Refused, naming the file, when it
    is readable by group or others, empty, or cannot be read."""
    try:
        mode = os.stat(path).st_mode
        if mode & 0o077:
            raise XpodError(
                f"{what} {path}: mode {mode & 0o777:04o} lets other users read the token; run 'chmod 600 {path}'"
            )
        with open(path, encoding="utf-8") as f:
            token = f.read(4096).strip()
    except OSError as err:
        raise XpodError(f"{what} {path}: cannot read it: {err.strerror}") from None
    if not token or any(c.isspace() for c in token):
        raise XpodError(f"{what} {path}: must hold one token (no spaces)")
    return token


_CONFIG_KEYS = ("server", "token", "token_file", "tls_ca", "tls_cert", "tls_key")


def resolve_target(
    server: str | None = None,
    token: str | None = None,
    tls_ca: str | None = None,
    *,
    token_file: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> Target:
    """Flags, then XPOD_SERVER / XPOD_TOKEN / XPOD_TOKEN_FILE, then the config file, then the
    default."""
    config: dict[str, Any] = {}
    path = config_path()
    if os.path.exists(path):
        from xpod.hal.yamldoc import load_plain

        config = load_plain(path, empty={}) or {}
        if not isinstance(config, dict):
            raise XpodError(f"{path}: the xpod config file must be a mapping with {', '.join(_CONFIG_KEYS)}")
        unknown = set(config) - set(_CONFIG_KEYS)
        if unknown:
            raise XpodError(f"{path}: unknown key {sorted(unknown)[0]!r}; expected {', '.join(_CONFIG_KEYS)}")
    source = "flag"
    if not server:
        server, source = os.environ.get("XPOD_SERVER") or None, "XPOD_SERVER"
    if not server:
        server, source = config.get("server"), path
        if isinstance(server, list):  # replicas as a YAML list
            server = ",".join(str(a) for a in server)
    if not server:
        server, source = DEFAULT_SERVER, "default"
    if token and token_file:
        raise XpodError("give --token or --token-file, not both")
    if token_file:
        token = read_token_file(token_file)
    if not token:
        token = os.environ.get("XPOD_TOKEN") or None
    if not token and os.environ.get("XPOD_TOKEN_FILE"):
        token = read_token_file(os.environ["XPOD_TOKEN_FILE"], "XPOD_TOKEN_FILE")
    if not token:
        token = config.get("token") or None
    if not token and config.get("token_file"):
        token = read_token_file(str(config["token_file"]), f"{path}: token_file")
    if not tls_ca:
        tls_ca = config.get("tls_ca")
    tls_cert = tls_cert or config.get("tls_cert")
    tls_key = tls_key or config.get("tls_key")
    if bool(tls_cert) != bool(tls_key):
        raise XpodError("--tls-cert and --tls-key go together (the client certificate and its key)")
    if tls_cert and not tls_ca:
        raise XpodError("--tls-cert needs --tls-ca (mutual TLS is TLS first)")
    return Target(str(server), token, tls_ca, source, tls_cert, tls_key)


# --- the client -------------------------------------------------------------------------------


def _read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise XpodError(f"{path}: cannot read the {what} file: {err.strerror}") from None


class RpcFailure(XpodError):
    """A refused call: ``code`` (grpc.StatusCode name), ``reason`` (ErrorInfo), ``field``, and
    ``retry_after_s`` (RetryInfo) when the server says when to try again."""

    def __init__(
        self,
        message: str,
        code: str,
        reason: str = "",
        field: str | None = None,
        metadata=None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.field = field
        self.metadata = dict(metadata or {})
        self.retry_after_s = retry_after_s


#: how often ``Client.watch`` tries to reopen a stream the server ended for falling behind
_WATCH_RESUME_TRIES = 6
#: reasons a server gives when another replica (or a later try) should take the call
FAIL_OVER_REASONS = frozenset({"NOT_LEADER", "STORE_UNAVAILABLE", "SHUTTING_DOWN"})
#: a channel to a replica that went away retries its connection at most this often (gRPC's
#: default backoff grows to 120 s, far longer than a failover). ``min_reconnect_backoff_ms`` is
#: not a backoff: gRPC core reads it as the shortest time one connection attempt (TCP, TLS and
#: the server's HTTP/2 SETTINGS) gets (``ParseArgsForBackoffValues`` in its subchannel.cc). Set
#: to 200 ms, a busy host that answered a new connection later than that made a command fail
#: with "cannot reach the xpod server". With one address nothing else could take the call, so a
#: connection attempt gets gRPC's 20 s (each call's deadline, ``timeout_s``, bounds the wait all
#: the same).
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.min_reconnect_backoff_ms", 20_000),
]
#: with several replicas, a connection attempt to one that is frozen (its kernel completes the
#: handshake, the process never answers: stopped, swapped out, a hung host) must give up soon
#: enough to fail over within ``failover_s``: 3 s, fifteen times the 200 ms a busy host outran
#: (a replica slow to answer on a busy host is tried again after the others)
_FAILOVER_CHANNEL_OPTIONS = [*_CHANNEL_OPTIONS[:2], ("grpc.min_reconnect_backoff_ms", 3_000)]


class _Method:
    """``client._jobs.SubmitJob``: a stub method named, resolved on the current replica's channel
    at each try (so a retry after a failover goes to the new address)."""

    def __init__(self, client: "Client", service: str, name: str) -> None:
        self._client, self._service, self._name = client, service, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._client._stubs()[self._service], self._name)(*args, **kwargs)


class _Service:
    def __init__(self, client: "Client", service: str) -> None:
        self._client, self._service = client, service

    def __getattr__(self, name: str) -> _Method:
        return _Method(self._client, self._service, name)


class Client:
    """Blocking client of every xpod RPC: JobService, ClusterService and NodeService.

    Callers pass plain Python values and get the response messages back (read-only views: no
    caller builds a request). ``timeout_s`` is every unary call's deadline (streams have none);
    ``failover_s`` bounds the retries over several addresses (module docstring). Every gRPC
    error is raised as ``RpcFailure`` (an ``XpodError``: one line for the user)."""

    def __init__(self, target: Target, timeout_s: float = 10.0, failover_s: float = 30.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.failover_s = failover_s
        self._ca: bytes | None = None
        self._cert: tuple[bytes, bytes] | None = None
        if target.tls_ca:
            self._ca = _read_pem(target.tls_ca, "TLS CA")
        if target.tls_cert and target.tls_key:
            self._cert = (_read_pem(target.tls_key, "TLS key"), _read_pem(target.tls_cert, "TLS certificate"))
        self._addresses = list(target.addresses)
        self._current = self._addresses[0]
        self._channels: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._metadata = (("authorization", f"Bearer {target.token}"),) if target.token else ()
        self._jobs = _Service(self, "jobs")
        self._nodes = _Service(self, "nodes")
        self._cluster = _Service(self, "cluster")
        self._stubs()

    @property
    def address(self) -> str:
        """The replica the next call goes to."""
        return self._current

    def _stubs(self) -> dict[str, Any]:
        import grpc

        from xpod.proto.xpod.v1 import cluster_service_pb2_grpc, job_service_pb2_grpc, node_service_pb2_grpc

        address = self._current
        entry = self._channels.get(address)
        if entry is None:
            options = _FAILOVER_CHANNEL_OPTIONS if len(self._addresses) > 1 else _CHANNEL_OPTIONS
            if self._ca is not None:
                key, chain = self._cert or (None, None)
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=self._ca, private_key=key, certificate_chain=chain
                )
                channel = grpc.secure_channel(address, credentials, options=options)
            else:
                channel = grpc.insecure_channel(address, options=options)
            stubs = {
                "jobs": job_service_pb2_grpc.JobServiceStub(channel),
                "nodes": node_service_pb2_grpc.NodeServiceStub(channel),
                "cluster": cluster_service_pb2_grpc.ClusterServiceStub(channel),
            }
            entry = self._channels[address] = (channel, stubs)
        return entry[1]

    def close(self) -> None:
        for channel, _ in self._channels.values():
            channel.close()
        self._channels.clear()

    def _fails_over(self, err: Any, failure: "RpcFailure") -> bool:
        """A call another replica (or a later try) may take: several addresses, and UNAVAILABLE
        for a reason that says so (or none: the transport), or a deadline."""
        if len(self._addresses) < 2 and not failure.metadata.get("leader"):
            return False
        if failure.code == "DEADLINE_EXCEEDED":
            return True
        return failure.code == "UNAVAILABLE" and (not failure.reason or failure.reason in FAIL_OVER_REASONS)

    def _fail_over(self, failure: "RpcFailure") -> None:
        leader = failure.metadata.get("leader", "")
        if leader and leader != self._current:
            if leader not in self._addresses:
                self._addresses.append(leader)
            self._current = leader
            return
        i = self._addresses.index(self._current) if self._current in self._addresses else -1
        self._current = self._addresses[(i + 1) % len(self._addresses)]

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _failure(self, err: Any) -> RpcFailure:
        import grpc
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status

        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        if code in (grpc.StatusCode.UNAVAILABLE,) and not _has_details(err):
            return RpcFailure(
                f"cannot reach the xpod server at {self._current} (from {self.target.source}): {err.details()}; "
                "start one with 'xpod server' or pass --server / XPOD_SERVER",
                code.name,
            )
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return RpcFailure(
                f"the xpod server at {self._current} did not answer within {self.timeout_s:g} s", code.name
            )
        reason, field, metadata, retry_after_s = "", None, {}, None
        status = rpc_status.from_call(err)
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason, metadata = info.reason, dict(info.metadata)
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    if bad.field_violations:
                        field = bad.field_violations[0].field
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    retry = error_details_pb2.RetryInfo()
                    detail.Unpack(retry)
                    retry_after_s = retry.retry_delay.ToNanoseconds() / 1e9
        shown = f" {reason}" if reason else ""
        return RpcFailure(f"{code.name}{shown}: {err.details()}", code.name, reason, field, metadata, retry_after_s)

    def _call(self, stub_method: Any, request: Any, timeout_s: float | None = None) -> Any:
        """One unary call; over several replicas, the same request again on the next one while
        it fails over (module docstring), within ``failover_s``."""
        import grpc

        give_up = time.monotonic() + self.failover_s
        tries = 0
        while True:
            try:
                return stub_method(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)
            except grpc.RpcError as err:
                failure = self._failure(err)
                if not self._fails_over(err, failure) or time.monotonic() >= give_up:
                    raise failure from None
                self._fail_over(failure)
                tries += 1
                if tries % max(1, len(self._addresses)) == 0:
                    time.sleep(min(0.5, 0.05 * tries))  # every replica refused: one is taking over

    def _stream(self, stub_method: Any, request: Any) -> Iterator[Any]:
        """A server stream; when it breaks for a reason another replica can take, the next
        call (the caller reconnects) goes there."""
        import grpc

        try:
            yield from stub_method(request, metadata=self._metadata)
        except grpc.RpcError as err:
            if err.code() is grpc.StatusCode.CANCELLED:
                return
            failure = self._failure(err)
            if self._fails_over(err, failure):
                self._fail_over(failure)
            raise failure from None

    # --- JobService ---

    def submit(self, document: dict[str, Any], request_id: str | None = None) -> Any:
        """SubmitJob of a job document (a parsed job file); ``request_id`` is the idempotency key
        (default: a new UUID). Returns the response: ``.job`` and ``.created``."""
        from xpod.proto.xpod.v1 import job_service_pb2

        req = job_service_pb2.SubmitJobRequest(request_id=request_id or f"cli-{uuid.uuid4()}")
        req.job.update(document)
        return self._call(self._jobs.SubmitJob, req)

    def get(self, job_id: str) -> Any:
        """GetJob: ``.job`` and its ``.events``."""
        from xpod.proto.xpod.v1 import job_service_pb2

        return self._call(self._jobs.GetJob, job_service_pb2.GetJobRequest(job_id=job_id))

    def list(self, queue: str = "", states: Iterable[str] = ()) -> list[Any]:
        """Every page of ListJobs; ``states`` are names (``QUEUED``, ``RUNNING``, ...), none = all."""
        from xpod.proto.xpod.v1 import job_service_pb2

        wanted = [job_state_value(s) for s in states]
        jobs, token = [], ""
        while True:
            resp = self._call(
                self._jobs.ListJobs,
                job_service_pb2.ListJobsRequest(queue=queue, states=wanted, page_size=1000, page_token=token),
            )
            jobs.extend(resp.jobs)
            token = resp.next_page_token
            if not token:
                return jobs

    def cancel(self, job_id: str) -> Any:
        """CancelJob: ``.job`` as it is after the cancel."""
        from xpod.proto.xpod.v1 import job_service_pb2

        return self._call(self._jobs.CancelJob, job_service_pb2.CancelJobRequest(job_id=job_id))

    def explain(self, job_id: str) -> Any:
        """ExplainJob: ``.lines`` (why it waits or where it runs) and ``.numbers``."""
        from xpod.proto.xpod.v1 import job_service_pb2

        return self._call(self._jobs.ExplainJob, job_service_pb2.ExplainJobRequest(job_id=job_id))

    def moe_history(self, job_id: str) -> list[dict[str, Any]]:
        """GetMoeHistory: the closed windows of a job's live MoE loop, oldest first, as dicts
        (``runtime.moe.live.LiveEntry.to_json`` keys; ``balance_before`` None for the first plan)."""
        from xpod.proto.xpod.v1 import job_service_pb2

        resp = self._call(self._jobs.GetMoeHistory, job_service_pb2.GetMoeHistoryRequest(job_id=job_id))
        return [
            {
                "window": w.window,
                "time_s": w.time_seconds,
                "tokens": w.tokens,
                "reports": w.reports,
                "published": w.published,
                "initial": w.initial,
                "moves": w.moves,
                "balance_before": w.balance_before if w.has_balance_before else None,
                "balance_after": w.balance_after,
                "reason": w.reason,
                "plan_revision": w.plan_revision,
            }  # fmt: skip
            for w in resp.windows
        ]

    def watch(self, from_revision: int = 0, queue: str = "", job_id: str = "") -> Iterator[Any]:
        """WatchJobs: job events after ``from_revision``, until the caller stops iterating. A
        stream the server ended because this reader fell behind (``WATCH_BEHIND``) is opened
        again from the last revision received, so no event is lost or seen twice (while the
        server has no stream slot free for it, it waits as told, a few times)."""
        from xpod.proto.xpod.v1 import job_service_pb2

        revision = from_revision
        resuming = 0  # reopen attempts since the last event
        while True:
            req = job_service_pb2.WatchJobsRequest(from_revision=revision, queue=queue, job_id=job_id)
            try:
                for resp in self._stream(self._jobs.WatchJobs, req):
                    revision = max(revision, resp.event.revision)
                    resuming = 0
                    yield resp.event
                return
            except RpcFailure as failure:
                busy = failure.reason in ("TOO_MANY_STREAMS", "TOO_MANY_WATCHES")
                if failure.reason != "WATCH_BEHIND" and not (busy and 0 < resuming < _WATCH_RESUME_TRIES):
                    raise
                resuming += 1
                if busy:
                    time.sleep(min(failure.retry_after_s or 1.0, 5.0))

    # --- ClusterService ---

    def get_cluster(self) -> Any:
        from xpod.proto.xpod.v1 import cluster_service_pb2

        return self._call(self._cluster.GetCluster, cluster_service_pb2.GetClusterRequest())

    def list_nodes(self) -> Any:
        from xpod.proto.xpod.v1 import cluster_service_pb2

        return self._call(self._cluster.ListNodes, cluster_service_pb2.ListNodesRequest()).nodes

    def list_devices(self, node: str = "") -> Any:
        """ListDevices of one node, or of all with ``node=""``."""
        from xpod.proto.xpod.v1 import cluster_service_pb2

        return self._call(self._cluster.ListDevices, cluster_service_pb2.ListDevicesRequest(node=node)).devices

    # --- NodeService (the node agent's side): every call carries all the nodes of one agent

    def register_nodes(self, records: Sequence[NodeRecord]) -> float:
        """RegisterNodes (``contract.NodeRecord``s, in calls of at most ``NODES_PER_CALL``);
        returns the heartbeat interval the server expects (s)."""
        from xpod.proto.xpod.v1 import node_service_pb2, types_pb2

        interval_s = 0.0
        for i in range(0, len(records), NODES_PER_CALL):
            req = node_service_pb2.RegisterNodesRequest()
            for r in records[i : i + NODES_PER_CALL]:
                node = req.nodes.add(
                    name=r.name, labels=dict(r.labels), cpu_milli=r.cpu_milli, memory_bytes=r.memory_bytes
                )
                for d in r.devices:
                    node.devices.append(
                        types_pb2.Device(
                            id=f"{r.name}/{d.index}", node=r.name, index=d.index, vendor=d.vendor, model=d.model,
                            health=d.health.value, memory_total_bytes=d.memory_total_bytes, simulated=d.simulated,
                        )
                    )  # fmt: skip
            interval_s = self._call(self._nodes.RegisterNodes, req).heartbeat_interval_seconds
        return interval_s

    def heartbeat(self, health: Mapping[str, Mapping[int, Any]]) -> tuple[float, list[str]]:
        """Heartbeat of every node: name -> device index -> ``hal.Health`` of the devices whose
        health changed. Returns (seconds until the next is due, nodes the server does not know)."""
        from xpod.proto.xpod.v1 import node_service_pb2

        names = list(health)
        interval_s, unknown = 0.0, []
        for i in range(0, len(names), NODES_PER_CALL):
            req = node_service_pb2.HeartbeatRequest()
            for name in names[i : i + NODES_PER_CALL]:
                beat = req.nodes.add(node=name)
                for index, h in health[name].items():
                    beat.devices.add(index=index, health=h.value)
            resp = self._call(self._nodes.Heartbeat, req)
            interval_s = resp.interval_seconds
            unknown.extend(resp.unknown_nodes)
        return interval_s, unknown

    def watch_assignments(self, nodes: Sequence[str]) -> "AssignmentStream":
        """One WatchAssignments stream for all these nodes: iterate for batches of
        ``contract.Assignment``; ``cancel()`` ends it."""
        from xpod.proto.xpod.v1 import node_service_pb2

        req = node_service_pb2.WatchAssignmentsRequest(nodes=list(nodes))
        return AssignmentStream(self, self._nodes.WatchAssignments(req, metadata=self._metadata))

    def report_tasks(self, reports: Sequence[TaskReport]) -> list[str | None]:
        """ReportTaskStatus of ``contract.TaskReport``s; for each report, the reason the server
        refused it (``NOT_ASSIGNED``, ``JOB_NOT_FOUND``) or None."""
        from xpod.proto.xpod.v1 import node_service_pb2

        out: list[str | None] = []
        for i in range(0, len(reports), NODES_PER_CALL):
            req = node_service_pb2.ReportTaskStatusRequest()
            for r in reports[i : i + NODES_PER_CALL]:
                req.reports.add(
                    job_id=r.job_id, node=r.node, state=node_service_pb2.TaskState.Value(f"TASK_STATE_{r.state.value}"),
                    message=r.message, exit_code=r.exit_code, failed_tasks=list(r.failed_tasks),
                )  # fmt: skip
            out.extend(a.refused_reason or None for a in self._call(self._nodes.ReportTaskStatus, req).answers)
        return out

    def report_expert_loads(self, report: MoeLoadReport) -> MoePlanAnswer:
        """ReportExpertLoads of one replica's loads (empty ``counts``: only ask for the plan);
        the plan in force in answer. A refusal raises ``RpcFailure`` (NOT_FOUND,
        INVALID_ARGUMENT naming the shapes, FAILED_PRECONDITION)."""
        from xpod.proto.xpod.v1 import node_service_pb2

        req = node_service_pb2.ReportExpertLoadsRequest(
            job_id=report.job_id, node=report.node, replica=report.replica, layers=report.layers,
            experts=report.experts, counts=list(report.counts), known_plan_revision=report.known_plan,
        )  # fmt: skip
        resp = self._call(self._nodes.ReportExpertLoads, req)
        return MoePlanAnswer(resp.plan_revision, resp.plan_json, resp.sglang_json)

    def report_load(self, report: LoadReport) -> int:
        """ReportLoad of one serving replica's load; the replicas its job's autoscaling wants.
        A refusal raises ``RpcFailure`` (NOT_FOUND: unknown job, role or replica; FAILED_PRECONDITION:
        no autoscale, or not bound to the node; INVALID_ARGUMENT: not a finite number >= 0)."""
        from xpod.proto.xpod.v1 import node_service_pb2

        req = node_service_pb2.ReportLoadRequest(
            job_id=report.job_id, node=report.node, replica=report.replica, value=report.value, role=report.role
        )
        return self._call(self._nodes.ReportLoad, req).desired_replicas


#: nodes (or reports) per NodeService call: the server takes up to 1000
NODES_PER_CALL = 500


class AssignmentStream:
    """An agent's open WatchAssignments stream. Iterating yields batches of
    ``contract.Assignment`` (one per commit that touched its nodes) until the server ends the
    stream or ``cancel()`` is called (then iteration just stops); any other failure is raised as
    ``RpcFailure``."""

    def __init__(self, client: Client, call: Any) -> None:
        self._client = client
        self._call = call

    def __iter__(self) -> Iterator[list[Assignment]]:
        import grpc

        try:
            for resp in self._call:
                yield [_assignment(a) for a in resp.assignments]
        except grpc.RpcError as err:
            if err.code() is grpc.StatusCode.CANCELLED:
                return
            failure = self._client._failure(err)
            if self._client._fails_over(err, failure):
                self._client._fail_over(failure)  # the agent's reconnect goes to the next replica
            raise failure from None

    def cancel(self) -> None:
        self._call.cancel()


def _assignment(a: Any) -> Assignment:
    if not a.run:
        return Assignment(a.node, a.job_id, False, document=spec_dict(a.job.spec), state=job_state(a.job))
    return Assignment(
        a.node,
        a.job_id,
        True,
        tuple(TaskAllocation(x.task, tuple(x.devices)) for x in a.allocations),
        spec_dict(a.job.spec),
        a.job.queue,
        a.job.kind,
        tuple((x.task, x.node) for x in a.job.allocations),
        str(a.job.create_time.ToNanoseconds()),
        job_state(a.job),
    )


def job_state_value(name: str) -> int:
    """A job state name (``QUEUED`` or ``JOB_STATE_QUEUED``) as the enum value; unknown names are
    an ``XpodError`` listing the known ones."""
    from xpod.proto.xpod.v1 import types_pb2

    full = name.upper() if name.upper().startswith("JOB_STATE_") else f"JOB_STATE_{name.upper()}"
    try:
        return types_pb2.JobState.Value(full)
    except ValueError:
        known = ", ".join(n.removeprefix("JOB_STATE_") for n in types_pb2.JobState.keys()[1:])
        raise XpodError(f"unknown job state {name!r}; expected one of {known}") from None


def _has_details(err: Any) -> bool:
    try:
        return any(k == "grpc-status-details-bin" for k, _ in (err.trailing_metadata() or ()))
    except Exception:  # a channel-level failure has no trailing metadata
        return False
