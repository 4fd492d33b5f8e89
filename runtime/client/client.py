"""The xpod client: where the server is, who we are, and one method per RPC.

Address and token are resolved in this order (the first that gives a value wins, per value):

1. flags (``--server``, ``--token``),
2. environment (``XPOD_SERVER``, ``XPOD_TOKEN``),
3. the config file ``$XPOD_CONFIG`` or ``~/.config/xpod/config.yaml``
   (keys: ``server``, ``token``, ``tls_ca``),
4. the default address ``127.0.0.1:7070`` (no token).

The address may be a comma-separated list (the config file may also give a YAML list): the
replicas of one scheduler sharing a PostgreSQL store (docs/high-availability.md). The client
talks to one at a time; a call refused with UNAVAILABLE (the server is gone, it follows another
replica: reason ``NOT_LEADER`` with the leader's address, or it lost its store) or that ran past
its deadline is sent again, the same request with the same request id, to the leader it named
or else the next address, for up to ``failover_s`` (backing off once every address was tried).
A submission retried so is acknowledged once: the store's request-id idempotency.

Every call has a deadline (``timeout_s``). A gRPC error becomes one ``XpodError`` line: an
unreachable server names the address; a refusal gives the code, the server's reason and
message. Job files are YAML; their errors are ``FILE:LINE: message``, also for a field the
server rejects (the field path it names is mapped back to the line in the file).
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from typing import Any, Iterator

import yaml

from xpod.hal.errors import XpodError

DEFAULT_SERVER = "127.0.0.1:7070"
JOB_KINDS = ("TrainingJob", "ServingJob", "BatchJob")


@dataclasses.dataclass(frozen=True)
class Target:
    server: str
    token: str | None
    tls_ca: str | None
    source: str  # where the address came from: flag, XPOD_SERVER, config file path, default

    @property
    def addresses(self) -> tuple[str, ...]:
        """The replicas to try, in order (``server`` split at commas)."""
        return tuple(a.strip() for a in self.server.split(",") if a.strip()) or (DEFAULT_SERVER,)


def config_path() -> str:
    return os.environ.get("XPOD_CONFIG") or os.path.join(os.path.expanduser("~"), ".config", "xpod", "config.yaml")


def resolve_target(server: str | None = None, token: str | None = None, tls_ca: str | None = None) -> Target:
    """Flags, then XPOD_SERVER / XPOD_TOKEN, then the config file, then the default."""
    config: dict[str, Any] = {}
    path = config_path()
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                config = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as err:
            raise XpodError(f"{path}: cannot read the xpod config file: {err}") from None
        if not isinstance(config, dict):
            raise XpodError(f"{path}: the xpod config file must be a mapping with server, token, tls_ca")
        unknown = set(config) - {"server", "token", "tls_ca"}
        if unknown:
            raise XpodError(f"{path}: unknown key {sorted(unknown)[0]!r}; expected server, token, tls_ca")
    source = "flag"
    if not server:
        server, source = os.environ.get("XPOD_SERVER") or None, "XPOD_SERVER"
    if not server:
        server, source = config.get("server"), path
        if isinstance(server, list):  # replicas as a YAML list
            server = ",".join(str(a) for a in server)
    if not server:
        server, source = DEFAULT_SERVER, "default"
    if not token:
        token = os.environ.get("XPOD_TOKEN") or config.get("token") or None
    if not tls_ca:
        tls_ca = config.get("tls_ca")
    return Target(str(server), token, tls_ca, source)


# --- job files --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobFile:
    path: str
    document: dict[str, Any]
    root: Any  # the composed yaml node, to map field paths back to lines

    def line_of(self, field: str) -> int:
        """1-based line of a dotted field path (``spec.tasks``, ``spec.containers[0].image``);
        the deepest node found along the path."""
        import re

        node = self.root
        line = node.start_mark.line + 1
        for part in re.findall(r"[^.\[\]]+|\[\d+\]", field):
            if part.startswith("[") and isinstance(node, yaml.SequenceNode):
                i = int(part[1:-1])
                if i >= len(node.value):
                    break
                node = node.value[i]
            elif isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if k.value == part), None)
                if match is None:
                    break
                line = match[0].start_mark.line + 1
                node = match[1]
                continue
            else:
                break
            line = node.start_mark.line + 1
        return line


def load_job_file(path: str) -> JobFile:
    """Read a job file; envelope problems are ``FILE:LINE: message`` XpodErrors."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise XpodError(f"{path}: cannot read the job file: {err.strerror}") from None
    try:
        root = yaml.compose(text)
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise XpodError(f"{path}{where}: not valid YAML: {getattr(err, 'problem', None) or err}") from None
    if root is None or not isinstance(document, dict):
        raise XpodError(f"{path}:1: a job file is a mapping with kind, metadata and spec")
    job = JobFile(path, document, root)
    kind = document.get("kind")
    if kind not in JOB_KINDS:
        line = job.line_of("kind") if "kind" in document else 1
        raise XpodError(f"{path}:{line}: kind must be one of {', '.join(JOB_KINDS)} (got {kind!r})")
    _check_json_values(job, document, "")
    return job


