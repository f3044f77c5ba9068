"""Faults the tests cause on purpose: a PostgreSQL server of the test's own (to stop and start
under a running network), a primary with a synchronous streaming standby (to fail over), and a
small filesystem (to fill).

Both need what an unprivileged laptop may lack (PostgreSQL's server binaries; root for mount); a
test that cannot have them is skipped with the reason, except under CI (env CI set), where the
PostgreSQL server must be there.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from processes import free_port

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_START_TIMEOUT = 30


def _pg_bin() -> Path | None:
    """The newest PostgreSQL server binaries installed, or those on PATH."""
    found = sorted(glob.glob(PG_BIN_GLOB), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    for candidate in reversed(found):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory, on a private port, run by the `postgres`
    OS user when the tests run as root (initdb refuses root), else by the current user."""

    def __init__(self, bin_dir: Path, base: Path, name: str = "data", settings: dict[str, str] | None = None) -> None:
        self.bin = bin_dir
        self.base = base
        self.data = base / name
        self.log = base / f"{name}.log"
        self.port = free_port()
        self.settings = dict(settings or {})  # extra `-c name=value` at start
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr[-2000:]}\n"
                               f"{self.log.read_text()[-2000:] if self.log.exists() else ''}")
        return result

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", str(PG_START_TIMEOUT), "start", timeout=PG_START_TIMEOUT + 10)

    def stop(self, mode: str = "immediate") -> None:
        """`immediate`: as a crash (no shutdown checkpoint, connections cut); `fast`: an orderly stop."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "status"],
                              capture_output=True).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new database on this server; its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


    def promote(self) -> None:
        """A standby becomes a primary (`pg_ctl promote`), returning once it accepts writes."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "30", "promote")


class PostgresPair:
    """A primary and a streaming standby of it, on private ports. Replication is synchronous
    (`synchronous_standby_names`): a commit returns only once the standby has it, so a commit
    the primary acknowledged survives the primary's loss."""

    STANDBY_NAME = "standby"

    def __init__(self, bin_dir: Path, base: Path) -> None:
        self.primary = PrivatePostgres(bin_dir, base, "primary",
                                       {"synchronous_standby_names": self.STANDBY_NAME, "wal_level": "replica"})
        self.standby = PrivatePostgres(bin_dir, base, "standby", {"hot_standby": "on"})

    def start(self) -> None:
        self.primary.init()
        self.primary.start()
        self.standby._run(str(self.standby.bin / "pg_basebackup"), "-D", str(self.standby.data), "-h", "127.0.0.1",
                          "-p", str(self.primary.port), "-U", "postgres", "-X", "stream", "-R",
                          "-d", f"application_name={self.STANDBY_NAME}", timeout=120)
        self.standby.start()

    def url(self, database: str) -> str:
        """The multi-host URL a service is given: both servers, the writable one taken."""
        hosts = ",".join(f"127.0.0.1:{pg.port}" for pg in (self.primary, self.standby))
        return f"postgresql+psycopg://postgres@/{database}?host={hosts}&target_session_attrs=read-write"

    def create_database(self, name: str) -> str:
        """A database on the primary (replicated to the standby); its multi-host URL."""
        self.primary.create_database(name)
        return self.url(name)

    def stop(self) -> None:
        for pg in (self.primary, self.standby):
            if pg.running():
                pg.stop("immediate")


def _pg_base() -> tuple[Path, Path]:
    """The server binaries and a new directory the postgres user may use; skips (fails under CI)
    without the binaries."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        message = f"no PostgreSQL server binaries (initdb) in {PG_BIN_GLOB} or on PATH"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the PostgreSQL outage tests")
        pytest.skip(message)
    base = Path(tempfile.mkdtemp(prefix="xinyi-pg-"))  # not under pytest's 0700 tmp: the postgres user must enter it
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    return bin_dir, base


def private_postgres() -> Iterator[PrivatePostgres]:
    """A started PostgreSQL server of this test's own; stopped and removed afterwards."""
    bin_dir, base = _pg_base()
    pg = PrivatePostgres(bin_dir, base)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        try:
            if pg.running():
                pg.stop("immediate")
        finally:
            shutil.rmtree(base, ignore_errors=True)


def postgres_pair() -> Iterator[PostgresPair]:
    """A started primary with a synchronous streaming standby; stopped and removed afterwards."""
    bin_dir, base = _pg_base()
    pair = PostgresPair(bin_dir, base)
    try:
        pair.start()
        yield pair
    finally:
        try:
            pair.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


class SmallDisk:
    """A size-limited filesystem (tmpfs) mounted on a directory, to be filled."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.filler = path / "filler"

    def fill(self) -> int:
        """Write until the filesystem refuses (ENOSPC); the bytes written."""
        written = 0
        chunk = b"\0" * 65536
        with open(self.filler, "ab", buffering=0) as f:
            while True:
                try:
                    written += f.write(chunk)
                except OSError:
                    break
            # Fill the last partial block too.
            for size in (4096, 512, 1):
                while True:
                    try:
                        written += f.write(b"\0" * size)
                    except OSError:
                        break
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def available(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize


def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 16 MiB tmpfs mounted for this test (root only; skipped, with the reason, where mount is
    not permitted). Unmounted afterwards, lazily if a process still holds a file there."""
    path = tmp_path / "small-disk"
    path.mkdir()
    size = 16 * 1024 * 1024
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        why = (result.stderr or result.stdout).strip()
        reason = f"cannot mount a small tmpfs to fill ({why}); run as root to test a full disk"
        print(reason)
        pytest.skip(reason)
    try:
        yield SmallDisk(path, size)
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
