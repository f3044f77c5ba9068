"""`make demo`: a whole network on this machine, the way an operator would run it.

Creates fresh certificates and synthetic data for a few hundred enterprises, starts the
registry and three nodes (Sichuan 510000, Chengdu 510100, Shanghai 310000) as separate
processes on loopback, then plays the roles: an enterprise grants a consent, a bank queries
through the registry and sees verified answers, the same query is refused without consent
and after revocation, and an auditor reads the logs. Everything it started is stopped at the
end. Every step is a real `xinyi` command, printed before it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "demo-run"
XINYI = [sys.executable, "-m", "xinyi.cli"]
BANK = "914403001922038216"
BANK_LICENCE = "B0014H144030001"  # the bank's financial licence number, carried in its certificate
NODES = {"510000": "Sichuan", "510100": "Chengdu", "310000": "Shanghai"}

sys.path.insert(0, str(ROOT / "scripts"))


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(cmd: list[str]) -> None:
    shown = " ".join(["xinyi", *(str(c).replace(str(ROOT) + "/", "") for c in cmd)])
    print(f"$ {shown}", flush=True)


def xinyi(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    show(list(args))
    proc = subprocess.run([*XINYI, *args], cwd=ROOT, text=True, capture_output=True)
    if not quiet or proc.returncode:
        sys.stdout.write(proc.stdout)
        sys.stdout.write("".join(f"  {line}\n" for line in proc.stderr.splitlines() if "INFO" not in line))
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `xinyi {args[0]}` failed with status {proc.returncode}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        show(list(args))
        log = open(RUN / f"{name}.log", "w")
        proc = subprocess.Popen([*XINYI, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            print(f"stopped {name} (exit {proc.returncode})")


def wait_for_network(identity: Path, registry: str, nodes: int, procs: Processes, timeout: float = 30) -> None:
    """Wait until every node has registered: the signed directory lists all of them."""
    import asyncio

    from xinyi.client import BankClient, ClientError
    from xinyi.crypto.pki import Identity

    async def poll() -> int:
        async with BankClient(Identity.load(identity), registry) as bank:
            return len((await bank.directory(refresh=True)).nodes)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.procs:
            if proc.poll() is not None:
                raise SystemExit(f"demo: {name} exited early; see {RUN / (name + '.log')}")
        try:
            if asyncio.run(poll()) >= nodes:
                return
        except ClientError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"demo: the nodes did not register within {timeout:.0f} s; see the logs in {RUN}")


def _show_answer(result: dict) -> None:
    """The bank's --json answer, in short: each node, verified or not, and its records."""
    for n in result["nodes"]:
        print(f"  node {n['node']}: {n['status']}, signature {'verified' if n['verified'] else 'NOT verified'}")
        for r in n["records"][:4]:
            fields = {k: v for k, v in r.items() if k not in ("category", "as_of", "source", "record_id")}
            print(f"    {r['category']:<13} {r['as_of']} {r['source']}: {json.dumps(fields, ensure_ascii=False)[:110]}")
        if len(n["records"]) > 4:
            print(f"    ... and {len(n['records']) - 4} more records")


class WebApp:
    """A running `xinyi web`, logged in through its one-time link as a browser would be."""

    def __init__(self, url: str, link: str) -> None:
        import http.cookiejar
        import urllib.request

        self.url, self.link = url, link
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def login(self) -> None:
        self.opener.open(self.link, timeout=10).read()

    def get(self, path: str) -> str:
        if self.link:
            self.login()
            self.link = ""
        return self.opener.open(self.url + path, timeout=30).read().decode()


def start_web(procs: Processes, name: str, identity: list[str]) -> WebApp:
    """`xinyi web` for an identity, and the login link it printed (read from its log)."""
    port = free_port()
    procs.start(f"web-{name}", "web", *identity, "--listen", f"127.0.0.1:{port}")
    log = RUN / f"web-{name}.log"
    for _ in range(200):
        link = next((line.strip() for line in log.read_text().splitlines() if "/login?token=" in line), "")
        if link:
            web = WebApp(f"http://127.0.0.1:{port}", link)
            for _ in range(100):  # the link is printed just before the server listens
                try:
                    import urllib.request

                    urllib.request.urlopen(web.url + "/static/style.css", timeout=2).read()
                    return web
                except OSError:
                    time.sleep(0.05)
        time.sleep(0.05)
    raise SystemExit(f"demo: `xinyi web` did not start; see {log}")


