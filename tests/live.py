"""A real studio process for end-to-end and browser tests: ``manage.py runstudio`` (web server,
websockets and Huey consumer) on a free port, with its own data folder."""

from __future__ import annotations

import http.cookiejar
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLEARED = {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "DJANGO_SETTINGS_MODULE",
           "HUEY_IMMEDIATE", "HUEY_NAME"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def services_required() -> bool:
    """In CI (STUDIO_TEST_SERVICES=1) a missing service or browser fails the run instead of skipping."""
    return os.environ.get("STUDIO_TEST_SERVICES") == "1"


@contextmanager
def throwaway_postgres(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on 127.0.0.1:5432 (user root) for the block: its URL; dropped
    afterwards. Without PostgreSQL the test skips, or fails in CI (:func:`services_required`)."""
    import pytest

    name = f"{prefix}_{os.getpid()}"
    made = shutil.which("createdb") and subprocess.run(
        ["createdb", "-h", "127.0.0.1", "-U", "root", name], capture_output=True).returncode == 0
    if not made:
        if services_required():
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is needed (user root)")
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    try:
        yield f"postgres://root@127.0.0.1:5432/{name}"
    finally:
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "root", "--if-exists", name], capture_output=True)


class StudioServer:
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, worker: bool = True) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**{k: v for k, v in os.environ.items() if k not in CLEARED},
                    "STUDIO_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.worker = worker
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir / "studio.log"

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "manage.py"), *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=300, check=True)

    def start(self) -> "StudioServer":
        self.manage("migrate", "-v0")
        self.manage("setup_demo", "--quiet")
        log = self.log_path.open("w")
        cmd = [sys.executable, str(REPO / "manage.py"), "runstudio", "--port", str(self.port)]
        if not self.worker:
            cmd.append("--no-worker")
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"studio exited early:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"studio did not answer /healthz in time:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def session(self, username: str, password: str) -> "Session":
        return Session(self.url, username, password)


class Session:
    """A signed-in HTTP session (cookies + CSRF) against a live studio, using only the stdlib."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.opener.open(base + "/accounts/login/", timeout=10).read()
        data = urllib.parse.urlencode({"username": username, "password": password,
                                       "csrfmiddlewaretoken": self.cookie("csrftoken")}).encode()
        req = urllib.request.Request(base + "/accounts/login/", data=data, headers={"Referer": base + "/"})
        self.opener.open(req, timeout=10).read()
        if not self.cookie("sessionid"):
            raise RuntimeError(f"could not sign in as {username}")

    def cookie(self, name: str) -> str:
        return next((c.value for c in self.jar if c.name == name), "")

    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(
            self.base + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json",
                     "X-CSRFToken": self.cookie("csrftoken"), "Referer": self.base + "/"})
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


async def websocket_outcome(url: str, headers: dict[str, str]) -> str:
    """Try a websocket and say what happened: "open", "closed <code>" or "rejected <HTTP status>"."""
    import asyncio

    import websockets

    try:
        async with websockets.connect(url, additional_headers=headers, open_timeout=10) as ws:
            await asyncio.wait_for(ws.recv(), timeout=5)
            return "open"
    except websockets.exceptions.ConnectionClosed as e:
        return f"closed {e.rcvd.code if e.rcvd else ''}"
    except websockets.exceptions.InvalidStatus as e:
        return f"rejected {e.response.status_code}"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# --- browser helpers (Playwright driving Debian's Chromium; never a downloaded browser) -------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def new_page(browser, timeout_ms: int = 30_000):  # noqa: ANN001, ANN201
    """A page in a fresh browser context (its own cookies)."""
    page = browser.new_context().new_page()
    page.set_default_timeout(timeout_ms)
    return page


def sign_in(page, server: StudioServer, username: str, password: str) -> None:  # noqa: ANN001
    """Sign in through the login form and land on the dashboard."""
    page.goto(server.url + "/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(server.url + "/")
