"""Response messages as plain JSON values, the shapes ``xpod ... --json`` prints.

Every field is present (zero values included: ``ready: false`` and ``allocated_milli: 0`` are
facts, not omissions; an unset message field is ``null``), field names are the proto names, 64-bit integers are JSON numbers (the
protobuf JSON mapping writes them as strings), enums are their short names (``RUNNING``, not
``JOB_STATE_RUNNING``) and numbers in a job's spec are ints where the job file had ints.
"""

from __future__ import annotations

from typing import Any

_INT64 = None  # the descriptor cpp types that JSON mapping writes as strings, filled on first use


def message_json(message: Any) -> dict[str, Any]:
    """Any response message as a dict (see the module docstring), keys in the .proto's order."""
    from google.protobuf import json_format

    d = json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return _numbers(message, d)


def _numbers(message: Any, d: dict[str, Any]) -> dict[str, Any]:
    # int64/uint64 fields come back as strings: walk the descriptor to make them ints again
    global _INT64
    if _INT64 is None:
        from google.protobuf.descriptor import FieldDescriptor

        _INT64 = {FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64}
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        name = field.name
        if name not in d:
            out[name] = None  # an unset message field (no pending reason, no heartbeat yet)
            continue
        value = d[name]
        kind = field.message_type
        if field.cpp_type in _INT64:
            value = [int(x) for x in value] if field.is_repeated else int(value)
        elif kind is not None and not kind.GetOptions().map_entry and not kind.full_name.startswith("google.protobuf."):
            sub = getattr(message, name)  # Struct and Timestamp are JSON already
            value = (
                [_numbers(m, x) for m, x in zip(sub, value, strict=True)] if field.is_repeated else _numbers(sub, value)
            )
        out[name] = value
    return out


def job_json(job: Any) -> dict[str, Any]:
    """A Job message: ``state`` without its JOB_STATE_ prefix, ``spec`` with ints as written."""
    d = message_json(job)
    d["state"] = d.get("state", "").removeprefix("JOB_STATE_")
    d["spec"] = _ints(d.get("spec", {}))
    return d


def job_state(job: Any) -> str:
    """A Job message's state as its short name (``RUNNING``)."""
    from xpod.proto.xpod.v1 import types_pb2

    return types_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")


def event_json(event: Any) -> dict[str, Any]:
    """A JobEvent message: ``type`` without its prefix; the job inside as ``job_json``."""
    d = message_json(event)
    d["type"] = d.get("type", "").removeprefix("JOB_EVENT_TYPE_")
    if event.HasField("job"):
        d["job"] = job_json(event.job)
    else:
        d.pop("job", None)
    return d


def spec_dict(struct: Any) -> dict[str, Any]:
    """A ``google.protobuf.Struct`` (a job's spec) as plain values, ints where the file had ints."""
    from google.protobuf import json_format

    return _ints(json_format.MessageToDict(struct))


def _ints(v: Any) -> Any:
    # protobuf Struct holds only doubles: show 8.0 as 8, as the job file had it
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    if isinstance(v, dict):
        return {k: _ints(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_ints(x) for x in v]
    return v
