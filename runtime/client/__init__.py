"""The one client of the xpod server: every RPC (``client.py``) and response messages as JSON
(``convert.py``). Job files are read and checked by ``xpod.scheduler.jobspec``.

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
    read_token_file,
    resolve_target,
)
from xpod.runtime.client.convert import event_json, job_json, job_state, message_json, spec_dict

__all__ = [
    "DEFAULT_SERVER",
    "AssignmentStream",
    "Client",
    "RpcFailure",
    "Target",
    "config_path",
    "event_json",
    "job_json",
    "job_state",
    "job_state_value",
    "message_json",
    "read_token_file",
    "resolve_target",
    "spec_dict",
]
