"""Servers as real processes, started with the real CLI (`python -m xinyi.cli ...`) exactly as
scripts/demo.py starts them, for the tests that kill, restart or fork them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness import BANK, CHENGDU_FIRM, LICENCE, SEED

from node.store import NodeStore

from xinyi.client import AuditClient, BankClient, ClientError
from xinyi.clock import now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, RootCA
from xinyi.directory import Directory

ROOT = Path(__file__).resolve().parent.parent
XINYI = [sys.executable, "-m", "xinyi.cli"]
NODE = "510100"
START_TIMEOUT = 15.0   # a process started and registered


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """One `xinyi` server process, its output in a log file."""

    def __init__(self, name: str, args: list[str], logs: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.args, self.logs = name, args, logs
        self.env = env or {}  # added to this process's environment
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([*XINYI, *self.args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, text=True)

    @property
    def log_path(self) -> Path:
        """The current run's log."""
        return self.logs / f"{self.name}-{self.runs}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited early with status {self.proc.returncode}:\n{self.log()[-4000:]}")

    def hup(self) -> None:
        self.check_alive()
        self.proc.send_signal(signal.SIGHUP)

    async def wait_for_log(self, text: str, count: int = 1, timeout: float = 10.0) -> list[str]:
        """Until the current run's log holds `count` lines containing `text`; those lines."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log().splitlines() if text in line]
            if len(lines) >= count:
                return lines
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {text!r} not logged {count} time(s) within {timeout:.0f} s:\n"
                                     f"{self.log()[-4000:]}")
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def dump_logs(self) -> str:
        out = []
        for path in sorted(self.logs.glob(f"{self.name}-*.log")):
            out.append(f"----- {path.name} -----\n{path.read_text(errors='replace')[-6000:]}")
        return "\n".join(out)


async def wait_registered(bank_identity: Identity, auditor: Identity, registry: str | list[str], node_addr: str,
                          procs: list[Proc], timeout: float = START_TIMEOUT, node: str = NODE) -> None:
    """Until the registry's signed directory lists the node and the node itself holds it.

    The second half matters after a restart: the registry still lists the node from before
    the kill, but the restarted node serves the directory to auditors only once it has
    registered again (the directory comes back with its GetCheckpoint answer).
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for p in procs:
            p.check_alive()
        try:
            async with BankClient(bank_identity, registry) as bank:
                directory = await asyncio.wait_for(bank.directory(refresh=True), 5)
            if node in directory.nodes:
                # A fresh channel each try: no reconnect backoff from earlier refusals.
                async with AuditClient(auditor, node_addr, Principal(Role.NODE, node)) as audit:
                    response = await asyncio.wait_for(audit.checkpoint(), 5)
                if response.HasField("directory"):
                    held = Directory.verify(response.directory, auditor.trust())
                    if node in held.nodes and held.nodes[node].endpoint == node_addr:
                        return
        except (ClientError, asyncio.TimeoutError) as e:
            last = e
        await asyncio.sleep(0.2)
    raise AssertionError(f"node {node} did not register within {timeout:.0f} s (last error: {last})")


def network_identities(certs: Path, node: str = NODE) -> tuple[dict[str, Identity], dict[str, Path]]:
    """A new root and the identities a one-node network needs, saved under `certs`:
    (identities by role name, their directories)."""
    root = RootCA.create()
    root.save(certs)
    ids = {
        "registry": root.issue(Principal(Role.REGISTRY, "national")),
        "node": root.issue(Principal(Role.NODE, node)),
        "bank": root.issue(Principal(Role.BANK, BANK), licence=LICENCE),
        "enterprise": root.issue(Principal(Role.ENTERPRISE, CHENGDU_FIRM)),
        "auditor": root.issue(Principal(Role.AUDITOR, "audit-office")),
    }
    return ids, {name: identity.save(certs) for name, identity in ids.items()}


def seed_node(node_db: str) -> None:
    """A node store at `node_db` holding the Chengdu firm's records (city's and province's)."""
    store = NodeStore(node_db)
    try:
        store.create_schema()
        store.add_records([r for r in SEED["510100"] + SEED["510000"] if r.uscc == CHENGDU_FIRM], now_ms())
    finally:
        store.close()
