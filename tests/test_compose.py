"""docker-compose.yml, the Dockerfile and `make certs`, validated by reading them: there is no
Docker engine where the tests run. The compose network must be the network scripts/demo.py
starts (registry + nodes 510000, 510100, 310000, running the same `xinyi` commands), wired so
that it can work: the right identities, addresses, databases and read-only certificates. The
registry runs as two replicas on its one database, and every node knows both."""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from xinyi.cli.main import build_parser
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import Identity

yaml = pytest.importorskip("yaml", reason="pyyaml is a dev dependency: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
NODE_SERVICE = re.compile(r"^node-(\d{6})$")
REGISTRY_REPLICAS = ("registry-1", "registry-2")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def apps(compose) -> dict[str, dict]:
    """Application services (everything but the database) with their parsed commands."""
    out = {}
    for name, service in compose["services"].items():
        if name == "postgres":
            continue
        command = service["command"]
        assert isinstance(command, list), f"{name}: write the command as a list (exec form), not a shell string"
        try:
            args = build_parser().parse_args([str(a) for a in command])
        except SystemExit:
            pytest.fail(f"{name}: `xinyi {' '.join(map(str, command))}` does not parse")
        out[name] = {"service": service, "command": [str(a) for a in command], "args": args}
    return out


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    assert host and port.isdigit(), f"{address!r} is not HOST:PORT"
    return host, int(port)


def _init_sql_databases(compose) -> set[str]:
    for volume in compose["services"]["postgres"]["volumes"]:
        source, target, *_ = volume.split(":")
        if target.startswith("/docker-entrypoint-initdb.d"):
            sql = (ROOT / source).read_text(encoding="utf-8")
            return set(re.findall(r"(?im)^\s*CREATE\s+DATABASE\s+\"?(\w+)\"?\s*;", sql))
    pytest.fail("postgres mounts no init script into /docker-entrypoint-initdb.d")


def _demo_starts() -> dict[str, set[str]]:
    """What scripts/demo.py starts: {"registry serve" | "node serve": the options it passes}."""
    tree = ast.parse((ROOT / "scripts" / "demo.py").read_text(encoding="utf-8"))
    starts: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "start":
            # procs.start(NAME, SUBCOMMAND, ACTION, *options): NAME may be an f-string.
            words = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
            if len(words) >= 3 and isinstance(words[1], str) and isinstance(words[2], str):
                starts[f"{words[1]} {words[2]}"] = {w for w in words[3:] if isinstance(w, str) and w.startswith("--")}
    return starts


def _demo_nodes() -> set[str]:
    spec = importlib.util.spec_from_file_location("xinyi_demo_script", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines constants only; main() runs under __main__
    return set(module.NODES)


# --- the services ----------------------------------------------------------------------------


def test_services_are_what_the_demo_starts(compose, apps):
    assert set(compose["services"]) == {"postgres", *REGISTRY_REPLICAS, *(f"node-{n}" for n in _demo_nodes())}
    assert _demo_nodes() == {"510000", "510100", "310000"}
    demo = _demo_starts()
    assert set(demo) == {"registry serve", "node serve"}, demo
    for name, app in apps.items():
        subcommand = " ".join(app["command"][:2])
        assert subcommand == ("registry serve" if name in REGISTRY_REPLICAS else "node serve"), name
        options = {a for a in app["command"] if a.startswith("--")}
        # The demo's options exactly; a node also advertises its service name (0.0.0.0 reaches nobody),
        # and every service serves its Prometheus metrics to the compose network.
        extra = {"--metrics-listen"} | ({"--advertise"} if subcommand == "node serve" else set())
        assert options == demo[subcommand] | extra, f"{name}: {sorted(options)} vs demo {sorted(demo[subcommand])}"


def test_every_service_serves_metrics_inside_the_compose_network_only(apps):
    for name, app in apps.items():
        assert app["args"].metrics_listen == "0.0.0.0:9464", name
        # Plain HTTP: not published on the host (a Prometheus joins the compose network to scrape).
        assert not [p for p in app["service"].get("ports", []) if str(p).endswith(":9464")], name


def test_app_services_run_the_xinyi_image(apps):
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"(?m)^FROM python:3\.11-slim\b", dockerfile)
    assert re.search(r'(?m)^ENTRYPOINT \["xinyi"\]\s*$', dockerfile)
    assert re.search(r"(?m)^RUN pip install \.", dockerfile)
    for name, app in apps.items():
        build = app["service"]["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (ROOT / context / "Dockerfile").resolve() == (ROOT / "Dockerfile").resolve(), name
        assert "entrypoint" not in app["service"], f"{name}: the image's entrypoint is `xinyi`"


def test_the_image_holds_no_certificates_or_keys():
    """Identities are mounted at run time; the root key in ./certs must never enter a layer."""
    copies = re.findall(r"(?m)^(?:COPY|ADD)\s+(.+)$", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    assert copies
    ignore = ROOT / ".dockerignore"
    certs_ignored = ignore.exists() and re.search(r"(?m)^/?certs/?(\*\*?)?\s*$", ignore.read_text(encoding="utf-8"))
    for line in copies:
        for source in line.split()[:-1]:
            assert "certs" not in source and not source.endswith(".key"), line
            assert source not in (".", "./", "*") or certs_ignored, (
                f"`COPY {line}` would put ./certs (with ca/ca.key) into the image: "
                "copy by name, or exclude certs/ in .dockerignore"
            )


def test_identities_come_from_certs_mounted_read_only(apps):
    for name, app in apps.items():
        identity = Path(app["args"].identity)
        assert identity.parent == Path("/certs"), f"{name}: --identity {identity} is not under /certs"
        mounts = [v for v in app["service"]["volumes"] if isinstance(v, str)]
        assert "./certs:/certs:ro" in mounts, f"{name}: mount ./certs at /certs read-only"
        writable = [v for v in mounts if v.split(":")[1].startswith("/certs") and not v.endswith(":ro")]
        assert not writable, f"{name}: {writable}"


def test_identity_directories_match_the_services(apps):
    for replica in REGISTRY_REPLICAS:  # replicas of one registry: its one identity
        assert Path(apps[replica]["args"].identity).name == "registry-national", replica
    for name, app in apps.items():
        if name in REGISTRY_REPLICAS:
            continue
        node_id = NODE_SERVICE.match(name).group(1)
        # D/ROLE-ID, as `xinyi pki issue` names it: the service node-510100 runs as node/510100.
        assert Path(app["args"].identity).name == f"{Role.NODE}-{node_id}" == name
        Principal(Role.NODE, node_id)  # a valid node id


def test_nodes_know_every_registry_replica_and_advertise_themselves(apps):
    replicas = []
    for replica in REGISTRY_REPLICAS:
        host, port = _host_port(apps[replica]["args"].listen)
        assert host == "0.0.0.0", replica
        replicas.append(f"{replica}:{port}")  # a service's name is its DNS name in the compose network
    ports = {}
    for name, app in apps.items():
        listen_host, listen_port = _host_port(app["args"].listen)
        assert listen_host == "0.0.0.0", f"{name}: listen on every interface inside the container"
        if name in REGISTRY_REPLICAS:
            continue
        ports[name] = listen_port
        assert app["args"].registry == replicas, f"{name}: --registry once for each replica, got {app['args'].registry}"
        advertise_host, advertise_port = _host_port(app["args"].advertise)
        assert advertise_host == name, f"{name}: --advertise must name the service, which is its DNS name"
        assert advertise_port == listen_port, name
        assert {*REGISTRY_REPLICAS, "postgres"} <= set(app["service"]["depends_on"]), name
    assert len(set(ports.values())) == len(ports), f"node ports collide: {ports}"


def test_every_registry_replica_is_published_for_clients_outside(apps):
    published = []
    for replica in REGISTRY_REPLICAS:
        _, port = _host_port(apps[replica]["args"].listen)
        mapped = [str(p) for p in apps[replica]["service"].get("ports", []) if str(p).endswith(f":{port}")]
        assert len(mapped) == 1, f"{replica}: publish its port {port} once"
        published.append(mapped[0].split(":")[0])
    assert published[0] == "7000" and len(set(published)) == len(published), published


def test_the_replicas_run_the_same_registry_on_one_database(apps):
    commands = {tuple(apps[r]["command"]) for r in REGISTRY_REPLICAS}
    assert len(commands) == 1, f"the replicas differ: {commands}"


def test_every_service_has_its_own_database_created_by_the_init_script(compose, apps):
    created = _init_sql_databases(compose)
    assert created, "the init script creates no database"
    used = {}
    for name, app in apps.items():
        url = make_url(app["args"].db)
        assert url.drivername == "postgresql+psycopg", name
        assert url.host == "postgres" and (url.port or 5432) == 5432, f"{name}: the database is the postgres service"
        assert url.username == "postgres" and url.password is None, name  # trust authentication
        assert url.database in created, f"{name}: database {url.database!r} is not created by the init script"
        used[name] = url.database
    assert {used.pop(r) for r in REGISTRY_REPLICAS} == {"registry"}, "the registry's replicas share its one database"
    assert len(set(used.values())) == len(used), f"nodes share a database: {used}"
    for name, database in used.items():
        assert database == name.replace("-", "_"), name


def test_postgres_is_healthy_before_the_services_start(compose, apps):
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert postgres["environment"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    for name, app in apps.items():
        assert app["service"]["depends_on"]["postgres"] == {"condition": "service_healthy"}, name


# --- make certs ------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_certs_issues_what_compose_mounts(apps, tmp_path):
    certs = tmp_path / "certs"
    venv = sys.prefix  # the virtualenv running the tests, taken as installed (-o its stamp)
    make = ["make", "-s", "-C", str(ROOT), "-o", f"{venv}/.installed", "certs", f"CERTS={certs}", f"VENV={venv}"]
    plan = subprocess.run([*make, "-n"], capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert "pip" not in plan.stdout and "-m venv" not in plan.stdout, f"make would rebuild the venv:\n{plan.stdout}"
    assert f"{venv}/bin/xinyi pki init --dir {certs}" in plan.stdout
    first = subprocess.run(make, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    root = (certs / "ca" / "ca.crt").read_bytes()
    for name, app in apps.items():
        bundle = certs / Path(app["args"].identity).name
        identity = Identity.load(bundle)
        assert identity.ca_pem == root, name
        assert str(identity.principal) == ("registry/national" if name in REGISTRY_REPLICAS else name.replace("-", "/"))

    key = (certs / "ca" / "ca.key").read_bytes()
    again = subprocess.run(make, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "exists" in again.stdout
    assert (certs / "ca" / "ca.key").read_bytes() == key


def test_certs_readme():
    text = (ROOT / "certs" / "README.md").read_text(encoding="utf-8")
    assert 2 <= len(text.strip().splitlines()) <= 5
    assert "make certs" in text and "ca.key" in text and "offline" in text


# --- the installed package -------------------------------------------------------------------


def test_a_plain_install_ships_the_default_policies(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    for package in ("xinyi", "node", "registry", "policies"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(wheels), str(src)],
        capture_output=True, text=True, timeout=120,
    )
    assert build.returncode == 0, build.stderr
    site = tmp_path / "site"
    with zipfile.ZipFile(next(wheels.glob("*.whl"))) as wheel:
        wheel.extractall(site)
    check = subprocess.run(
        [sys.executable, "-c",
         "import xinyi.policy as p; print(p.__file__); p.Authorizer.from_dir(p.DEFAULT_POLICY_DIR)"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert check.stdout.startswith(str(site)), f"the installed copy was not the one imported: {check.stdout}"
    assert check.returncode == 0, check.stderr.strip().splitlines()[-1]
