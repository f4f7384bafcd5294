"""Helpers for tests against a live studio: create annotators and a project through manage.py."""

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
