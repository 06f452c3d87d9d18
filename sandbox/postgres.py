"""A throwaway PostgreSQL cluster on loopback, from Debian's server binaries, for tests, benchmarks and the demo.

`initdb` refuses to run as root, so when we are root the cluster is made and run as the `postgres` system user
(the Debian package creates it). The cluster lives in a temporary folder, listens on 127.0.0.1 only, on a free
port, trusts local connections (it holds synthetic data only) and is removed when stopped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

DATABASE = "attribution"
START_TIMEOUT_SECONDS = 60


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, or the cluster would not start; the message says which."""


def server_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and postgres."""
    candidates = sorted(
        (Path(found).parent for found in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise PostgresUnavailable(
            "no PostgreSQL server here: install Debian's `postgresql` package (apt-get install postgresql)"
        )
    return candidates[-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """`with PostgresCluster() as cluster:` a fresh server; `cluster.url` names its empty `attribution` database.

    `durable=False` turns fsync off (tests: nothing survives the cluster anyway); benchmarks keep it on, as a
    production server would run.
    """

    def __init__(self, *, durable: bool = False, max_connections: int = 200) -> None:
        self.durable = durable
        self.max_connections = max_connections
        self.bin = server_bin_dir()
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="attribution-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """The connection URL of the cluster's `attribution` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self, *args: str, timeout: float = START_TIMEOUT_SECONDS) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own argv: the server binaries and fixed options
            list(args),
            user=self._user,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )

    def start(self) -> None:
        """initdb, start the server on 127.0.0.1 and create the `attribution` database."""
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        init = self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-sync", "--locale=C.UTF-8",
        )  # fmt: skip
        if init.returncode != 0:
            self._remove()
            raise PostgresUnavailable(f"initdb failed: {init.stderr.strip()[-500:]}")
        self._launch()
        created = self._run(
            str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
            "-v", "ON_ERROR_STOP=1", "-c", f"create database {DATABASE}",
        )  # fmt: skip
        if created.returncode != 0:
            self.stop()
            raise PostgresUnavailable(f"creating the database failed: {created.stderr.strip()}")

    def _launch(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
            f"-c max_connections={self.max_connections} -c fsync={'on' if self.durable else 'off'} "
            f"-c synchronous_commit={'on' if self.durable else 'off'} -c full_page_writes={'on' if self.durable else 'off'}"
        )
        started = self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
            "-t", str(START_TIMEOUT_SECONDS), "start",
        )  # fmt: skip
        if started.returncode != 0:
            log = self.log.read_text(errors="replace")[-1000:] if self.log.exists() else ""
            self._remove()
            raise PostgresUnavailable(f"the PostgreSQL server did not start: {started.stderr.strip()} {log}")

    def shut_down(self) -> None:
        """Stop the server as an administrator's restart does (fast: every session is cut), keeping its data."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def start_again(self) -> None:
        """Start the server again after shut_down(), on the same port with the same data."""
        self._launch()

    def server_pids(self) -> list[int]:
        """The postmaster and its children (backends, writers): whose CPU a benchmark counts as the server's."""
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            main = int(pid_file.read_text().splitlines()[0])
            children = Path(f"/proc/{main}/task/{main}/children").read_text().split()
            return [main, *(int(pid) for pid in children)]
        return []

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove the cluster."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        self._remove()

    def _remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
