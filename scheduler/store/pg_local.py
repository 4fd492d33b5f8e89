"""A throwaway PostgreSQL server on this machine, for tests, benchmarks and trying HA locally.

Uses the PostgreSQL that Debian's ``postgresql`` package installs (``initdb``, ``pg_ctl``,
``postgres`` on PATH or under ``/usr/lib/postgresql/<major>/bin``); ``make test`` installs it
when missing. Nothing here is a mock: it is the real server, started in a temporary data
directory, listening on loopback only (127.0.0.1) on a free port, with password (SCRAM)
authentication for TCP, and stopped by ``stop()``.

PostgreSQL refuses to run as root: when this process is root, the server runs as the
``postgres`` account the package creates (or ``nobody``), which then owns the data directory.

Contract:

* ``LocalPostgres.start(base_dir)`` returns once the server accepts connections; it raises
  ``LocalPostgresError`` with one line (what is missing, the tail of the server log) otherwise.
* ``create_database(name)`` makes an empty database and returns its URL; ``url`` is the
  ``xpod`` database created at start.
* ``stop()`` is idempotent (``immediate`` mode: no shutdown checkpoint, the next start would
  recover from the WAL like after a crash; the directory is thrown away anyway).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time

from xpod.hal.errors import XpodError

USER = "xpod"  # the database superuser initdb creates (also the owner of every database made here)


class LocalPostgresError(XpodError):
    """The local PostgreSQL could not be found or started."""


def find_bin(tool: str) -> str:
    """Path of a PostgreSQL server program: PATH first, then Debian's versioned directory."""
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), key=_major, reverse=True)
    if candidates:
        return candidates[0]
    raise LocalPostgresError(
        f"{tool} not found (PATH, /usr/lib/postgresql/*/bin): install Debian's postgresql package "
        "(apt-get install postgresql; `make test` does it)"
    )


