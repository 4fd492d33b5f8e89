# DO NOT EDIT: generated from proto/xpod/v1/node_service.proto by `make proto`
# (proto/generate.py, grpcio-tools==1.85.1). Edit the .proto and regenerate.
from xpod.proto.xpod.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_RUNNING: _ClassVar[TaskState]
    TASK_STATE_SUCCEEDED: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_RUNNING: TaskState
TASK_STATE_SUCCEEDED: TaskState
TASK_STATE_FAILED: TaskState

class RegisterNodesRequest(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[_types_pb2.Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[_types_pb2.Node, _Mapping]]] = ...) -> None: ...

class RegisterNodesResponse(_message.Message):
    __slots__ = ("nodes", "heartbeat_interval_seconds")
    NODES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[_types_pb2.Node]
    heartbeat_interval_seconds: float
    def __init__(self, nodes: _Optional[_Iterable[_Union[_types_pb2.Node, _Mapping]]] = ..., heartbeat_interval_seconds: _Optional[float] = ...) -> None: ...

class DeviceHealth(_message.Message):
    __slots__ = ("index", "health")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    index: int
    health: str
    def __init__(self, index: _Optional[int] = ..., health: _Optional[str] = ...) -> None: ...

class NodeHeartbeat(_message.Message):
    __slots__ = ("node", "devices")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    node: str
    devices: _containers.RepeatedCompositeFieldContainer[DeviceHealth]
    def __init__(self, node: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[DeviceHealth, _Mapping]]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeHeartbeat]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeHeartbeat, _Mapping]]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("interval_seconds", "unknown_nodes")
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_NODES_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: float
    unknown_nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, interval_seconds: _Optional[float] = ..., unknown_nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchAssignmentsRequest(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("job_id", "allocations", "run", "job", "node")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    allocations: _containers.RepeatedCompositeFieldContainer[_types_pb2.Allocation]
    run: bool
    job: _types_pb2.Job
    node: str
    def __init__(self, job_id: _Optional[str] = ..., allocations: _Optional[_Iterable[_Union[_types_pb2.Allocation, _Mapping]]] = ..., run: _Optional[bool] = ..., job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ..., node: _Optional[str] = ...) -> None: ...

class WatchAssignmentsResponse(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class TaskReport(_message.Message):
    __slots__ = ("job_id", "node", "state", "message", "exit_code", "failed_tasks")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    FAILED_TASKS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node: str
    state: TaskState
    message: str
    exit_code: int
    failed_tasks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, job_id: _Optional[str] = ..., node: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., message: _Optional[str] = ..., exit_code: _Optional[int] = ..., failed_tasks: _Optional[_Iterable[int]] = ...) -> None: ...

class ReportTaskStatusRequest(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[TaskReport]
    def __init__(self, reports: _Optional[_Iterable[_Union[TaskReport, _Mapping]]] = ...) -> None: ...

class TaskReportAnswer(_message.Message):
    __slots__ = ("job", "refused_reason", "refused_message")
    JOB_FIELD_NUMBER: _ClassVar[int]
    REFUSED_REASON_FIELD_NUMBER: _ClassVar[int]
    REFUSED_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.Job
    refused_reason: str
    refused_message: str
    def __init__(self, job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ..., refused_reason: _Optional[str] = ..., refused_message: _Optional[str] = ...) -> None: ...

class ReportTaskStatusResponse(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[TaskReportAnswer]
    def __init__(self, answers: _Optional[_Iterable[_Union[TaskReportAnswer, _Mapping]]] = ...) -> None: ...

class ReportExpertLoadsRequest(_message.Message):
    __slots__ = ("job_id", "node", "replica", "layers", "experts", "counts", "known_plan_revision")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    EXPERTS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_PLAN_REVISION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node: str
    replica: int
    layers: int
    experts: int
    counts: _containers.RepeatedScalarFieldContainer[float]
    known_plan_revision: int
    def __init__(self, job_id: _Optional[str] = ..., node: _Optional[str] = ..., replica: _Optional[int] = ..., layers: _Optional[int] = ..., experts: _Optional[int] = ..., counts: _Optional[_Iterable[float]] = ..., known_plan_revision: _Optional[int] = ...) -> None: ...

class ReportExpertLoadsResponse(_message.Message):
    __slots__ = ("plan_revision", "plan_json", "sglang_json")
    PLAN_REVISION_FIELD_NUMBER: _ClassVar[int]
    PLAN_JSON_FIELD_NUMBER: _ClassVar[int]
    SGLANG_JSON_FIELD_NUMBER: _ClassVar[int]
    plan_revision: int
    plan_json: str
    sglang_json: str
    def __init__(self, plan_revision: _Optional[int] = ..., plan_json: _Optional[str] = ..., sglang_json: _Optional[str] = ...) -> None: ...

class ReportLoadRequest(_message.Message):
    __slots__ = ("job_id", "node", "replica", "value", "role")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node: str
    replica: int
    value: float
    role: str
    def __init__(self, job_id: _Optional[str] = ..., node: _Optional[str] = ..., replica: _Optional[int] = ..., value: _Optional[float] = ..., role: _Optional[str] = ...) -> None: ...

class ReportLoadResponse(_message.Message):
    __slots__ = ("desired_replicas",)
    DESIRED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    desired_replicas: int
    def __init__(self, desired_replicas: _Optional[int] = ...) -> None: ...
