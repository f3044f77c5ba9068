"""Policy files at start and at reload, with real processes (`python -m xinyi.cli registry serve`,
`node serve`), as an operator runs them.

At start, a policy directory that cannot be loaded (a Cedar syntax error, a policy that does not
match the schema, a broken schema, a broken fair_use.toml or minimization.toml) stops the server
at once: exit status 2 and one line on stderr naming the file, no traceback.

At reload (SIGHUP), a broken set is refused ("policies NOT reloaded") and the old one stays in
force; a valid set takes effect: here, one that no longer lets auditors read audit logs.

The policies and the fair-use table are the repository's own (policies/, copied into tmp_path);
only the deliberate breakage is written here.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from processes import ROOT, XINYI, Proc

from xinyi.client import AuditClient, ClientError
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity, RootCA
from xinyi.policy import Authorizer

REPO_POLICIES = ROOT / "policies"
START_TIMEOUT = 20.0  # a process started and serving
EXIT_TIMEOUT = 20.0   # a process that must refuse to start has exited
PROMPT = 10.0         # ... and did so this quickly (the interpreter and imports take about a second)

CEDAR = "xinyi.cedar"
SCHEMA = "xinyi.cedarschema"
FAIR_USE = "fair_use.toml"
MINIMIZATION = "minimization.toml"
AUDITOR_POLICY = "auditors-may-read-audit-logs"

# Deliberate breakage, appended to (or replacing) a copy of the repository's file.
SYNTAX_ERROR = '\n@id("half-written")\npermit (principal, action == Xinyi::Action::"query", resource\n'
SCHEMA_ERROR = ('\n@id("reads-an-attribute-the-schema-lacks")\npermit (principal in Xinyi::Role::"bank", '
                'action == Xinyi::Action::"query", resource)\nwhen { context.horoscope == "leo" };\n')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, tuple[Identity, Path]]:
    """A root and the identities the tests use, saved as the CLI loads them."""
    certs = tmp_path_factory.mktemp("certs")
    root = RootCA.create()
    root.save(certs)
    out = {}
    for name, principal in {"registry": Principal(Role.REGISTRY, "national"), "node": Principal(Role.NODE, "510100"),
                            "auditor": Principal(Role.AUDITOR, "audit-office")}.items():
        identity = root.issue(principal)
        out[name] = (identity, identity.save(certs))
    return out


def copy_policies(tmp_path: Path) -> Path:
    out = tmp_path / "policies"
    shutil.copytree(REPO_POLICIES, out, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    assert {p.name for p in out.iterdir()} >= {CEDAR, SCHEMA, FAIR_USE, MINIMIZATION}
    Authorizer.from_dir(out)  # the copy itself is a valid set
    return out


def without_policy(cedar_text: str, policy_id: str) -> str:
    """The policy file with one policy (its @id annotation through its closing `;`) removed."""
    pattern = re.compile(r'@id\("' + re.escape(policy_id) + r'"\)\s*(permit|forbid)\s*\(.*?\)\s*(when|unless)?\s*(\{.*?\})?\s*;\n',
                         re.DOTALL)
    text, n = pattern.subn("", cedar_text)
    assert n == 1, f"policy {policy_id} not found exactly once"
    return text


# --- at start ----------------------------------------------------------------------------------------
def serve_args(kind: str, pki, policies: Path, tmp_path: Path) -> list[str]:
    db = f"sqlite:///{tmp_path / (kind + '.db')}"
    listen = f"127.0.0.1:{free_port()}"
    if kind == "registry":
        return ["registry", "serve", "--identity", str(pki["registry"][1]), "--listen", listen, "--db", db,
                "--policies", str(policies)]
    # The registry named is not there: the node must stop on its policies before trying it.
    return ["node", "serve", "--identity", str(pki["node"][1]), "--listen", listen, "--registry",
            f"127.0.0.1:{free_port()}", "--db", db, "--policies", str(policies)]


def refuses_to_start(args: list[str], file: Path, says: str) -> None:
    started = time.monotonic()
    try:
        done = subprocess.run([*XINYI, *args], cwd=ROOT, capture_output=True, text=True, timeout=EXIT_TIMEOUT,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    except subprocess.TimeoutExpired as e:  # run() has killed it
        raise AssertionError(f"`{' '.join(args[:2])}` still running after {EXIT_TIMEOUT:.0f} s with a broken {file.name}: "
                             f"{e.stderr!r}") from None
    elapsed = time.monotonic() - started
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("xinyi: ") and str(file) in lines[0] and says in lines[0], lines[0]
    assert elapsed < PROMPT, f"took {elapsed:.1f} s to refuse"
    assert "listening" not in done.stdout, done.stdout


@pytest.mark.parametrize("kind", ["registry", "node"])
@pytest.mark.parametrize(
    "file, breakage, says",
    [(CEDAR, SYNTAX_ERROR, "cannot parse"), (CEDAR, SCHEMA_ERROR, "does not match the schema"),
     (SCHEMA, "entity Broken {\n", "invalid schema")],
    ids=["cedar-syntax", "cedar-schema-mismatch", "broken-schema"],
)
def test_a_broken_policy_set_stops_the_server_at_start(pki, tmp_path: Path, kind: str, file: str, breakage: str, says: str):
    policies = copy_policies(tmp_path)
    target = policies / file
    target.write_text(target.read_text(encoding="utf-8") + breakage, encoding="utf-8")
    refuses_to_start(serve_args(kind, pki, policies, tmp_path), target, says)


def test_a_broken_fair_use_table_stops_the_registry_at_start(pki, tmp_path: Path):
    policies = copy_policies(tmp_path)
    target = policies / FAIR_USE
    target.write_text(target.read_text(encoding="utf-8") + "\nthis line is not TOML\n", encoding="utf-8")
    refuses_to_start(serve_args("registry", pki, policies, tmp_path), target, "not valid TOML")


def test_broken_minimization_rules_stop_the_node_at_start(pki, tmp_path: Path):
    policies = copy_policies(tmp_path)
    target = policies / MINIMIZATION
    text = target.read_text(encoding="utf-8")
    assert "years = 5" in text
    target.write_text(text.replace("years = 5", 'years = "five"', 1), encoding="utf-8")
    refuses_to_start(serve_args("node", pki, policies, tmp_path), target, "years")


# --- at reload -----------------------------------------------------------------------------------------
async def read_audit_log(auditor: Identity, registry: str) -> int:
    """The auditor reads the registry's whole audit log (a fresh channel each time); how many records."""
    async with AuditClient(auditor, registry, Role.REGISTRY) as client:
        return len(await asyncio.wait_for(client.records(), 10))


