# DO NOT EDIT: generated from proto/xpod/v1/job_service.proto by `make proto`
# (proto/generate.py, grpcio-tools==1.85.1). Edit the .proto and regenerate.
from google.protobuf import struct_pb2 as _struct_pb2
from xpod.proto.xpod.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitJobRequest(_message.Message):
    __slots__ = ("request_id", "job")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    job: _struct_pb2.Struct
    def __init__(self, request_id: _Optional[str] = ..., job: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job", "created")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.Job
    created: bool
    def __init__(self, job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job", "events")
    JOB_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.Job
    events: _containers.RepeatedCompositeFieldContainer[_types_pb2.JobEvent]
    def __init__(self, job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_types_pb2.JobEvent, _Mapping]]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("queue", "states", "page_size", "page_token")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    queue: str
    states: _containers.RepeatedScalarFieldContainer[_types_pb2.JobState]
    page_size: int
    page_token: str
    def __init__(self, queue: _Optional[str] = ..., states: _Optional[_Iterable[_Union[_types_pb2.JobState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_types_pb2.Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_types_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.Job
    def __init__(self, job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ...) -> None: ...

class WatchJobsRequest(_message.Message):
    __slots__ = ("from_revision", "queue", "job_id")
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    from_revision: int
    queue: str
    job_id: str
    def __init__(self, from_revision: _Optional[int] = ..., queue: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class WatchJobsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _types_pb2.JobEvent
    def __init__(self, event: _Optional[_Union[_types_pb2.JobEvent, _Mapping]] = ...) -> None: ...

class GetMoeHistoryRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class MoeWindow(_message.Message):
    __slots__ = ("window", "time_seconds", "tokens", "reports", "published", "initial", "moves", "has_balance_before", "balance_before", "balance_after", "reason", "plan_revision")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    TIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    INITIAL_FIELD_NUMBER: _ClassVar[int]
    MOVES_FIELD_NUMBER: _ClassVar[int]
    HAS_BALANCE_BEFORE_FIELD_NUMBER: _ClassVar[int]
    BALANCE_BEFORE_FIELD_NUMBER: _ClassVar[int]
    BALANCE_AFTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PLAN_REVISION_FIELD_NUMBER: _ClassVar[int]
    window: int
    time_seconds: float
    tokens: float
    reports: int
    published: bool
    initial: bool
    moves: int
    has_balance_before: bool
    balance_before: float
    balance_after: float
    reason: str
    plan_revision: int
    def __init__(self, window: _Optional[int] = ..., time_seconds: _Optional[float] = ..., tokens: _Optional[float] = ..., reports: _Optional[int] = ..., published: _Optional[bool] = ..., initial: _Optional[bool] = ..., moves: _Optional[int] = ..., has_balance_before: _Optional[bool] = ..., balance_before: _Optional[float] = ..., balance_after: _Optional[float] = ..., reason: _Optional[str] = ..., plan_revision: _Optional[int] = ...) -> None: ...

class GetMoeHistoryResponse(_message.Message):
    __slots__ = ("windows",)
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[MoeWindow]
    def __init__(self, windows: _Optional[_Iterable[_Union[MoeWindow, _Mapping]]] = ...) -> None: ...

class ExplainJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ExplainJobResponse(_message.Message):
    __slots__ = ("job", "pending_reason", "queue_position", "numbers", "lines")
    class NumbersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_FIELD_NUMBER: _ClassVar[int]
    PENDING_REASON_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.Job
    pending_reason: _types_pb2.PendingReason
    queue_position: int
    numbers: _containers.ScalarMap[str, float]
    lines: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ..., pending_reason: _Optional[_Union[_types_pb2.PendingReason, _Mapping]] = ..., queue_position: _Optional[int] = ..., numbers: _Optional[_Mapping[str, float]] = ..., lines: _Optional[_Iterable[str]] = ...) -> None: ...
