"""Conversions between ``xpod.v1`` protobuf messages and the service's values, both ways, and
``ApiError`` -> ``google.rpc.Status``. With ``servicers`` and ``server``, the only server-side
code that touches generated protobuf code.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from xpod.hal.device import Health
from xpod.proto.xpod.v1 import node_service_pb2, types_pb2
from xpod.scheduler.contract import DeviceRecord, NodeRecord
from xpod.scheduler.service.api import ERROR_DOMAIN, ApiError, Code
from xpod.scheduler.service.jobs import JobView
from xpod.scheduler.service.nodes import NodeState, NodeStatus
from xpod.scheduler.store import AllocationRecord, EventRecord, JobRecord, JobState, PendingReasonRecord

STATE_TO_PB = {s: types_pb2.JobState.Value(f"JOB_STATE_{s.value}") for s in JobState}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}
_NODE_STATUS_TO_PB = {s: types_pb2.NodeStatus.Value(f"NODE_STATUS_{s.name}") for s in NodeStatus}
_HEALTH_WORDS = {h.value: h for h in Health}


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON values; integral numbers become ints (Struct keeps only doubles,
    so ``count: 8`` arrives as 8.0 and the spec parser wants an int). Walks the message
    directly: ``json_format.MessageToDict`` costs several times more per submission."""
    return {k: _value(v) for k, v in s.fields.items()}


