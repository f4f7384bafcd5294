"""Fixtures for the labeling tests: a pairwise project with imported items."""

from __future__ import annotations

import json

import pytest


def pair_lines(n: int, models: tuple[str, str] = ("alpha", "beta")) -> str:
    rows = []
    for i in range(n):
        rows.append({"id": f"p{i}", "prompt": f"Question {i}: what is {i} + {i}?",
                     "responses": [{"text": f"It is {2 * i}." + " Indeed." * (i % 3), "model": models[0]},
                                   {"text": f"Maybe {2 * i + 1}?", "model": models[1]}]})
    return "\n".join(json.dumps(r) for r in rows) + "\n"


@pytest.fixture
def pair_lines_fn():  # noqa: ANN201
    return pair_lines


@pytest.fixture
def make_project(builder):  # noqa: ANN001, ANN201
    from labeling import actions

    def make(n_items: int = 4, **fields):  # noqa: ANN003, ANN202
        fields.setdefault("name", f"project-{n_items}-{len(fields)}-{fields.get('overlap', 1)}")
        project = actions.create_project(builder, **fields)
        if n_items:
            actions.import_jsonl(project, builder, pair_lines(n_items), seed=0)
        return project

    return make
