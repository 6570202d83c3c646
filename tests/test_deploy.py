"""Offline checks of deploy/: manifests parse, Redis never runs open, no password is committed.

No docker engine or cluster is needed. The Redis checks are real: deploy/redis-start.sh
starts a real redis-server with deploy/redis.conf (only ``dir``, the port, the address
and persistence changed, so it runs in a temp dir), and clients try it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from subtitle_tasks.local_redis import RedisNotAvailable, find_redis_server, free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
REDIS_CONF = DEPLOY / "redis.conf"
REDIS_START = DEPLOY / "redis-start.sh"
FLEET_USER = "subtitle_tasks"

# Placeholders a committed URL may carry instead of a password.
_PLACEHOLDER = re.compile(r"\$\(\w+\)|\$\{\w+(:-)?\}|<password>")
_URL_WITH_PASSWORD = re.compile(r"rediss?://[^\s:@/'\"]*:([^\s@'\"]*)@")


# -- YAML ----------------------------------------------------------------------------


@functools.cache
def _yaml_loader():
    """A function path -> list of documents, or None when no PyYAML is around.

    PyYAML is not a dependency of this project. When the venv lacks it, a system
    python3 that has it parses the files in a subprocess (still offline).
    """
    try:
        import yaml  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        return lambda path: list(yaml.safe_load_all(path.read_text()))
    script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"
    for candidate in dict.fromkeys(filter(None, [shutil.which("python3"), "/usr/bin/python3"])):
        if not os.path.exists(candidate) or os.path.realpath(candidate) == os.path.realpath(sys.executable):
            continue
        probe = subprocess.run([candidate, "-c", "import yaml"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            def load(path: Path, python: str = candidate) -> list:
                out = subprocess.run([python, "-c", script, str(path)], capture_output=True, text=True, timeout=30,
                                     check=False)
                if out.returncode != 0:
                    raise AssertionError(f"{path.name} does not parse as YAML:\n{out.stderr}")
                return json.loads(out.stdout)
            return load
    return None


@functools.cache
def _parsed(path: Path) -> str:
    loader = _yaml_loader()
    return json.dumps([doc for doc in loader(path) if doc is not None])


def _docs(path: Path) -> list:
    if _yaml_loader() is None:
        pytest.skip("PyYAML is in neither this venv nor a system python3 (not a project dependency); "
                    "test_manifests_are_well_formed_line_by_line still runs")
    return json.loads(_parsed(path))  # a fresh copy per call


@pytest.mark.parametrize("path", [COMPOSE, *K8S], ids=lambda p: p.name)
def test_every_manifest_parses(path):
    docs = _docs(path)
    assert docs, f"{path.name} holds no document"
    if path == COMPOSE:
        [compose] = docs
        assert {"redis", "worker", "beat"} <= set(compose["services"])
        return
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), f"{path.name}: a document without apiVersion/kind"
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"]


def _containers(doc: dict) -> list[dict]:
    return doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def _env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def test_kubernetes_reads_the_redis_password_from_the_secret():
    docs = [doc for path in K8S if path.name != "secret.example.yaml" for doc in _docs(path)]
    workloads = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")}
    assert set(workloads) == {"subtitle-tasks-worker", "subtitle-tasks-beat", "subtitle-tasks-redis",
                              "subtitle-tasks-metrics"}
    for name, doc in workloads.items():
        [container] = _containers(doc)
        env = _env(container)
        ref = env["SUBTITLE_TASKS_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "subtitle-tasks-redis", "key": "SUBTITLE_TASKS_REDIS_PASSWORD"}, name
        if name != "subtitle-tasks-redis":
            names = list(env)
            for url_name in ("CELERY_BROKER_URL", "SUBTITLE_TASKS_REDIS_URL"):
                assert env[url_name]["value"] == (
                    "redis://subtitle_tasks:$(SUBTITLE_TASKS_REDIS_PASSWORD)@subtitle-tasks-redis:6379/0")
                # $(VAR) only expands variables defined earlier in the list.
                assert names.index("SUBTITLE_TASKS_REDIS_PASSWORD") < names.index(url_name)
    [settings] = [doc for doc in docs
                  if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "subtitle-tasks-settings"]
    assert not {"CELERY_BROKER_URL", "SUBTITLE_TASKS_REDIS_URL"} & set(settings["data"])


def test_the_redis_configmap_holds_the_files_verbatim():
    [configmap] = [doc for doc in _docs(DEPLOY / "k8s" / "redis.yaml") if doc["kind"] == "ConfigMap"]
    assert configmap["data"]["redis.conf"] == REDIS_CONF.read_text()
    assert configmap["data"]["redis-start.sh"] == REDIS_START.read_text()


def test_compose_starts_redis_through_the_acl_script():
    [compose] = _docs(COMPOSE)
    redis_service = compose["services"]["redis"]
    assert redis_service["command"][:2] == ["sh", "/usr/local/etc/redis/redis-start.sh"]
    assert redis_service["environment"]["SUBTITLE_TASKS_REDIS_PASSWORD"] == "${SUBTITLE_TASKS_REDIS_PASSWORD:-}"
    assert "redis-cli --user subtitle_tasks ping" in redis_service["healthcheck"]["test"][1]
    for service in ("worker", "beat"):
        env = compose["services"][service]["environment"]
        for url_name in ("CELERY_BROKER_URL", "SUBTITLE_TASKS_REDIS_URL"):
            assert env[url_name] == "redis://subtitle_tasks:${SUBTITLE_TASKS_REDIS_PASSWORD:-}@redis:6379/0"


# -- the same, without a YAML parser -------------------------------------------------------


def _block_scalar(text: str, key: str, indent: int = 4) -> str:
    """The value of ``  key: |`` in a YAML text, read by indentation."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip() == f"  {key}: |")
    out = []
    for line in lines[start + 1:]:
        if line.strip() and not line.startswith(" " * indent):
            break
        out.append(line[indent:] if line.strip() else "\n")
    return "".join(out).rstrip("\n") + "\n"


