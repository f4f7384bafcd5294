"""Settings come from the environment; bad values stop start-up with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REAL_SECRET = "k" * 30 + "-real-secret-for-deploy-check-" + "z" * 20


def manage(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "DJANGO_SETTINGS_MODULE"}}
    full = {**base, "STUDIO_DATA_DIR": str(tmp_path), **env}
    return subprocess.run([sys.executable, str(REPO / "manage.py"), *args], env=full, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_production_refuses_the_development_secret_key(tmp_path):  # noqa: ANN001
    proc = manage("check", env={"DEBUG": "0", "ALLOWED_HOSTS": "studio.example.org"}, tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "SECRET_KEY" in proc.stderr and "Example: SECRET_KEY=" in proc.stderr


@pytest.mark.parametrize("name,value", [
    ("DEBUG", "maybe"),
    ("DATABASE_URL", "mysql://u@h/db"),
    ("DATABASE_URL", "not a url"),
    ("REDIS_URL", "http://127.0.0.1:6379"),
    ("HUEY_WORKERS", "zero"),
])
def test_invalid_setting_names_the_variable_and_an_example(tmp_path, name, value):  # noqa: ANN001
    proc = manage("check", env={name: value}, tmp_path=tmp_path)
    assert proc.returncode != 0
    assert f"{name}:" in proc.stderr and f"Example: {name}=" in proc.stderr


def test_secrets_are_masked_in_errors(tmp_path):  # noqa: ANN001
    proc = manage("check", env={"DATABASE_URL": "mysql://user:hunter2@db.example.org/x"}, tmp_path=tmp_path)
    assert proc.returncode != 0 and "hunter2" not in proc.stderr and "***" in proc.stderr


def test_check_deploy_passes_with_real_settings(tmp_path):  # noqa: ANN001
    env = {"DEBUG": "0", "SECRET_KEY": REAL_SECRET, "ALLOWED_HOSTS": "studio.example.org",
           "DATABASE_URL": "postgres://studio:pw@127.0.0.1:5432/studio", "REDIS_URL": "redis://127.0.0.1:6379/0"}
    proc = manage("check", "--deploy", env=env, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    output = proc.stderr + proc.stdout
    # only the HSTS-preload advice remains: preloading is a commitment the operator opts into
    assert "studio.W" not in output and "drf_spectacular" not in output
    assert "security.W004" not in output and "security.W008" not in output and "security.W009" not in output


def test_unreachable_database_is_reported_with_its_address(tmp_path):  # noqa: ANN001
    env = {"DATABASE_URL": "postgres://studio:topsecret@127.0.0.1:1/studio"}
    proc = manage("runstudio", "--port", "8999", env=env, tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "127.0.0.1:1" in proc.stderr and "topsecret" not in proc.stderr and "***" in proc.stderr


def test_unreachable_redis_is_reported_with_its_address(tmp_path):  # noqa: ANN001
    assert manage("migrate", "-v0", env={}, tmp_path=tmp_path).returncode == 0
    env = {"REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"}
    proc = manage("runstudio", "--port", "8999", env=env, tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "127.0.0.1:1" in proc.stderr and "s3cret" not in proc.stderr


def test_demo_accounts_only_in_debug(tmp_path):  # noqa: ANN001
    env = {"DEBUG": "0", "SECRET_KEY": REAL_SECRET, "ALLOWED_HOSTS": "studio.example.org"}
    assert manage("migrate", "-v0", env=env, tmp_path=tmp_path).returncode == 0
    proc = manage("setup_demo", env=env, tmp_path=tmp_path)
    assert proc.returncode != 0 and "DEBUG" in proc.stderr
    proc = manage("setup_demo", env={}, tmp_path=tmp_path)
    assert proc.returncode == 0 and "annotator-demo-pass" in proc.stdout
