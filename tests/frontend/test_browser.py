"""Browser tests: Playwright driving the system Chromium against the real studio process."""

from __future__ import annotations

import re

import pytest

from tests.live import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_sign_in_dashboard_and_navigation(page, studio_server):  # noqa: ANN001
    sign_in(page, studio_server, "builder", "builder-demo-pass")
    assert page.get_by_role("heading", name="Dashboard").is_visible()
    nav = page.get_by_role("navigation", name="Lifecycle")
    labels = [t.strip() for t in nav.get_by_role("link").all_inner_texts()]
    assert labels == ["Dashboard", "Data", "Tokenizers", "Pretraining", "Fine-tuning", "Labeling", "Evaluation",
                      "Optimization", "Deploy", "Reports"]
    for label in labels[1:]:
        nav.get_by_role("link", name=label, exact=True).click()
        page.wait_for_load_state()
        assert page.get_by_role("heading", level=1).inner_text() == label
        assert nav.get_by_role("link", name=label, exact=True).get_attribute("aria-current") == "page"
    nav.get_by_role("link", name="Dashboard").click()
    assert page.locator("[data-count=users]").inner_text() == "3"


def test_live_activity_from_the_queue(page, studio_server):  # noqa: ANN001
    sign_in(page, studio_server, "builder", "builder-demo-pass")
    status = page.locator("#live-status")
    status.filter(has_text="live").wait_for()
    page.get_by_role("button", name="Run queue self-test").click()
    page.locator("#activity li[data-kind='selftest.completed']").first.wait_for(timeout=60_000)
    assert page.locator("#activity li[data-kind='selftest.requested']").count() >= 1


def test_keyboard_can_reach_the_navigation(page, studio_server):  # noqa: ANN001
    sign_in(page, studio_server, "annotator", "annotator-demo-pass")
    page.keyboard.press("Tab")  # skip link first
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    labels = page.get_by_role("navigation", name="Lifecycle").get_by_role("link").all_inner_texts()
    assert [t.strip() for t in labels] == ["Dashboard", "Labeling"]
    page.goto(studio_server.url + "/pretraining/")
    assert re.search("Not allowed", page.content())


def test_api_token_created_in_the_browser_is_shown_once(page, studio_server):  # noqa: ANN001
    sign_in(page, studio_server, "moderator", "moderator-demo-pass")
    page.goto(studio_server.url + "/account/")
    page.get_by_label("Token name").fill("my script")
    page.get_by_role("button", name="Create token").click()
    page.locator("#token-created").wait_for(state="visible")
    key = page.locator("#token-key").inner_text()
    assert key.startswith("lls_")
    page.reload()
    assert key not in page.content() and "my script" in page.content()
