"""Helpers for tests against a live studio: create annotators and a project, and sign the
annotators in (sessions or API tokens), through manage.py."""

from __future__ import annotations

import json
import subprocess
from typing import Any

SETUP = r'''
import json
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from labeling import actions
spec = json.loads(SPEC)
User = get_user_model()
group, _ = Group.objects.get_or_create(name="annotator")
for name in spec["annotators"]:
    u, created = User.objects.get_or_create(username=name)
    if created:
        u.set_password(spec["password"]); u.save()
    u.groups.add(group)
builder = User.objects.get(username="builder")
project = actions.create_project(builder, **spec["project"])
lines = []
for i in range(spec["items"]):
    lines.append(json.dumps({"id": f"q{i}", "prompt": f"Question {i}?", "responses": [
        {"text": f"Answer one to {i}", "model": "m-one"}, {"text": f"Answer two to {i}, longer", "model": "m-two"}]}))
actions.import_jsonl(project, builder, "\n".join(lines), seed=0)
print(json.dumps({"project": project.pk}))
'''

CHECK = r'''
import json
from django.db.models import Count
from labeling.models import Judgement, Item, Assignment
pid = PID
per_item = list(Item.objects.filter(project_id=pid).annotate(n=Count("judgements")).values_list("n", flat=True))
pairs = Judgement.objects.filter(project_id=pid).values("item", "annotator").annotate(n=Count("id")).filter(n__gt=1).count()
tokens = Judgement.objects.filter(project_id=pid).exclude(client_token=None).values("client_token").distinct().count()
print(json.dumps({"per_item": per_item, "judgements": Judgement.objects.filter(project_id=pid).count(),
                  "duplicate_pairs": pairs, "tokens": tokens,
                  "by_annotator": {str(k): v for k, v in Judgement.objects.filter(project_id=pid).values_list("annotator__username").annotate(n=Count("id"))}}))
'''

SESSIONS = r'''
import json
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
keys = {}
for user in get_user_model().objects.filter(username__in=json.loads(NAMES)):
    session = SessionStore()  # what signing in stores (django.contrib.auth.login)
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    keys[user.username] = session.session_key
print(json.dumps(keys))
'''

TOKENS = r'''
import json
from django.contrib.auth import get_user_model
from studio.actions import do_create_api_token
keys = {}
for user in get_user_model().objects.filter(username__in=json.loads(NAMES)):
    _, keys[user.username] = do_create_api_token(user, "live")  # what the Account page's API does
print(json.dumps(keys))
'''


def _shell(server: Any, code: str) -> str:
    try:
        return server.manage("shell", "-c", code).stdout.strip().splitlines()[-1]
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"manage.py shell failed:\n{e.stderr[-3000:]}") from None


def setup_project(server: Any, *, annotators: list[str], password: str, items: int, **project: Any) -> int:
    spec = {"annotators": annotators, "password": password, "items": items, "project": project}
    code = SETUP.replace("SPEC", repr(json.dumps(spec)))
    return json.loads(_shell(server, code))["project"]


def check_project(server: Any, project_id: int) -> dict[str, Any]:
    return json.loads(_shell(server, CHECK.replace("PID", str(project_id))))


def signed_in_sessions(server: Any, usernames: list[str]) -> dict[str, str]:
    """Session keys for these users, stored as signing in stores them (no password hashing, and no
    login form: works with production settings, whose cookies are HTTPS-only)."""
    return json.loads(_shell(server, SESSIONS.replace("NAMES", repr(json.dumps(usernames)))))


def api_tokens(server: Any, usernames: list[str]) -> dict[str, str]:
    """A new API token key for each of these users, made as the studio's token API makes them."""
    return json.loads(_shell(server, TOKENS.replace("NAMES", repr(json.dumps(usernames)))))