def test_manifests_are_well_formed_line_by_line():
    for path in [COMPOSE, *K8S]:
        text = path.read_text()
        assert "\t" not in text, f"{path.name}: a tab (YAML indents with spaces)"
        if path == COMPOSE:
            top = {line.split(":")[0] for line in text.splitlines() if re.match(r"[a-z]", line)}
            assert {"name", "services", "volumes"} <= top
            for service in ("redis", "worker", "beat"):
                assert f"\n  {service}:\n" in text
            continue
        for number, doc in enumerate(re.split(r"^---$", text, flags=re.M)):
            assert re.search(r"^apiVersion: \S+$", doc, re.M), f"{path.name} document {number}: no apiVersion"
            assert re.search(r"^kind: \S+$", doc, re.M), f"{path.name} document {number}: no kind"
    redis_yaml = (DEPLOY / "k8s" / "redis.yaml").read_text()
    assert _block_scalar(redis_yaml, "redis.conf") == REDIS_CONF.read_text()
    assert _block_scalar(redis_yaml, "redis-start.sh") == REDIS_START.read_text()


def test_kustomize_builds_the_manifests():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (kubectl kustomize renders offline)")
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    kinds = re.findall(r"^kind: (\w+)$", out.stdout, re.M)
    assert sorted(kinds) == sorted(["ConfigMap", "ConfigMap", "Service", "Service", "StatefulSet",
                                    "NetworkPolicy", "Deployment", "PodDisruptionBudget", "Deployment",
                                    "Deployment", "Service"])
    assert "kind: Secret" not in out.stdout  # created out of band, never applied from the repo


# -- redis.conf and committed secrets -------------------------------------------------------


def _directives(path: Path) -> list[list[str]]:
    out = []
    for raw_line in path.read_text().splitlines():
        line = raw_line.strip()
        if line and not line.startswith("#"):
            out.append(line.split())
    return out


