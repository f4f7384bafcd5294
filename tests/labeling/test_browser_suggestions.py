"""Browser test of pre-annotations: a builder imports a Label Studio export with predictions and
chooses "prefilled"; an annotator sees the model's suggestion under the answers, in the task's own
terms, with the answer form starting from it, and submits by keyboard (Playwright + Debian
Chromium against the real studio)."""

from __future__ import annotations

import json

import pytest

from tests.live import new_page, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def task(n: int, selected: str | None, reason: str | None = None) -> dict:
    """One task of a Label Studio JSON export with no annotation yet, and a model's prediction."""
    result = []
    if selected:
        result.append({"id": f"p{n}", "from_name": "comparison", "to_name": "pairwise", "type": "pairwise",
                       "origin": "prediction", "value": {"selected": selected}})
    if reason:
        result.append({"id": f"r{n}", "from_name": "reason", "to_name": "prompt", "type": "textarea",
                       "origin": "prediction", "value": {"text": [reason]}})
    return {"id": 500 + n, "data": {"prompt": f"Summarise note {n}: the meeting moved to Friday.",
                                    "answer1": f"Note {n}: the meeting was cancelled.",
                                    "answer2": f"Note {n}: the meeting is now on Friday."},
            "meta": {"batch": "b9"}, "annotations": [],
            "predictions": [{"id": 700 + n, "model_version": "rm-deberta-v3", "score": 0.5, "result": result}]
            if result else []}


def test_builder_prefills_predictions_and_annotator_submits_them_by_keyboard(browser, studio_server):  # noqa: ANN001
    builder = studio_server.session("builder", "builder-demo-pass")
    status, project = builder.request("POST", "/api/labeling/projects/", {"name": "predictions in the browser"})
    assert status == 201 and project["pre_annotations"] == "hidden", project
    pid = project["id"]
    export = [task(0, "right", reason="<b>Answer 2</b> keeps the date"), task(1, "right"), task(2, None)]

    page = new_page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    sign_in(page, studio_server, "builder", "builder-demo-pass")
    page.goto(f"{studio_server.url}/labeling/{pid}/manage/")
    page.get_by_label("…or paste lines").fill("\n".join(json.dumps(t) for t in export) + "\n")
    page.get_by_role("button", name="Import").click()
    page.locator("#import-result").get_by_text("Stored 3 prompts").wait_for()
    assert "2 pre-annotations" in page.locator("#import-suggestions").inner_text()
    page.get_by_label("Model suggestions", exact=True).select_option("prefilled")
    page.get_by_role("button", name="Save setting").click()
    page.locator("#settings-status").get_by_text("Saved").wait_for()
    _, stored = builder.request("GET", f"/api/labeling/projects/{pid}/")
    assert stored["pre_annotations"] == "prefilled"
    page.context.close()

    page = new_page(browser)
    page.on("pageerror", lambda e: errors.append(str(e)))
    sign_in(page, studio_server, "annotator", "annotator-demo-pass")
    page.goto(f"{studio_server.url}/labeling/{pid}/")
    panel = page.locator("#suggestions")
    box = page.locator("#task")

    # item 1: the model prefers the right answer (B here: the tool's order is kept) and says why
    page.locator("#task-body").wait_for(state="visible")
    first = box.get_attribute("data-assignment")
    page.wait_for_function(f"document.getElementById('task').dataset.suggestions === '{first}'")
    assert panel.is_visible()
    assert panel.locator(".summary").inner_text() == "Label Studio · rm-deberta-v3 · score 0.5: prefers Answer B"
    assert panel.locator(".badge").inner_text() == "pre-filled"
    comment = panel.locator(".comment")
    assert comment.inner_text() == "Comment: reason: <b>Answer 2</b> keeps the date"  # text, never HTML
    assert panel.locator("b").count() == 0
    assert page.locator("input[name=choice][value=b]").is_checked()
    assert "starts from the marked suggestion" in page.locator("#suggestions-note").inner_text()
    page.keyboard.press("Enter")  # the annotator accepts it: still their own submission
    page.wait_for_function(f"document.getElementById('task').dataset.assignment !== '{first}'"
                           " && !document.getElementById('task-body').hidden")

    # item 2: pre-filled B, the annotator disagrees with 1 (A) and submits
    second = box.get_attribute("data-assignment")
    page.wait_for_function(f"document.getElementById('task').dataset.suggestions === '{second}'")
    assert page.locator("input[name=choice][value=b]").is_checked()
    page.keyboard.press("1")
    assert page.locator("input[name=choice][value=a]").is_checked()
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.getElementById('task').dataset.assignment !== '{second}'"
                           " && !document.getElementById('task-body').hidden")

    # item 3 has no prediction: no panel, nothing chosen
    third = box.get_attribute("data-assignment")
    page.wait_for_function(f"document.getElementById('task').dataset.suggestions === '{third}'")
    assert not panel.is_visible()
    assert page.locator("input[name=choice]:checked").count() == 0
    page.keyboard.press("Enter")  # nothing is chosen: the page asks, nothing is sent
    assert "Choose A (1)" in page.locator("#answer-error").inner_text()

    session = studio_server.session("annotator", "annotator-demo-pass")
    _, mine = session.request("GET", f"/api/labeling/judgements/?project={pid}")
    assert mine["count"] == 2
    assert [j["choice"] for j in reversed(mine["results"])] == ["b", "a"]
    # the prediction was never a vote
    status, snap = builder.request("POST", "/api/labeling/snapshots/", {"project": pid})
    assert status == 201 and snap["counts"]["judgements"] == 2
    page.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
