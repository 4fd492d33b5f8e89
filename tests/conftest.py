import os
import sys

# Discovery guards torch's device-extension autoload; tests do the same so a host with a
# broken vendor extension still runs the suite.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
# every xpod server, agent and `xpod up` a test starts ends with this process, even when it is
# killed and no teardown runs (runtime.cli.main; tests/agent/test_agent_exit_with.py)
os.environ["XPOD_EXIT_WITH_PID"] = str(os.getpid())

HERE = os.path.dirname(__file__)
FIXTURES = os.path.join(HERE, "fixtures")
REPO = os.path.dirname(HERE)


def xpod_cli(*args: str, timeout: float = 120, env: dict | None = None, cwd: str | None = None):
    """Run the installed `xpod` console script as a user would; returns CompletedProcess."""
    import subprocess

    exe = os.path.join(os.path.dirname(sys.executable), "xpod")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


# CI (CI=true) replays the same hypothesis examples on every run, so a submission's result does
# not depend on the draw; locally the examples vary from run to run and keep finding new cases.
if os.environ.get("CI"):
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, deadline=None)
    settings.load_profile("ci")


# --- a real PostgreSQL, shared by the session ------------------------------------------------

import itertools  # noqa: E402

import pytest  # noqa: E402

_pg_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server for the whole session (initdb + pg_ctl from Debian's package,
    loopback, a free port; ~2 s), stopped at the end. ``fsync=off``: the tests kill xpod
    processes, never the machine, so durability against a power cut is not what they check."""
    from xpod.scheduler.store.pg_local import LocalPostgres

    server = LocalPostgres.start(fsync=False)
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres):
    """A fresh, empty database on the session's server; its URL (with the password)."""
    return postgres.create_database(f"t{os.getpid()}_{next(_pg_databases)}")
