"""The launch environment a rank reads: the torch.distributed rendezvous variables plus
``XPOD_BACKEND``. ``xpod run`` (``xpod.runtime.agent.launch``) and the node agent set them."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from xpod.hal.errors import XpodError


@dataclasses.dataclass(frozen=True)
class LaunchEnv:
    """Who this process is in its job."""

    rank: int  # RANK: global rank, 0..world_size-1
    world_size: int  # WORLD_SIZE
    local_rank: int  # LOCAL_RANK: index among this host's ranks (and its device index)
    local_world_size: int  # LOCAL_WORLD_SIZE: ranks on this host
    master_addr: str  # MASTER_ADDR: rank 0's host, for the TCP rendezvous
    master_port: int  # MASTER_PORT
    backend: str  # XPOD_BACKEND: xpod backend id ("cpu", "ascend", ...)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "LaunchEnv":
        """Read the variables; missing or malformed ones raise ``XpodError`` naming the variable.

        A process started without a launcher (no RANK / WORLD_SIZE) is a world of one with a
        loopback rendezvous; LOCAL_* default to the global values.
        """
        env = os.environ if environ is None else environ

        def integer(name: str, default: int | None) -> int:
            raw = env.get(name)
            if raw is None or raw == "":
                if default is None:
                    raise XpodError(f"environment variable {name} is not set; start the job with 'xpod run'")
                return default
            try:
                return int(raw)
            except ValueError:
                raise XpodError(f"environment variable {name}={raw!r} is not an integer") from None

        single = "RANK" not in env and "WORLD_SIZE" not in env
        rank = integer("RANK", 0 if single else None)
        world = integer("WORLD_SIZE", 1 if single else None)
        local_rank = integer("LOCAL_RANK", rank)
        local_world = integer("LOCAL_WORLD_SIZE", world)
        port = integer("MASTER_PORT", 0 if single else None)
        if world < 1 or not 0 <= rank < world:
            raise XpodError(f"RANK={rank} WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
        if local_world < 1 or not 0 <= local_rank < local_world or local_world > world:
            raise XpodError(
                f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world}: need 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE"
            )
        if not single and not 0 < port < 65536:
            raise XpodError(f"MASTER_PORT={port} is not a TCP port")
        return cls(
            rank=rank,
            world_size=world,
            local_rank=local_rank,
            local_world_size=local_world,
            master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
            master_port=port,
            backend=env.get("XPOD_BACKEND") or "cpu",
        )

    def to_environ(self) -> dict[str, str]:
        """The variables that reproduce this environment in a child process."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "XPOD_BACKEND": self.backend,
        }