def test_redis_conf_never_runs_open():
    directives = _directives(REDIS_CONF)
    assert ["protected-mode", "yes"] in directives
    assert ["user", "default", "off"] in directives
    assert not [d for d in directives if d[0] == "protected-mode" and d[1] != "yes"]
    assert not [d for d in directives if d[0] == "requirepass"], "a password in a committed file"
    for d in directives:
        if d[0] == "user":
            assert "nopass" not in d and not any(rule.startswith((">", "#")) for rule in d[2:]), d
            assert d[1] != "default" or "on" not in d, d
    # The durability settings deploy/README.md explains stay.
    for kept in (["appendonly", "yes"], ["appendfsync", "always"], ["no-appendfsync-on-rewrite", "no"],
                 ["maxmemory-policy", "noeviction"]):
        assert kept in directives


def test_no_committed_file_contains_a_redis_password():
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.name != ".env"]
    files += [ROOT / "worker.Dockerfile"]
    for path in files:
        text = path.read_text()
        for match in _URL_WITH_PASSWORD.finditer(text):
            assert _PLACEHOLDER.fullmatch(match.group(1)), f"{path.relative_to(ROOT)}: {match.group(0)!r}"
        for line in text.splitlines():
            assert not re.match(r"\s*requirepass\s+\S", line), f"{path.relative_to(ROOT)}: {line!r}"
            assert not re.search(r"\buser\s+\S+\s+on\b.*\s>[^\s'\"]", line), f"{path.relative_to(ROOT)}: {line!r}"
    example = (DEPLOY / "k8s" / "secret.example.yaml").read_text()
    values = re.findall(r"^  [A-Z_]+: \"(.*)\"$", example, re.M)
    assert values and all(value.startswith("replace-me") for value in values)


# -- a real redis-server ----------------------------------------------------------------


def _start_script(tmp_path: Path, password: str | None, *extra: str, redis_server: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUBTITLE_TASKS_REDIS_PASSWORD")}
    env.update(REDIS_SERVER=redis_server, REDIS_USERS_FILE=str(tmp_path / "run" / "users.conf"))
    if password is not None:
        env["SUBTITLE_TASKS_REDIS_PASSWORD"] = password
    # The committed file, with the one directive that cannot work here (dir /data) moved.
    conf = tmp_path / "redis.conf"
    conf.write_text(re.sub(r"^dir /data$", f"dir {tmp_path}", REDIS_CONF.read_text(), flags=re.M))
    return subprocess.Popen(["sh", str(REDIS_START), str(conf), *extra], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)


@pytest.mark.parametrize("password", [None, "", "short", "x" * 31, "has space " * 4, "p@ss:word/" * 4],
                         ids=["unset", "empty", "short", "31-chars", "space", "url-unsafe"])
def test_redis_start_refuses_a_missing_or_weak_password(tmp_path, password):
    # /bin/false stands in for redis-server: reaching it would be a failure of its own (1, not 78).
    proc = _start_script(tmp_path, password, redis_server="false")
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 78, output
    assert "not starting" in output
    assert not (tmp_path / "run" / "users.conf").exists()


@pytest.fixture
def acl_redis(tmp_path):
    """deploy/redis.conf + redis-start.sh on a free loopback port; yields (port, password)."""
    try:
        server = find_redis_server()
    except RedisNotAvailable as exc:
        pytest.skip(str(exc))
    if shutil.which("sha256sum") is None:
        pytest.skip("redis-start.sh needs sha256sum (coreutils or busybox)")
    port, password = free_port(), secrets.token_hex(32)
    proc = _start_script(tmp_path, password, "--port", str(port), "--bind", "127.0.0.1",
                         "--appendonly", "no", "--save", "", "--daemonize", "no", "--loglevel", "warning",
                         redis_server=server)
    client = redis.Redis(port=port, username=FLEET_USER, password=password, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"redis-server refused deploy/redis.conf:\n{proc.stdout.read()}")
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    pytest.fail("redis-server did not come up")
                time.sleep(0.05)
        users = (tmp_path / "run" / "users.conf").read_text()
        assert password not in users and oct((tmp_path / "run" / "users.conf").stat().st_mode)[-3:] == "600"
        yield port, password
    finally:
        client.close()
        proc.terminate()  # the fleet user may not SHUTDOWN; the process is ours
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def test_redis_refuses_unauthenticated_clients(acl_redis):
    port, password = acl_redis
    once = dict(socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))  # a refusal is final: no retries
    anonymous = redis.Redis(port=port, **once)
    with pytest.raises(redis.AuthenticationError):  # NOAUTH, even for PING
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        anonymous.set("k", "v")
    anonymous.close()
    for username, wrong in ((FLEET_USER, "not-" + password), ("default", ""), ("default", password)):
        client = redis.Redis(port=port, username=username, password=wrong, **once)
        with pytest.raises(redis.AuthenticationError):
            client.ping()
        client.close()


