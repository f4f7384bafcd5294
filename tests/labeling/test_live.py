"""Against the real studio process: many annotators at once, and the live dashboard websocket."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import websockets

from tests.labeling.live_helpers import check_project, setup_project
from tests.live import websocket_outcome

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLIENTS = 24
OVERLAP = 3
ITEMS = 40
PASSWORD = "live-annotator-pass-1"
# several web worker processes behind the one port, whatever the machine's core count
WORKERS = {"STUDIO_WEB_WORKERS": "3"}


@pytest.fixture(scope="module")
def studio_server(tmp_path_factory):  # noqa: ANN001, ANN201
    """The real studio with three web worker processes, its own SQLite and queue."""
    from tests.live import StudioServer

    server = StudioServer(tmp_path_factory.mktemp("studio"), env=WORKERS).start()
    yield server
    code = server.stop()
    assert code == 0, f"the studio did not stop cleanly (exit {code}):\n{server.logs()[-4000:]}"


def test_parallel_annotators_exact_overlap(studio_server):  # noqa: ANN001
    assert "3 web workers" in studio_server.logs()
    run_parallel_annotators(studio_server)


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory):  # noqa: ANN001, ANN201
    """A live studio on a throwaway PostgreSQL database (127.0.0.1:5432, user root)."""
    from tests.live import StudioServer, throwaway_postgres

    with throwaway_postgres("labtest") as url:
        server = StudioServer(tmp_path_factory.mktemp("studio-pg"), env={"DATABASE_URL": url, **WORKERS}).start()
        yield server
        server.stop()


@pytest.mark.services
def test_parallel_annotators_exact_overlap_postgres(postgres_server):  # noqa: ANN001
    assert "3 web workers" in postgres_server.logs()
    run_parallel_annotators(postgres_server)


def run_parallel_annotators(studio_server) -> None:  # noqa: ANN001
    names = [f"live{i}" for i in range(CLIENTS)]
    pid = setup_project(studio_server, annotators=names, password=PASSWORD, items=ITEMS,
                        name="live overlap", overlap=OVERLAP, lock_ttl_seconds=300)
    sessions = [studio_server.session(n, PASSWORD) for n in names]
    start = threading.Barrier(CLIENTS)
    lock = threading.Lock()
    accepted: dict[str, list[int]] = {}
    problems: list[str] = []

    def work(i: int) -> None:
        s, rng = sessions[i], random.Random(i)
        mine: list[int] = []
        start.wait()
        while True:
            status, a = s.request("POST", f"/api/labeling/projects/{pid}/next/")
            if status != 200:
                problems.append(f"next {status} {a}")
                return
            if a["assignment"] is None:
                if a["reason"] == "all_locked":  # others hold the last slots and may skip them
                    time.sleep(0.05)
                    continue
                if a["reason"] != "no_items":
                    problems.append(f"unexpected reason {a}")
                break
            if rng.random() < 0.1:  # some give the item back
                status, _ = s.request("POST", f"/api/labeling/assignments/{a['assignment']}/skip/")
                if status != 200:
                    problems.append(f"skip {status}")
                continue
            token = str(uuid.uuid4())
            body = {"assignment": a["assignment"], "choice": rng.choice(["a", "b", "tie"]), "client_token": token,
                    "time_on_task_ms": rng.randint(2000, 9000)}
            status, j = s.request("POST", "/api/labeling/judgements/", body)
            if status != 201:
                problems.append(f"submit {status} {j}")
                continue
            mine.append(j["id"])
            if rng.random() < 0.2:  # a retry after a lost response: recorded once
                status, again = s.request("POST", "/api/labeling/judgements/", body)
                if status != 200 or again["id"] != j["id"]:
                    problems.append(f"retry {status} {again}")
        with lock:
            accepted[names[i]] = mine

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(work, range(CLIENTS)))
    server_messages = "\n".join(line for line in studio_server.logs().splitlines() if '" 20' not in line)
    assert not problems, f"{problems[:5]}\n{server_messages[-4000:]}"
    ids = [j for v in accepted.values() for j in v]
    assert len(ids) == len(set(ids))
    state = check_project(studio_server, pid)
    # every item got exactly OVERLAP judgements: skipped slots were taken by others
    assert state["per_item"] == [OVERLAP] * ITEMS
    assert state["judgements"] == len(ids) == ITEMS * OVERLAP
    assert state["duplicate_pairs"] == 0 and state["tokens"] == len(ids)
    assert state["by_annotator"] == {k: len(v) for k, v in accepted.items() if v}


def test_dashboard_websocket_receives_judgements(studio_server):  # noqa: ANN001
    pid = setup_project(studio_server, annotators=["wsann"], password=PASSWORD, items=2, name="live ws")
    builder = studio_server.session("builder", "builder-demo-pass")
    annotator = studio_server.session("wsann", PASSWORD)
    url = studio_server.url.replace("http", "ws") + f"/ws/labeling/projects/{pid}/"
    headers = {"Cookie": builder.cookie_header(), "Origin": studio_server.url}

    def label() -> int:
        _, a = annotator.request("POST", f"/api/labeling/projects/{pid}/next/")
        status, j = annotator.request("POST", "/api/labeling/judgements/", {"assignment": a["assignment"], "choice": "a"})
        assert status == 201, j
        return j["id"]

    async def run() -> tuple[int, dict]:
        async with websockets.connect(url + "?after=0", additional_headers=headers, open_timeout=20) as ws:
            jid = await asyncio.to_thread(label)
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
                if msg.get("kind") == "labeling.judgement":
                    return jid, msg

    jid, msg = asyncio.run(run())
    assert msg["payload"]["judgement"] == jid and msg["payload"]["project"] == pid
    # annotators do not get the builders' dashboard stream
    ann_headers = {"Cookie": annotator.cookie_header(), "Origin": studio_server.url}

    assert asyncio.run(websocket_outcome(url, ann_headers)) in ("rejected 403", "closed 4403")
