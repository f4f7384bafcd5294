"""The scaled-out backends: PostgreSQL, Huey on Redis, channels_redis.

With ``STUDIO_TEST_SERVICES=1`` (set by .ci/run) an unreachable service fails the run; without it
these tests are skipped with the reason."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest
import websockets

from tests.live import REPO, StudioServer, services_required

pytestmark = [pytest.mark.services, pytest.mark.slow]

PG_ADMIN_URL = os.environ.get("STUDIO_TEST_POSTGRES", "postgres://root@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("STUDIO_TEST_REDIS", "redis://127.0.0.1:6379/15")


def unavailable(what: str, error: Exception) -> None:
    message = f"{what} is unreachable: {error}"
    if services_required():
        pytest.fail(message + " (STUDIO_TEST_SERVICES=1: services are mandatory)")
    pytest.skip(message + " (set STUDIO_TEST_SERVICES=1 to make this a failure)")


@pytest.fixture
def pg_url():  # noqa: ANN201
    import psycopg

    name = f"studio_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except Exception as e:  # noqa: BLE001
        unavailable(f"PostgreSQL at {PG_ADMIN_URL}", e)
    admin.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def redis_url():  # noqa: ANN201
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
    except Exception as e:  # noqa: BLE001
        unavailable(f"Redis at {REDIS_URL}", e)
    return REDIS_URL


def manage(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    from tests.live import CLEARED

    full = {**{k: v for k, v in os.environ.items() if k not in CLEARED}, **env}
    return subprocess.run([sys.executable, str(REPO / "manage.py"), *args], env=full, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_migrations_run_on_postgresql(pg_url, tmp_path):  # noqa: ANN001
    env = {"DATABASE_URL": pg_url, "STUDIO_DATA_DIR": str(tmp_path)}
    proc = manage(env, "migrate", "-v1")
    assert proc.returncode == 0, proc.stderr
    assert "Applying studio.0002_roles... OK" in proc.stdout
    proc = manage(env, "shell", "--no-imports", "-c", "from django.db import connection; from django.contrib.auth.models import Group;"
                  "print(connection.vendor, sorted(Group.objects.values_list('name', flat=True)))")
    assert proc.stdout.strip() == "postgresql ['annotator', 'builder', 'moderator']", proc.stderr


def test_huey_task_round_trips_through_redis(redis_url, tmp_path):  # noqa: ANN001
    env = {"REDIS_URL": redis_url, "HUEY_NAME": f"studio-test-{uuid.uuid4().hex[:8]}",
           "STUDIO_DATA_DIR": str(tmp_path)}
    assert manage(env, "migrate", "-v0").returncode == 0
    from tests.live import CLEARED

    worker = subprocess.Popen([sys.executable, str(REPO / "manage.py"), "run_huey", "--workers", "1"],
                              env={**{k: v for k, v in os.environ.items() if k not in CLEARED}, **env}, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        proc = manage(env, "shell", "--no-imports", "-c",
                      "import json; from studio.tasks import selftest_task; from huey.contrib.djhuey import HUEY;"
                      "r = selftest_task(41);"
                      "print(json.dumps({'backend': type(HUEY).__name__, **r.get(blocking=True, timeout=60)}))",
                      timeout=120)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["backend"] == "RedisHuey"
        assert result["request_id"] == 41 and str(result["worker_pid"]) == str(worker.pid)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_channels_redis_group_message_arrives(redis_url):  # noqa: ANN001
    from channels_redis.core import RedisChannelLayer

    async def roundtrip() -> dict:
        sender = RedisChannelLayer(hosts=[redis_url], prefix=f"t{uuid.uuid4().hex[:6]}")
        receiver = RedisChannelLayer(hosts=[redis_url], prefix=sender.prefix)
        channel = await receiver.new_channel()
        await receiver.group_add("events.studio", channel)
        await sender.group_send("events.studio", {"type": "studio.event", "event": {"id": 1, "kind": "x"}})
        message = await asyncio.wait_for(receiver.receive(channel), timeout=10)
        await receiver.flush()
        return message

    assert asyncio.run(roundtrip())["event"]["kind"] == "x"


def test_whole_studio_on_postgresql_and_redis(pg_url, redis_url, tmp_path):  # noqa: ANN001
    server = StudioServer(tmp_path, env={"DATABASE_URL": pg_url, "REDIS_URL": redis_url,
                                         "HUEY_NAME": f"studio-e2e-{uuid.uuid4().hex[:8]}"}).start()
    try:
        with __import__("urllib.request").request.urlopen(server.url + "/healthz", timeout=10) as resp:
            health = json.loads(resp.read())
        assert health["database"]["vendor"] == "postgresql" and health["queue"]["backend"] == "RedisHuey"
        assert health["channel_layer"]["backend"] == "RedisChannelLayer"
        session = server.session("builder", "builder-demo-pass")

        async def follow() -> dict:
            headers = {"Cookie": session.cookie_header(), "Origin": server.url}
            async with websockets.connect(server.url.replace("http", "ws") + "/ws/events/",
                                          additional_headers=headers, open_timeout=20) as ws:
                status, body = await asyncio.to_thread(session.request, "POST", "/api/system/selftest/")
                assert status == 202, body
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
                    if message["kind"] == "selftest.completed":
                        return message

        assert asyncio.run(follow())["payload"]["worker_pid"] != server.proc.pid
    finally:
        assert server.stop() == 0, server.logs()[-3000:]
