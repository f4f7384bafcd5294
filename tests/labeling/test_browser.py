"""Browser tests of the labeling pages (Playwright + Debian Chromium against the real studio)."""

from __future__ import annotations

import pytest

from tests.labeling.live_helpers import setup_project
from tests.live import new_page, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_annotator_labels_five_pairs_by_keyboard_and_moderator_resolves_a_report(browser, studio_server):  # noqa: ANN001
    pid = setup_project(studio_server, annotators=[], password="unused-pass-1", items=8, name="browser pairs",
                        guidelines="# Guidelines\nPrefer **correct** answers.")
    page = new_page(browser)
    sign_in(page, studio_server, "annotator", "annotator-demo-pass")
    page.goto(f"{studio_server.url}/labeling/{pid}/")
    assert page.get_by_role("heading", name="Guidelines v1").is_visible()
    assert page.get_by_role("heading", level=1).count() == 1  # guideline headings are shifted down
    assert page.locator(".guidelines strong").inner_text() == "correct"
    task = page.locator("#task")
    seen = set()
    for n in range(5):
        page.locator("#task-body").wait_for(state="visible")
        assignment = task.get_attribute("data-assignment")
        assert assignment not in seen
        seen.add(assignment)
        page.keyboard.press("1" if n % 2 == 0 else "2")
        expected = "a" if n % 2 == 0 else "b"
        assert page.locator(f"input[name=choice][value={expected}]").is_checked()
        page.keyboard.press("Enter")
        page.wait_for_function(f"document.getElementById('task').dataset.assignment !== '{assignment}'"
                               " && !document.getElementById('task-body').hidden")
    assert page.locator("#judged-count").inner_text() == "5"
    assert page.locator("#recent tr").count() == 5
    # ? opens the help, Escape closes it
    page.keyboard.press("?")
    assert page.locator("#help").is_visible()
    page.keyboard.press("Escape")
    assert not page.locator("#help").is_visible()

    session = studio_server.session("annotator", "annotator-demo-pass")
    _, mine = session.request("GET", f"/api/labeling/judgements/?project={pid}")
    assert mine["count"] == 5
    assert [j["choice"] for j in reversed(mine["results"])] == ["a", "b", "a", "b", "a"]
    assert all(j["time_on_task_ms"] is not None and j["time_on_task_ms"] >= 0 for j in mine["results"])

    # S skips the current item
    before = task.get_attribute("data-assignment")
    page.keyboard.press("s")
    page.wait_for_function(f"document.getElementById('task').dataset.assignment !== '{before}'")

    # the annotator reports answer B of the current item
    page.get_by_role("button", name="Report this answer").click()
    page.get_by_label("Answer", exact=True).select_option(label="Answer B")
    page.get_by_label("Category").select_option("bias")
    page.get_by_label("Kind of bias (for bias)").select_option("nationality")
    page.get_by_label("What is wrong?").fill("Stereotypes people by nationality.")
    page.get_by_role("button", name="Send report").click()
    page.get_by_text("sent to the moderators").wait_for()

    mod = new_page(browser)
    sign_in(mod, studio_server, "moderator", "moderator-demo-pass")
    mod.get_by_role("navigation", name="Lifecycle").get_by_role("link", name="Reports").click()
    card = mod.locator("article.report").first
    assert "Nationality" in card.inner_text()
    card.get_by_label("Corrected answer (optional; becomes training data)").fill("A fair, factual answer.")
    card.get_by_role("button", name="Resolve").click()
    mod.wait_for_load_state()
    mod.get_by_role("link", name="Resolved (1)").click()
    assert "A fair, factual answer." in mod.locator("article.report").first.inner_text()

    builder = studio_server.session("builder", "builder-demo-pass")
    status, snap = builder.request("POST", "/api/labeling/snapshots/", {"project": pid})
    assert status == 201 and snap["counts"] == {"items": 5, "judgements": 5, "reports": 1}
    _, recs = builder.request("GET", f"/api/labeling/snapshots/{snap['id']}/export/?kind=preference&file=json")
    corrected = [r for r in recs["records"] if r["id"].startswith("report-")]
    assert len(corrected) == 1 and corrected[0]["chosen"] == "A fair, factual answer."
    assert corrected[0]["category"] == "bias" and corrected[0]["rejected"].startswith("Answer")


def test_builder_creates_a_project_and_imports(browser, studio_server):  # noqa: ANN001
    page = new_page(browser)
    sign_in(page, studio_server, "builder", "builder-demo-pass")
    page.goto(studio_server.url + "/labeling/")
    page.get_by_label("Name", exact=True).fill("From the browser")
    page.get_by_label("Annotators per item (overlap)").fill("2")
    page.get_by_role("button", name="Create project").click()
    page.wait_for_url("**/manage/")
    page.get_by_label("…or paste lines").fill('{"prompt": "Hi", "responses": ["a", "b"]}\n{broken\n')
    page.get_by_role("button", name="Import").click()
    page.locator("#import-result li").filter(has_text="line 2:").wait_for()
    assert "nothing was stored" in page.locator("#import-result").inner_text()
    page.get_by_label("When a line is bad").select_option("skip")
    page.get_by_role("button", name="Import").click()
    page.locator("#import-result").get_by_text("Stored 1 prompts").wait_for()
    page.locator("[data-count=items]").filter(has_text="1").wait_for()
    page.get_by_role("button", name="Create snapshot").click()
    page.wait_for_load_state()
    page.locator("#snapshots").get_by_text("v1").wait_for()
    assert page.locator("#live-status").inner_text() in ("live", "connecting…", "reconnecting…")


def test_the_annotator_page_extends_the_lock_while_the_annotator_works(browser, studio_server):  # noqa: ANN001
    pid = setup_project(studio_server, annotators=[], password="unused-pass-1", items=2, name="browser heartbeat",
                        lock_ttl_seconds=15)  # a beat every 5 s
    page = new_page(browser)
    sign_in(page, studio_server, "annotator", "annotator-demo-pass")
    page.goto(f"{studio_server.url}/labeling/{pid}/")
    page.locator("#task-body").wait_for(state="visible")
    assignment = page.locator("#task").get_attribute("data-assignment")
    session = studio_server.session("annotator", "annotator-demo-pass")
    page.keyboard.press("1")  # working on the item: the next beat extends the lock
    page.wait_for_function("document.getElementById('task').dataset.lockExtended", timeout=60_000)
    extended = page.locator("#task").get_attribute("data-lock-extended")
    # the server holds the extended lock: the same item comes back, with the new expiry
    _, current = session.request("POST", f"/api/labeling/projects/{pid}/next/")
    assert str(current["assignment"]) == assignment and current["expires_at"] == extended
