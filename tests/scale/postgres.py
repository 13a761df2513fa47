"""A throw-away PostgreSQL server for tests and benchmarks.

``PostgresServer`` runs Debian's PostgreSQL binaries (``/usr/lib/postgresql/<version>/bin``)
on a data folder of its own, listening on 127.0.0.1 at a free port and on a Unix socket in
that folder. The superuser has a password and the server accepts only password logins
(``scram-sha-256``), so a URL without the right password fails as it would in production.

PostgreSQL refuses to run as root: under root the server runs as the ``postgres`` user (which
the Debian package creates) through ``runuser``; any other user runs it as themselves.

Example::

    server = PostgresServer.create()
    server.start()
    url = server.create_database("optuna")  # postgresql://polysearch:...@127.0.0.1:PORT/optuna
    server.stop()
    server.remove()
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

# Login of the test superuser; its password is random per server.
USER = "polysearch"
# Seconds pg_ctl waits for the server to start or stop.
PG_CTL_TIMEOUT = 60


def find_bindir() -> Path | None:
    """Return the folder of the newest installed PostgreSQL server binaries, or None."""
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if candidates:
        newest = max(candidates, key=lambda path: int(Path(path).parent.parent.name))
        return Path(newest).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on at the moment of the call."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; see the module docstring.

    Args:
        bindir: folder holding ``initdb``, ``pg_ctl`` and ``postgres``.
        folder: an empty folder that the server's user can write; the cluster goes into
            ``folder/data`` and its log into ``folder/server.log``.
        owner: the user that runs the server, or None for the current user.
    """

    def __init__(self, bindir: Path, folder: Path, owner: str | None):
        self.bindir = bindir
        self.folder = folder
        self.owner = owner
        self.data = folder / "data"
        self.log = folder / "server.log"
        self.password = secrets.token_hex(12)
        self.port = free_port()

    @classmethod
    def create(cls, bindir: Path | None = None) -> PostgresServer:
        """Create and initialise a cluster in a new temporary folder (not started yet).

        Raises:
            FileNotFoundError: no PostgreSQL server binaries are installed.
            KeyError: running as root and the ``postgres`` user does not exist.
        """
        bindir = bindir or find_bindir()
        if bindir is None:
            raise FileNotFoundError(
                "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin or on PATH; "
                "install them with 'apt-get install postgresql'"
            )
        owner = "postgres" if os.geteuid() == 0 else None
        # Directly under /tmp: pytest's own temporary folders are private to root, and the
        # server's user must be able to enter its folder.
        folder = Path(tempfile.mkdtemp(prefix="polysearch-postgres-"))
        if owner is not None:
            account = pwd.getpwnam(owner)
            os.chown(folder, account.pw_uid, account.pw_gid)
        server = cls(bindir, folder, owner)
        server._initdb()
        return server

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bindir / program), *args]
        if self.owner is not None:
            command = ["runuser", "-u", self.owner, "--", *command]
        return command

    def _run(self, program: str, *args: str, timeout: float = PG_CTL_TIMEOUT) -> None:
        result = subprocess.run(
            self._command(program, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.folder,
        )
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{program} {' '.join(args)} failed with status {result.returncode}:\n"
                f"{result.stdout}{result.stderr}{log[-2000:]}"
            )

    def _initdb(self) -> None:
        password_file = self.folder / "password"
        password_file.write_text(self.password + "\n")
        if self.owner is not None:
            account = pwd.getpwnam(self.owner)
            os.chown(password_file, account.pw_uid, account.pw_gid)
        password_file.chmod(0o600)
        try:
            self._run(
                "initdb",
                "--pgdata",
                str(self.data),
                "--username",
                USER,
                "--pwfile",
                str(password_file),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-sync",
            )
        finally:
            password_file.unlink()

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.folder}",
                "-c listen_addresses=127.0.0.1",
                # Tests need no durability across power loss; an immediate stop of the
                # server alone loses nothing, because the data stays in the page cache.
                "-c fsync=off",
                "-c max_connections=100",
            ]
        )
        self._run(
            "pg_ctl",
            "--pgdata",
            str(self.data),
            "--log",
            str(self.log),
            "-o",
            options,
            "--wait",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends sessions cleanly, ``immediate`` as in a crash."""
        self._run("pg_ctl", "--pgdata", str(self.data), "--mode", mode, "--wait", "stop")

    def is_running(self) -> bool:
        """Return whether the server process runs (``pg_ctl status``)."""
        result = subprocess.run(
            self._command("pg_ctl", "--pgdata", str(self.data), "status"),
            capture_output=True,
            timeout=PG_CTL_TIMEOUT,
        )
        return result.returncode == 0

    def url(self, database: str, *, password: str | None = None) -> str:
        """Return a SQLAlchemy URL for ``database`` with the superuser's password.

        ``password`` replaces the real password, e.g. to test a rejected login.
        """
        secret = self.password if password is None else password
        return f"postgresql://{USER}:{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        import psycopg2

        connection = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=USER, password=self.password, dbname="postgres"
        )
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

    def remove(self) -> None:
        """Stop the server if it runs and delete its folder."""
        if self.data.exists() and self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