def _edit_audit_row(db: Path, index: int) -> None:
    """What a tamperer with database access would do: rewrite who asked, in place."""
    import sqlite3

    from xinyi.v1 import audit_pb2

    with sqlite3.connect(db) as conn:
        (raw,) = conn.execute("SELECT leaf_input FROM audit_log WHERE idx = ?", (index,)).fetchone()
        record = audit_pb2.AuditRecord.FromString(raw)
        record.caller_id = "91440300708461136T"
        conn.execute("UPDATE audit_log SET leaf_input = ? WHERE idx = ?", (record.SerializeToString(deterministic=True), index))
    print(f"  (changed the caller of entry {index} in {db.name})")


def main() -> None:
    from gen_data import generate

    if RUN.exists():
        shutil.rmtree(RUN)
    RUN.mkdir()
    certs, data = RUN / "certs", RUN / "data"

    say("1. Operators: a national root CA and an identity for every party")
    xinyi("pki", "init", "--dir", str(certs))
    xinyi("pki", "issue", "--dir", str(certs), "--role", "registry", "--id", "national")
    for node in NODES:
        xinyi("pki", "issue", "--dir", str(certs), "--role", "node", "--id", node, quiet=True)
    print(f"  (issued node identities for {', '.join(NODES)})")

    say("2. Operators: synthetic data for 300 enterprises, loaded into each node's own store")
    summary = generate(data, 300, seed=7)
    for node, count in summary["records"].items():
        print(f"  {node} {NODES[node]}: {count} records")
    for node in NODES:
        xinyi("node", "ingest", "--db", f"sqlite:///{RUN / (node + '.db')}", str(data / f"{node}.jsonl"))

    firm = next(e for e in summary["enterprises"] if e["area"].startswith("5101"))
    uscc = firm["uscc"]
    xinyi("pki", "issue", "--dir", str(certs), "--role", "bank", "--id", BANK, "--licence", BANK_LICENCE)
    xinyi("pki", "issue", "--dir", str(certs), "--role", "enterprise", "--id", uscc)
    xinyi("pki", "issue", "--dir", str(certs), "--role", "auditor", "--id", "audit-office")

    procs = Processes()
    try:
        say("3. The network: registry and three nodes, each its own process, mutual TLS on loopback")
        reg_port = free_port()
        registry = f"127.0.0.1:{reg_port}"
        procs.start("registry", "registry", "serve", "--identity", str(certs / "registry-national"),
                    "--listen", registry, "--db", f"sqlite:///{RUN / 'registry.db'}")
        node_addr = {}
        for node in NODES:
            node_addr[node] = f"127.0.0.1:{free_port()}"
            procs.start(f"node-{node}", "node", "serve", "--identity", str(certs / f"node-{node}"),
                        "--listen", node_addr[node], "--registry", registry,
                        "--db", f"sqlite:///{RUN / (node + '.db')}")
        wait_for_network(certs / f"bank-{BANK}", registry, len(NODES), procs)
        print("  all three nodes registered; the registry's signed directory lists them, and the bank, which")
        print("  made itself known when it connected (role, USCC and licence from its certificate)")
        operator = ["--identity", str(certs / "registry-national"), "--registry", registry]
        print("  a node is routed for its own area's firms; what it claims to hold elsewhere waits for the operator:")
        xinyi("registry", "claims", "list", *operator)

        bank = ["--identity", str(certs / f"bank-{BANK}"), "--registry", registry]
        ent = ["--identity", str(certs / f"enterprise-{uscc}"), "--registry", registry]
        ask = ["--uscc", uscc, "--purpose", "credit_assessment", "--categories", "registration,tax,judicial"]

        say(f"4. Enterprise {firm['name']} ({uscc}) lets the bank look once at 24 months of its records")
        out = xinyi("consent", "grant", *ent, "--grantee", BANK, "--purpose", "credit_assessment",
                    "--categories", "registration,tax,judicial", "--days", "30", "--history-months", "24")
        consent_id = out.stdout.strip().splitlines()[0]

        say("5. The bank queries through the registry: answers sealed to the bank, signatures verified")
        out = xinyi("query", *bank, *ask, "--consent", consent_id, "--json", quiet=True)
        result = json.loads(out.stdout)
        _show_answer(result)

        say("6. A credit_assessment consent is for one look: the same query again is refused")
        xinyi("query", *bank, *ask, "--consent", consent_id, check=False)

        say("7. The same query without a consent is refused by every node")
        xinyi("query", *bank, *ask, "--consent", "0" * 32, check=False)
        other = next(e["uscc"] for e in summary["enterprises"] if e["uscc"] != uscc)
        print("  and a consent can name only a licensed institution known to the network, not another firm:")
        xinyi("consent", "grant", *ent, "--grantee", other, "--purpose", "credit_assessment",
              "--categories", "tax", "--days", "30", check=False)

        say("7b. The enterprise reads its own records from every node: no consent, audited, a few a day")
        out = xinyi("my-data", *ent, "--category", "registration", "--category", "judicial", "--json", quiet=True)
        own = json.loads(out.stdout)
        for n in own["nodes"]:
            print(f"  node {n['node']}: {len(n['records'])} record(s), verified={n['verified']}: "
                  + ", ".join(f"{r['category']} {r['record_id'][:12]}" for r in n["records"]))

        say("8. The enterprise disputes a record (its id from its own records); the Chengdu operator replies (with the node's own identity)")
        record = next(r for n in own["nodes"] if n["node"] == "510100" for r in n["records"])
        out = xinyi("dispute", "file", *ent, "--node", "510100", "--record", record["record_id"],
                    "--reason", "registered capital was increased in 2025", "--json", quiet=True)
        dispute_id = json.loads(out.stdout)["dispute_id"]
        print(f"  filed dispute {dispute_id}; answers now flag the record until the operator replies")
        operator = ["--identity", str(certs / "node-510100"), "--node", node_addr["510100"]]
        xinyi("dispute", "list", *operator, "--open")
        xinyi("dispute", "resolve", *operator, "--dispute", dispute_id, "--outcome", "confirmed",
              "--reason", "the market regulation bureau confirms the registered capital on file")

        say("9. For monitoring, a summary consent: indicators computed where the data lives, 4 fetches a month")
        out = xinyi("consent", "grant", *ent, "--grantee", BANK, "--purpose", "loan_monitoring",
                    "--categories", "tax,judicial,admin_penalty", "--days", "180", "--detail", "summary",
                    "--fetch", "periodic", "--max-fetches", "4", "--period", "month")
        monitoring = out.stdout.strip().splitlines()[0]
        watch = ["--uscc", uscc, "--purpose", "loan_monitoring", "--categories", "tax,judicial,admin_penalty"]
        xinyi("query", *bank, *watch, "--consent", monitoring)

        say("9b. Early warning: the bank subscribes; a new penalty is loaded at the Sichuan node; the alert arrives")
        xinyi("alerts", "subscribe", *bank, "--uscc", uscc, "--consent", monitoring)
        penalty = RUN / "new-penalty.jsonl"
        penalty.write_text(json.dumps({
            "uscc": uscc, "category": "admin_penalty", "as_of": time.strftime("%Y-%m-%d"), "source": "四川省市场监督管理局",
            "decision_no": "川市监罚〔2026〕88号", "authority": "四川省市场监督管理局", "decided": time.strftime("%Y-%m-%d"),
            "reason": "未按规定公示年度报告", "amount": "5000.00"}, ensure_ascii=False) + "\n")
        xinyi("node", "ingest", "--db", f"sqlite:///{RUN / '510000.db'}", str(penalty))
        xinyi("alerts", "watch", *bank, "--uscc", uscc, "--consent", monitoring, "--once",
              "--state", str(RUN / "alerts-state.json"))

        say("10. The enterprise pauses the monitoring consent: every node refuses at once; then it revokes it")
        xinyi("consent", "pause", *ent, "--consent", monitoring)
        xinyi("query", *bank, *watch, "--consent", monitoring, check=False)
        xinyi("consent", "revoke", *ent, "--consent", monitoring)
        xinyi("consent", "list", *ent)

        say("10b. Usable but not visible: the bank's own model, approved, run by the nodes on features that never leave them")
        from train_model import FEATURES, train

        (RUN / "model.onnx").write_bytes(train())
        out = xinyi("model", "submit", *bank, "--file", str(RUN / "model.onnx"), "--name", "sme-default-risk",
                    "--features", ",".join(FEATURES))
        model = out.stdout.split()[0]
        xinyi("model", "approve", "--identity", str(certs / "registry-national"), "--registry", registry, "--model", model)
        out = xinyi("consent", "grant", *ent, "--grantee", BANK, "--purpose", "credit_assessment",
                    "--categories", "registration,tax,judicial", "--days", "30", "--detail", "summary")
        scoring = out.stdout.strip().splitlines()[0]
        xinyi("score", *bank, "--uscc", uscc, "--consent", scoring, "--model", model)
        out = xinyi("consent", "grant", *ent, "--grantee", BANK, "--purpose", "policy_matching",
                    "--categories", "tax,social_security,dishonesty_list", "--days", "30", "--detail", "summary")
        matching = out.stdout.strip().splitlines()[0]
        xinyi("eligibility", *bank, "--uscc", uscc, "--consent", matching, "--programme", "chengdu_sme_interest_subsidy")

        say("10c. A government department asks privacy-protected statistics across the network")
        gov = "11510100MB1234567X"
        from xinyi.records import uscc as uscc_codes

        gov = uscc_codes.with_check_character(gov[:17])
        xinyi("pki", "issue", "--dir", str(certs), "--role", "government", "--id", gov, quiet=True)
        xinyi("stats", "--identity", str(certs / f"government-{gov}"), "--registry", registry,
              "--metric", "count", "--by", "tax_rating", "--epsilon", "0.5")

        say("11. The enterprise sees every access to its data, each line proven against the node's signed log")
        xinyi("access", "list", *ent)

        say("11b. The same, in a browser: the enterprise's web app, served from its own machine")
        web = start_web(procs, "enterprise", ent)
        page = web.get("/accesses")
        rows, proven = page.count('class="access"'), page.count("已证明")
        print(f"  {web.url}/accesses: {rows} accesses listed, {proven} marked proven against the node's signed log "
              "(Chinese by default; English from the page's header)")
        page = web.get("/consents")
        consents = page.count('id="consent-')
        print(f"  {web.url}/consents: {consents} consents, each with its state, uses and pause/resume/revoke links")

        say("12. The auditor reads the Chengdu node's log, verifies it, and reconciles the registry with every node")
        auditor = ["--identity", str(certs / "auditor-audit-office")]
        xinyi("audit", "log", *auditor, "--node", node_addr["510100"])
        state = ["--state", str(RUN / "auditor-state" / "510100.json")]
        xinyi("audit", "verify", *auditor, "--node", node_addr["510100"], *state)
        xinyi("audit", "checkpoint", *auditor, "--node", node_addr["510100"])
        xinyi("audit", "reconcile", *auditor, "--registry", registry)
        xinyi("audit", "export", *auditor, "--node", node_addr["510100"], "--out", str(RUN / "archive-510100"))
        xinyi("audit", "verify", *auditor, "--offline", str(RUN / "archive-510100"))

        say("13. Someone with database access edits an audit row; the auditor's next verify names it")
        _edit_audit_row(RUN / "510100.db", index=1)
        xinyi("audit", "verify", *auditor, "--node", node_addr["510100"], *state, check=False)

        say("14. A bank may not read audit logs")
        xinyi("audit", "log", "--identity", str(certs / f"bank-{BANK}"), "--node", node_addr["510100"], check=False)

        if "--keep" in sys.argv:
            say("The network keeps running (make demo KEEP=1): open these links in a browser; Ctrl-C stops everything")
            for name, who, args in (("enterprise", "the enterprise", ent),
                                    ("auditor", "the auditor", [*auditor, "--registry", registry]),
                                    ("operator", "the Chengdu node's operator",
                                     ["--identity", str(certs / "node-510100"), "--registry", registry])):
                print(f"  {who}: {start_web(procs, name if name != 'enterprise' else 'enterprise-kept', args).link}")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        say("15. Stopping everything the demo started")
        procs.stop()
    print(f"\nDemo finished. Logs, databases and certificates are in {RUN.relative_to(ROOT)}/.")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