@pytest.mark.timeout(90)
async def test_sighup_reloads_a_valid_policy_set_and_keeps_the_old_one_otherwise(pki, databases, tmp_path: Path):
    policies = copy_policies(tmp_path)
    cedar, fair_use = policies / CEDAR, policies / FAIR_USE
    good_cedar, good_fair_use = cedar.read_text(encoding="utf-8"), fair_use.read_text(encoding="utf-8")
    logs = tmp_path / "logs"
    logs.mkdir()
    auditor = pki["auditor"][0]
    registry = f"127.0.0.1:{free_port()}"
    proc = Proc("registry", ["registry", "serve", "--identity", str(pki["registry"][1]), "--listen", registry,
                             "--db", databases.new("registry"), "--policies", str(policies)], logs)
    try:
        proc.start()
        # "listening" is printed once the SIGHUP handler is in place.
        await proc.wait_for_log("listening on port", timeout=START_TIMEOUT)
        first = await read_audit_log(auditor, registry)
        assert first >= 0

        # 1. A Cedar syntax error: refused, named, and the old set stays in force.
        cedar.write_text(good_cedar + SYNTAX_ERROR, encoding="utf-8")
        proc.hup()
        (line,) = await proc.wait_for_log("NOT reloaded")
        assert str(cedar) in line and "cannot parse" in line, line
        second = await read_audit_log(auditor, registry)
        assert second > first  # the first read is itself in the log now

        # 2. A policy that does not match the schema: the same.
        cedar.write_text(good_cedar + SCHEMA_ERROR, encoding="utf-8")
        proc.hup()
        line = (await proc.wait_for_log("NOT reloaded", count=2))[-1]
        assert str(cedar) in line and "does not match the schema" in line, line
        await read_audit_log(auditor, registry)

        # 3. Good policies, broken fair-use table: nothing is reloaded (both are checked first).
        cedar.write_text(without_policy(good_cedar, AUDITOR_POLICY), encoding="utf-8")
        fair_use.write_text(good_fair_use + "\nthis line is not TOML\n", encoding="utf-8")
        proc.hup()
        line = (await proc.wait_for_log("NOT reloaded", count=3))[-1]
        assert str(fair_use) in line, line
        await read_audit_log(auditor, registry)  # the auditors' permit is still in force
        assert "reloaded its policies" not in proc.log()

        # 4. A valid set without `auditors-may-read-audit-logs`: in force after SIGHUP.
        fair_use.write_text(good_fair_use, encoding="utf-8")
        assert AUDITOR_POLICY not in cedar.read_text(encoding="utf-8")
        Authorizer.from_dir(policies)  # what the registry will load is a valid set
        proc.hup()
        (line,) = await proc.wait_for_log("reloaded its policies from")
        assert str(policies) in line, line
        with pytest.raises(ClientError) as refused:
            await read_audit_log(auditor, registry)
        failure = refused.value.failure
        assert failure.code == "PERMISSION_DENIED" and failure.reason == "POLICY_DENIED", failure
        assert "Traceback" not in failure.message
        assert len([line for line in proc.log().splitlines() if "NOT reloaded" in line]) == 3
        proc.check_alive()
    except BaseException:
        print(proc.log()[-6000:])
        raise
    finally:
        proc.kill()
