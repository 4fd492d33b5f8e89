"""The one client of the xpod server: every RPC (``client.py``), response messages as JSON
(``convert.py``) and job files read with line marks (``jobfile.py``).

The CLI, the node agents and the demo reach the server only through this package; no other
part of ``xpod.runtime`` imports generated protobuf code.
"""

from xpod.runtime.client.client import (
    DEFAULT_SERVER,
    AssignmentStream,
    Client,
    RpcFailure,
    Target,
    config_path,
    job_state_value,
    resolve_target,
)
from xpod.runtime.client.convert import event_json, job_json, job_state, message_json, spec_dict
from xpod.runtime.client.jobfile import JOB_KINDS, JobFile, load_job_file

__all__ = [
    "DEFAULT_SERVER",
    "JOB_KINDS",
    "AssignmentStream",
    "Client",
    "JobFile",
    "RpcFailure",
    "Target",
    "config_path",
    "event_json",
    "job_json",
    "job_state",
    "job_state_value",
    "load_job_file",
    "message_json",
    "resolve_target",
    "spec_dict",
]
