"""The one client of the xpod server: every RPC, the address and token resolution, and job files.

The CLI, the node agents and the demo reach the server only through this package.
"""

from xpod.runtime.client.client import (
    DEFAULT_SERVER,
    JOB_KINDS,
    Client,
    JobFile,
    RpcFailure,
    Target,
    config_path,
    event_json,
    job_json,
    load_job_file,
    resolve_target,
)

__all__ = [
    "DEFAULT_SERVER",
    "JOB_KINDS",
    "Client",
    "JobFile",
    "RpcFailure",
    "Target",
    "config_path",
    "event_json",
    "job_json",
    "load_job_file",
    "resolve_target",
]