def test_the_fleet_user_can_do_what_the_fleet_does(acl_redis):
    port, password = acl_redis
    client = redis.Redis.from_url(f"redis://{FLEET_USER}:{password}@127.0.0.1:{port}/1")
    try:
        assert client.eval("return redis.call('TIME')", 0)[0]
        assert client.register_script("return redis.call('HGET', KEYS[1], 'f')")(keys=["h"]) is None  # EVALSHA
        assert client.hset("h", "f", "v") == 1
        assert client.zadd("z", {"m": 1.0}) == 1
        assert client.lpush("l", "x") == 1
        assert client.set("s", "v", px=1000) and client.pexpire("h", 1000)
        assert client.info("server")["run_id"]
        assert client.time()[0] > 0
        assert client.publish("channel", "hi") == 0
        # settle.lua switches databases inside its script to queue callbacks on the broker's.
        assert client.eval("redis.call('SELECT', 0); return redis.call('LPUSH', KEYS[1], 'm')", 1, "q") == 1
        client.client_setname("fleet-test")
        for forbidden in (client.flushall, lambda: client.config_get("dir"), lambda: client.keys("*"),
                          client.acl_list, lambda: client.execute_command("SHUTDOWN", "NOSAVE")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                forbidden()
    finally:
        client.close()


def test_kombu_works_as_the_fleet_user(acl_redis):
    from kombu import Connection

    port, password = acl_redis
    with Connection(f"redis://{FLEET_USER}:{password}@127.0.0.1:{port}/0") as conn:
        queue = conn.SimpleQueue("deploy-acl")
        queue.put({"n": 1})
        message = queue.get(timeout=5)  # BRPOP, the unacked hash and sorted set
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()


# -- autoscaling --------------------------------------------------------------------------


def test_keda_scales_the_workers_on_the_schedules_backlog():
    """The ScaledObject reads a value the exporter really serves, from the Service it names."""
    from subtitle_tasks.metrics import fleet_stats
    from subtitle_tasks.state import MemoryStore

    [scaled] = _docs(DEPLOY / "k8s" / "keda-scaledobject.yaml")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    workers = [d for d in _docs(DEPLOY / "k8s" / "worker.yaml") if d["kind"] == "Deployment"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == workers[0]["metadata"]["name"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "metrics-api"  # not Celery's queue length, which misses the schedule
    url = trigger["metadata"]["url"]
    service = next(d for d in _docs(DEPLOY / "k8s" / "metrics.yaml") if d["kind"] == "Service")
    port = service["spec"]["ports"][0]["port"]
    assert url == f"http://{service['metadata']['name']}:{port}/stats.json"
    store = MemoryStore()
    store.create_request(request_id="r", generation_id="g", upload_id="u", language_code="en", name=None,
                         environment=None, on_ready=[], on_error=[], ttl=60)
    stats = fleet_stats(store, overdue_after=30)
    assert stats[trigger["metadata"]["valueLocation"]] == 1  # one step due now
    assert int(trigger["metadata"]["targetValue"]) > 0
    assert scaled["spec"]["minReplicaCount"] >= 1