def _check_json_values(job: JobFile, value: Any, path: str) -> None:
    # YAML has values JSON (and the API) lacks: dates, binary, non-string keys.
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise XpodError(f"{job.path}:{job.line_of(path)}: {path or 'document'}: key {k!r} must be a string")
            _check_json_values(job, v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json_values(job, v, f"{path}[{i}]")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise XpodError(
            f"{job.path}:{job.line_of(path)}: {path}: {type(value).__name__} value {value!r} is not allowed; quote it as a string"
        )


# --- the client -------------------------------------------------------------------------------


class RpcFailure(XpodError):
    """A refused call: ``code`` (grpc.StatusCode name), ``reason`` (ErrorInfo), ``field``."""

    def __init__(self, message: str, code: str, reason: str = "", field: str | None = None, metadata=None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.field = field
        self.metadata = dict(metadata or {})


#: reasons a server gives when another replica (or a later try) should take the call
FAIL_OVER_REASONS = frozenset({"NOT_LEADER", "STORE_UNAVAILABLE", "SHUTTING_DOWN"})
#: a channel to a replica that went away retries its connection at most this often (gRPC's
#: default backoff grows to 120 s, far longer than a failover)
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class _Method:
    """``client.jobs.SubmitJob``: a stub method named, resolved on the current replica's channel
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
    """Blocking client over the generated stubs. ``timeout_s`` is every unary call's deadline;
    ``failover_s`` bounds the retries over several addresses (module docstring)."""

    def __init__(self, target: Target, timeout_s: float = 10.0, failover_s: float = 30.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.failover_s = failover_s
        self._ca: bytes | None = None
        if target.tls_ca:
            try:
                with open(target.tls_ca, "rb") as f:
                    self._ca = f.read()
            except OSError as err:
                raise XpodError(f"{target.tls_ca}: cannot read the TLS CA file: {err.strerror}") from None
        self._addresses = list(target.addresses)
        self._current = self._addresses[0]
        self._channels: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._metadata = (("authorization", f"Bearer {target.token}"),) if target.token else ()
        self.jobs = _Service(self, "jobs")
        self.nodes = _Service(self, "nodes")
        self.cluster = _Service(self, "cluster")
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
            if self._ca is not None:
                credentials = grpc.ssl_channel_credentials(root_certificates=self._ca)
                channel = grpc.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
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
        reason, field, metadata = "", None, {}
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
        shown = f" {reason}" if reason else ""
        return RpcFailure(f"{code.name}{shown}: {err.details()}", code.name, reason, field, metadata)

    def call(self, stub_method, request, timeout_s: float | None = None):
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

    def stream(self, stub_method, request) -> Iterator[Any]:
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

    # JobService

    def submit(self, document: dict[str, Any], request_id: str | None = None):
        from xpod.proto.xpod.v1 import job_service_pb2

        req = job_service_pb2.SubmitJobRequest(request_id=request_id or f"cli-{uuid.uuid4()}")
        req.job.update(document)
        return self.call(self.jobs.SubmitJob, req)

    def get(self, job_id: str):
        from xpod.proto.xpod.v1 import job_service_pb2

        return self.call(self.jobs.GetJob, job_service_pb2.GetJobRequest(job_id=job_id))

    def list(self, queue: str = "", states: tuple[int, ...] = ()) -> list[Any]:
        """Every page of ListJobs."""
        from xpod.proto.xpod.v1 import job_service_pb2

        jobs, token = [], ""
        while True:
            resp = self.call(
                self.jobs.ListJobs,
                job_service_pb2.ListJobsRequest(queue=queue, states=list(states), page_size=1000, page_token=token),
            )
            jobs.extend(resp.jobs)
            token = resp.next_page_token
            if not token:
                return jobs

    def cancel(self, job_id: str):
        from xpod.proto.xpod.v1 import job_service_pb2

        return self.call(self.jobs.CancelJob, job_service_pb2.CancelJobRequest(job_id=job_id))

    def explain(self, job_id: str):
        from xpod.proto.xpod.v1 import job_service_pb2

        return self.call(self.jobs.ExplainJob, job_service_pb2.ExplainJobRequest(job_id=job_id))

    def watch(self, from_revision: int = 0, queue: str = "", job_id: str = "") -> Iterator[Any]:
        from xpod.proto.xpod.v1 import job_service_pb2

        req = job_service_pb2.WatchJobsRequest(from_revision=from_revision, queue=queue, job_id=job_id)
        for resp in self.stream(self.jobs.WatchJobs, req):
            yield resp.event

    # ClusterService

    def list_nodes(self):
        from xpod.proto.xpod.v1 import cluster_service_pb2

        return self.call(self.cluster.ListNodes, cluster_service_pb2.ListNodesRequest()).nodes

    def list_devices(self, node: str = ""):
        from xpod.proto.xpod.v1 import cluster_service_pb2

        return self.call(self.cluster.ListDevices, cluster_service_pb2.ListDevicesRequest(node=node)).devices

    def get_cluster(self):
        from xpod.proto.xpod.v1 import cluster_service_pb2

        return self.call(self.cluster.GetCluster, cluster_service_pb2.GetClusterRequest())


def _has_details(err: Any) -> bool:
    try:
        return any(k == "grpc-status-details-bin" for k, _ in (err.trailing_metadata() or ()))
    except Exception:  # a channel-level failure has no trailing metadata
        return False


def job_json(job: Any) -> dict[str, Any]:
    """A Job message as the CLI's JSON: proto field names, enums as short names, and the
    ``state`` without its JOB_STATE_ prefix."""
    from google.protobuf import json_format

    d = json_format.MessageToDict(job, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    d["state"] = d.get("state", "").removeprefix("JOB_STATE_")
    d["spec"] = _ints(d.get("spec", {}))
    d["revision"] = int(d.get("revision", 0))
    for a in d.get("allocations", []):
        for key in ("cpu_milli", "memory_bytes", "device_memory_bytes"):
            a[key] = int(a.get(key, 0))
    return d


def _ints(v: Any) -> Any:
    # protobuf Struct holds only doubles: show 8.0 as 8, as the job file had it
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    if isinstance(v, dict):
        return {k: _ints(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_ints(x) for x in v]
    return v


def event_json(event: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    d = json_format.MessageToDict(event, preserving_proto_field_name=True)
    d["type"] = d.get("type", "").removeprefix("JOB_EVENT_TYPE_")
    d["revision"] = int(d.get("revision", 0))
    if "job" in d:
        d["job"] = job_json(event.job)
    return d
