"""The xpod client: where the server is, who we are, and one method per RPC.

Address and token are resolved in this order (the first that gives a value wins, per value):

1. flags (``--server``, ``--token``),
2. environment (``XPOD_SERVER``, ``XPOD_TOKEN``),
3. the config file ``$XPOD_CONFIG`` or ``~/.config/xpod/config.yaml``
   (keys: ``server``, ``token``, ``tls_ca``),
4. the default address ``127.0.0.1:7070`` (no token).

Every call has a deadline (``timeout_s``). A gRPC error becomes one ``XpodError`` line: an
unreachable server names the address; a refusal gives the code, the server's reason and
message. Job files are YAML; their errors are ``FILE:LINE: message``, also for a field the
server rejects (the field path it names is mapped back to the line in the file).
"""

from __future__ import annotations

import dataclasses
import os
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


class Client:
    """Blocking client over the generated stubs. ``timeout_s`` is every unary call's deadline."""

    def __init__(self, target: Target, timeout_s: float = 10.0) -> None:
        import grpc

        from xpod.proto.xpod.v1 import cluster_service_pb2_grpc, job_service_pb2_grpc, node_service_pb2_grpc

        self.target = target
        self.timeout_s = timeout_s
        if target.tls_ca:
            try:
                with open(target.tls_ca, "rb") as f:
                    ca = f.read()
            except OSError as err:
                raise XpodError(f"{target.tls_ca}: cannot read the TLS CA file: {err.strerror}") from None
            self._channel = grpc.secure_channel(target.server, grpc.ssl_channel_credentials(root_certificates=ca))
        else:
            self._channel = grpc.insecure_channel(target.server)
        self._metadata = (("authorization", f"Bearer {target.token}"),) if target.token else ()
        self.jobs = job_service_pb2_grpc.JobServiceStub(self._channel)
        self.nodes = node_service_pb2_grpc.NodeServiceStub(self._channel)
        self.cluster = cluster_service_pb2_grpc.ClusterServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

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
                f"cannot reach the xpod server at {self.target.server} (from {self.target.source}): {err.details()}; "
                "start one with 'xpod server' or pass --server / XPOD_SERVER",
                code.name,
            )
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return RpcFailure(
                f"the xpod server at {self.target.server} did not answer within {self.timeout_s:g} s", code.name
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
        import grpc

        try:
            return stub_method(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as err:
            raise self._failure(err) from None

    def stream(self, stub_method, request) -> Iterator[Any]:
        import grpc

        try:
            yield from stub_method(request, metadata=self._metadata)
        except grpc.RpcError as err:
            if err.code() is grpc.StatusCode.CANCELLED:
                return
            raise self._failure(err) from None

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