def _value(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        x = v.number_value
        if math.isfinite(x) and x.is_integer() and abs(x) < 2**53:
            return int(x)
        return x
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return {k: _value(x) for k, x in v.struct_value.fields.items()}
    if kind == "list_value":
        return [_value(x) for x in v.list_value.values]
    return None


def pending_pb(p: PendingReasonRecord | None) -> types_pb2.PendingReason | None:
    if p is None:
        return None
    return types_pb2.PendingReason(reason=p.reason, message=p.message, metadata=dict(p.metadata))


def alloc_pb(a: AllocationRecord) -> types_pb2.Allocation:
    return types_pb2.Allocation(**a.to_json())  # the record's JSON names are the message's fields


#: job document -> Struct, by ``spec_hash`` (a job's document never changes): a job goes out many
#: times (its assignment, every report's answer, events, lists), and building a Struct from a
#: dict costs ~100 us of the event loop each time, copying a built one a few
_SPECS: dict[str, struct_pb2.Struct] = {}
_SPECS_MAX = 16_384


def spec_struct(job: JobRecord, given: struct_pb2.Struct | None = None) -> struct_pb2.Struct:
    """The job's document as a Struct (``given``: the one it came in, kept for next time). A job
    whose spec retention dropped (``{}``) shows none, whatever was kept."""
    if not job.spec and given is None:
        return struct_pb2.Struct()
    spec = _SPECS.pop(job.spec_hash, None) or given
    if spec is None:
        spec = struct_pb2.Struct()
        spec.update(job.spec)
    if len(_SPECS) >= _SPECS_MAX:  # the least recently used goes (dicts keep insertion order)
        with contextlib.suppress(StopIteration, RuntimeError):  # another thread's turn
            _SPECS.pop(next(iter(_SPECS)), None)
    _SPECS[job.spec_hash] = spec
    return spec


def job_pb(
    job: JobRecord,
    queue_position: int = 0,
    pending: PendingReasonRecord | None = None,
    spec: struct_pb2.Struct | None = None,
) -> types_pb2.Job:
    """``spec``: the Struct the job came in (SubmitJob answers with it rather than rebuild it)."""
    msg = types_pb2.Job(
        id=job.id,
        request_id=job.request_id,
        queue=job.queue,
        kind=job.kind,
        name=job.name,
        state=STATE_TO_PB[job.state],
        allocations=[alloc_pb(a) for a in job.allocations],
        create_time=_ts(job.create_time_s),
        update_time=_ts(job.update_time_s),
        revision=job.revision,
        queue_position=queue_position,
        message=job.message,
        restarts=job.restarts,
    )
    msg.spec.CopyFrom(spec_struct(job, spec))  # cheaper than a constructor argument
    p = pending_pb(pending if pending is not None else job.pending)
    if p is not None and job.state is JobState.QUEUED:
        msg.pending_reason.CopyFrom(p)
    return msg


def view_pb(view: JobView, spec: struct_pb2.Struct | None = None) -> types_pb2.Job:
    return job_pb(view.record, view.queue_position, view.pending, spec)


def event_pb(ev: EventRecord) -> types_pb2.JobEvent:
    return types_pb2.JobEvent(
        revision=ev.revision,
        job_id=ev.job_id,
        type=types_pb2.JobEventType.Value(f"JOB_EVENT_TYPE_{ev.type.value}"),
        time=_ts(ev.time_s),
        message=ev.message,
        job=job_pb(ev.job),
    )


def device_pb(
    node: str, d: DeviceRecord, allocated_milli: int = 0, job_ids: list[str] | None = None
) -> types_pb2.Device:
    return types_pb2.Device(
        id=f"{node}/{d.index}", node=node, allocated_milli=allocated_milli, job_ids=job_ids or [], **d.to_json()
    )


#: NodeRecord -> its Node message without the live fields (a record changes only when the node
#: registers again or a device's health changes): ListNodes of a thousand nodes copies them
_NODES: dict[int, tuple[NodeRecord, types_pb2.Node]] = {}  # by id(): hashing a record costs more


def node_pb(n: NodeState) -> types_pb2.Node:
    r = n.record
    cached = _NODES.get(id(r))
    fixed = cached[1] if cached is not None and cached[0] is r else None
    if fixed is None:
        fixed = types_pb2.Node(
            name=r.name,
            devices=[device_pb(r.name, d) for d in r.devices],
            labels=dict(r.labels),
            cpu_milli=r.cpu_milli,
            memory_bytes=r.memory_bytes,
            simulated=r.simulated,
        )
        if len(_NODES) >= 4096:  # records replaced by health changes linger until then
            _NODES.clear()
        _NODES[id(r)] = (r, fixed)
    msg = types_pb2.Node()
    msg.CopyFrom(fixed)
    msg.ready, msg.status, msg.status_reason = n.ready, _NODE_STATUS_TO_PB[n.status], n.reason
    if n.last_heartbeat_s:
        msg.last_heartbeat_time.CopyFrom(_ts(n.last_heartbeat_s))
    return msg


def assignment_pb(a: Any) -> Any:
    """A ``service.assignments.Assignment`` as ``xpod.v1.Assignment``."""
    return node_service_pb2.Assignment(
        node=a.node, job_id=a.job.id, run=a.run, job=job_pb(a.job), allocations=[alloc_pb(x) for x in a.allocations]
    )


def health_from_pb(word: str, field: str) -> Health:
    """A device's health word (``ok``, ... ``unknown``; empty = unknown); INVALID_ARGUMENT else."""
    if not word:
        return Health.UNKNOWN
    health = _HEALTH_WORDS.get(word)
    if health is None:
        raise ApiError(
            Code.INVALID_ARGUMENT,
            "INVALID_HEALTH",
            f"{field} {word[:40]!r} is not one of {', '.join(_HEALTH_WORDS)}",
            field=field,
        )
    return health


def node_from_pb(n: types_pb2.Node, field: str = "node") -> NodeRecord:
    devices = tuple(
        DeviceRecord(
            d.index,
            d.vendor,
            d.model,
            d.memory_total_bytes,
            health_from_pb(d.health, f"{field}.devices.health"),
            d.simulated,
        )
        for d in sorted(n.devices, key=lambda d: d.index)
    )
    return NodeRecord(n.name, devices, tuple(sorted(n.labels.items())), n.cpu_milli, n.memory_bytes)


_MAX_MESSAGE_CHARS = 500
_MAX_VIOLATIONS = 10  # (each up to 500 characters: within the client's 8 KiB of trailers)


def status_for(err: ApiError) -> status_pb2.Status:
    """The google.rpc.Status for an API error (AIP-193). The message, field and metadata values
    (which may quote the caller's input) are cut to ``_MAX_MESSAGE_CHARS``: they go out in the
    trailers several times (grpc-message, the Status, ErrorInfo, BadRequest), and past the
    client's 8 KiB metadata limit the caller would get RESOURCE_EXHAUSTED instead of this error."""
    message = err.message if len(err.message) <= _MAX_MESSAGE_CHARS else err.message[: _MAX_MESSAGE_CHARS - 1] + "…"
    status = status_pb2.Status(code=getattr(code_pb2, err.code.value), message=message)
    metadata = {k: v[:_MAX_MESSAGE_CHARS] for k, v in err.metadata.items()}
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN, metadata=metadata)
    status.details.add().Pack(info)
    if err.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=field[:_MAX_MESSAGE_CHARS], description=text[:_MAX_MESSAGE_CHARS]
                )
                for field, text in err.violations[:_MAX_VIOLATIONS]
            ]
        )
        status.details.add().Pack(bad)
    if err.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(err.retry_after_s * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status