def _major(path: str) -> int:
    part = path.split("/usr/lib/postgresql/")[1].split("/")[0]
    return int(part) if part.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class LocalPostgres:
    """One running server. Fields are facts about it; ``url`` is its ``xpod`` database."""

    data_dir: str  # the cluster's files (owned by ``run_as`` when started as root)
    port: int  # TCP port on 127.0.0.1
    password: str  # of USER, for TCP connections
    run_as: str | None  # the account the server runs as (None: this process's own)
    _stopped: bool = False

    @property
    def url(self) -> str:
        return self.database_url(USER)

    def database_url(self, dbname: str) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    @classmethod
    def start(cls, base_dir: str | None = None, *, fsync: bool = True, timeout_s: float = 60.0) -> "LocalPostgres":
        """initdb + pg_ctl start in a new directory under ``base_dir`` (a temp dir by default).

        ``fsync=False`` makes commits return before the WAL reaches the disk: only for tests
        that never crash the machine (the database survives a kill of *our* processes either
        way). Benchmarks of durable submissions keep the default."""
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        run_as = None
        if os.geteuid() == 0:
            run_as = _unprivileged_account()
        root = tempfile.mkdtemp(prefix="xpod-pg-", dir=base_dir)
        data_dir = os.path.join(root, "data")
        password = secrets.token_hex(12)
        pwfile = os.path.join(root, "pw")
        with open(pwfile, "w") as f:
            f.write(password + "\n")
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            for path in (root, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            os.chmod(root, 0o700)
            _make_traversable(root, entry.pw_uid)
        # --no-sync: a throwaway cluster's initial files need not reach the disk
        flags = "--auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync --no-instructions"
        _run([initdb, "-D", data_dir, "-U", USER, "--pwfile", pwfile, *flags.split()], run_as, timeout_s, "initdb")
        os.unlink(pwfile)
        options = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{root}'",
            "fsync": "on" if fsync else "off",
            "max_connections": "200",
            "shared_buffers": "128MB",
            "logging_collector": "off",
        }
        with open(os.path.join(data_dir, "postgresql.conf"), "a") as conf:
            for key, value in options.items():
                conf.write(f"{key} = {value}\n")
        log = os.path.join(root, "server.log")
        last = ""
        for _ in range(5):  # the free port can be taken between finding it and binding it
            port = _free_port()
            try:
                _run(
                    [pg_ctl, "-D", data_dir, "-l", log, "-w", "-t", str(int(timeout_s)), "-o", f"-p {port}", "start"],
                    run_as,
                    timeout_s + 10,
                    "pg_ctl start",
                )
            except LocalPostgresError as err:
                last = str(err)
                continue
            server = cls(data_dir, port, password, run_as)
            try:
                server.create_database(USER)
            except BaseException:
                server.stop()
                raise
            return server
        raise LocalPostgresError(f"{last}; log: {_tail(log)}")

    def create_database(self, name: str) -> str:
        """A new empty database ``name`` (letters, digits, _); returns its URL."""
        import psycopg

        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}: letters, digits and _ only")
        with psycopg.connect(self.database_url("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def stop(self, mode: str = "immediate") -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            _run([find_bin("pg_ctl"), "-D", self.data_dir, "-m", mode, "-w", "stop"], self.run_as, 60, "pg_ctl stop")
        finally:
            shutil.rmtree(os.path.dirname(self.data_dir), ignore_errors=True)

    def take_down(self) -> None:
        """``pg_ctl stop -m fast``: the database goes away (files kept) until ``bring_back()``."""
        _run([find_bin("pg_ctl"), "-D", self.data_dir, "-m", "fast", "-w", "stop"], self.run_as, 60, "pg_ctl stop")

    def bring_back(self) -> None:
        """Start the server again on the same port after ``take_down()``."""
        log = os.path.join(os.path.dirname(self.data_dir), "server.log")
        _run(
            [find_bin("pg_ctl"), "-D", self.data_dir, "-l", log, "-w", "-o", f"-p {self.port}", "start"],
            self.run_as,
            70,
            "pg_ctl start",
        )

    def __enter__(self) -> "LocalPostgres":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _unprivileged_account() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise LocalPostgresError("running as root and neither a 'postgres' nor a 'nobody' account exists to run PostgreSQL")


def _make_traversable(path: str, uid: int) -> None:
    """Let ``uid`` reach ``path``: every parent directory gets o+x if it lacks it (temp dirs)."""
    parent = os.path.dirname(path)
    while parent and parent != "/":
        mode = os.stat(parent).st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)
        parent = os.path.dirname(parent)


def _as_user(cmd: list[str], run_as: str | None) -> list[str]:
    """``cmd`` run as ``run_as`` through util-linux's ``setpriv``, not ``subprocess``'s
    ``user=``: with ``user=`` CPython forks (it cannot vfork when it must change the uid), and
    fork runs gRPC's fork handlers in the child, which crashed it (SIGSEGV before exec) when a
    gRPC channel of the calling process was busy. Without it CPython vforks: no handlers run."""
    if run_as is None:
        return cmd
    entry = pwd.getpwnam(run_as)
    setpriv = shutil.which("setpriv") or "setpriv"
    return [setpriv, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", *cmd]


def _run(cmd: list[str], run_as: str | None, timeout_s: float, what: str) -> None:
    try:
        proc = subprocess.run(
            _as_user(cmd, run_as),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd="/",
            env={**os.environ, "LC_ALL": "C"},
        )
    except subprocess.TimeoutExpired:
        raise LocalPostgresError(f"{what} did not finish in {timeout_s:g} s") from None
    if proc.returncode != 0:
        out = (proc.stderr or proc.stdout).strip().splitlines()
        raise LocalPostgresError(f"{what} failed (exit {proc.returncode}): {out[-1] if out else 'no output'}")


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path) as f:
            return " | ".join(line.strip() for line in f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until_ready(url: str, timeout_s: float = 30.0) -> None:
    """Block until ``url`` accepts a connection (after a restart); raises LocalPostgresError."""
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError as err:
            if time.monotonic() > deadline:
                raise LocalPostgresError(f"PostgreSQL not ready after {timeout_s:g} s: {err}") from None
            time.sleep(0.1)
