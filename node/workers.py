"""`xinyi node serve --workers N`: use every core, keep one audit log.

    supervisor (this process)  starts N worker processes first, before any gRPC object exists,
                               then runs the node's sequencer (node/server.py, node/sequencer.py)
    worker x N                 `xinyi node serve ... --sequencer SOCKET`: each binds the public port
                               with SO_REUSEPORT; the kernel spreads connections among them

A worker that dies is started again; SIGHUP reloads policies everywhere; SIGTERM stops the
workers first (their last audit records still reach the sequencer), then the sequencer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not imported at run time: the workers start before gRPC is even loaded
    from node.server import NodeServer

log = logging.getLogger("xinyi.node")

SUPERVISOR_ENV = "XINYI_WORKER_OF"  # the supervisor's pid, given to each worker it starts
RESTART_DELAY_SECONDS = 1.0
STOP_SECONDS = 15.0


class WorkerPool:
    """N worker processes around one sequencer; `xinyi.cli.serve` runs it like a server."""

    def __init__(self, worker_argv: list[str], count: int, socket_dir: Path) -> None:
        if count < 2:
            raise ValueError("a worker pool has at least 2 workers; run one process without --workers")
        self.argv = worker_argv
        self.socket_dir = socket_dir
        self.procs: list[subprocess.Popen] = [self._spawn() for _ in range(count)]
        self.server: "NodeServer | None" = None
        self._watch: asyncio.Task | None = None

    def _spawn(self) -> subprocess.Popen:
        env = dict(os.environ, **{SUPERVISOR_ENV: str(os.getpid())})
        return subprocess.Popen(self.argv, env=env)  # shares this process's stdout and stderr

    def attach(self, server: "NodeServer") -> None:
        """The sequencer, built after the workers were started."""
        self.server = server

    @property
    def identity(self):
        return self.server.identity

    @property
    def refused(self):
        """Set when the registry will never accept this node (the sequencer registers): all stop."""
        return self.server.refused

    @property
    def refused_reason(self) -> str:
        return self.server.refused_reason

    async def start(self) -> int:
        port = await self.server.start()
        self._watch = asyncio.create_task(self._keep_alive())
        return port

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(RESTART_DELAY_SECONDS)
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    log.error("worker %d (pid %d) exited with status %s; starting it again", i, proc.pid, proc.returncode)
                    self.procs[i] = self._spawn()

    def reload_policies(self) -> None:
        """SIGHUP: the sequencer reloads here; each worker gets the signal and reloads policies
        and identity itself (signalled first: a policy file the sequencer refuses must not keep
        the workers from taking over a renewed identity)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)
        self.server.reload_policies()

    def reload_identity(self) -> None:
        self.server.reload_identity()  # the workers were signalled in reload_policies

    async def stop(self) -> None:
        if self._watch:
            self._watch.cancel()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, STOP_SECONDS)
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in %g s; killed", proc.pid, STOP_SECONDS)
                proc.kill()
        await self.server.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def die_with_supervisor(supervisor_pid: int) -> None:
    """In a worker: be sent SIGTERM when the supervisor dies, whatever the worker is doing
    (Linux PR_SET_PDEATHSIG), and exit now if it already has."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the lost link to the sequencer still stops it
        pass
    if os.getppid() != supervisor_pid:
        raise SystemExit(f"worker: the supervising process {supervisor_pid} is gone; not starting")


def start_workers(serve_args: list[str], count: int) -> tuple[WorkerPool, Path]:
    """Start `count` workers running `xinyi node serve <serve_args> --sequencer SOCKET`.

    Returns the pool and the socket the sequencer must open."""
    socket_dir = Path(tempfile.mkdtemp(prefix="xinyi-node-"))  # mode 0700: this user only
    socket = socket_dir / "sequencer.sock"
    argv = [sys.executable, "-m", "xinyi.cli", "node", "serve", *serve_args, "--sequencer", str(socket)]
    return WorkerPool(argv, count, socket_dir), socket
