"""Browser test of the data studio (Playwright on Debian's Chromium) against the real studio with
its Huey worker: import a built-in corpus, curate it with the default recipe, watch live progress
arrive over the websocket, read the audit and the datasheet and download it as Markdown."""

from __future__ import annotations

import re

import pytest

from tests.live import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_import_curate_watch_progress_and_read_the_datasheet(page, studio_server):  # noqa: ANN001
    server = studio_server
    sign_in(page, server, "builder", "builder-demo-pass")
    page.goto(server.url + "/data/")
    # import Jane Austen's novels (fetched into the cache once)
    page.get_by_label("Corpus", exact=True).select_option("austen")
    page.get_by_role("button", name="Import corpus").click()
    row = page.locator("#sources-table tbody tr[data-source-id]").filter(has_text="austen")
    row.wait_for(timeout=120_000)
    assert "books" in row.inner_text() and "Built-in corpus" in row.inner_text()
    # importing it again is refused with the reason, next to the form
    page.get_by_label("Corpus", exact=True).select_option("austen")
    page.get_by_role("button", name="Import corpus").click()
    page.locator("#corpus-form p.error, #corpus-form .field-error").filter(has_text="already imported").first.wait_for()
    # curate it with the default recipe
    page.locator("#curation-form").get_by_label(re.compile(r"austen \(\d+ documents\)")).check()
    page.get_by_label("Recipe", exact=True).select_option("default")
    page.get_by_label("Run name").fill("austen curated")
    page.get_by_label("Documents per shard").fill("20")
    page.get_by_label("Worker processes").fill("2")
    page.get_by_role("button", name="Start curation").click()
    page.wait_for_url(re.compile(r".*/data/runs/\d+/$"))
    page.locator("#live-status").filter(has_text="live").wait_for()
    # progress events arrive live over the websocket: documents, docs/s, ETA, per-step counts
    page.wait_for_function("() => Number(document.getElementById('curation').dataset.liveEvents || 0) >= 1",
                           timeout=300_000)
    assert int(page.locator("#curation").get_attribute("data-progress-docs") or 0) > 0
    assert re.search(r"ETA|done", page.locator("#eta").inner_text())
    page.locator("#run-status").filter(has_text="succeeded").wait_for(timeout=600_000)
    # the audit: per-step statistics and examples by rule
    page.locator("#audit").wait_for(timeout=30_000)
    assert page.locator("#audit-table tbody tr").count() == 10
    assert "near_dedup" in page.locator("#audit-table").inner_text()
    assert page.locator("#examples details").count() > 0
    # every kept document, page by page
    page.get_by_label("Browse").select_option("kept")
    page.get_by_role("button", name="Show").click()
    page.wait_for_function("() => Number(document.getElementById('trail').dataset.rows || 0) == 25")
    page.get_by_role("button", name="More").click()
    page.wait_for_function("() => Number(document.getElementById('trail').dataset.rows || 0) == 50")
    # the datasheet, rendered and downloadable
    page.get_by_role("link", name="Datasheet").click()
    page.locator("#datasheet h1").filter(has_text="Datasheet").wait_for()
    assert "Preprocessing" in page.locator("#datasheet").inner_text()
    with page.expect_download() as info:
        page.get_by_role("link", name="Download Markdown").click()
    text = open(info.value.path(), encoding="utf-8").read()
    assert text.startswith("# Datasheet") and "austen" in text


def test_recipe_editor_preview_and_lsh_calculator(page, studio_server):  # noqa: ANN001
    server = studio_server
    status, body = server.session("builder", "builder-demo-pass").request(
        "POST", "/api/datastudio/sources/", {"kind": "corpus", "corpus": "austen"})
    assert status in (201, 409), body  # 409: imported by the test above
    sign_in(page, server, "builder", "builder-demo-pass")
    page.goto(server.url + "/data/recipes/")
    # the S-curve for the default 14 × 8, then a suggestion for 128 hash functions
    page.wait_for_function("() => Number(document.getElementById('chart-lsh').dataset.points || 0) == 101")
    assert "P(candidate) at 0.8: 0.923548" in page.locator("#lsh-summary").inner_text()
    page.get_by_label("Suggest for hash functions").fill("128")
    page.get_by_role("button", name="Plot").click()
    page.locator("#lsh-summary").filter(has_text="suggested for 128 hash functions").wait_for()
    # a recipe error names the step and setting
    page.get_by_label("Steps (JSON)").fill('[{"step": "length", "config": {"min_chars": -5}}]')
    page.get_by_role("button", name="Validate").click()
    page.locator("#recipe-form #form-error").filter(has_text="recipe.length.").wait_for()
    # preview a Gopher threshold on a sample of the imported corpus
    page.locator("#recipe-form").get_by_label(re.compile(r"austen \(\d+ documents\)")).check()
    page.get_by_label("Step", exact=True).select_option("gopher_quality")
    page.get_by_label("Measured value", exact=True).select_option("mean_word_length")
    page.get_by_label("Sample size").fill("50")
    page.get_by_role("button", name="Preview").click()
    page.wait_for_function("() => Number(document.getElementById('chart-preview').dataset.points || 0) == 20")
    assert "on 50 documents" in page.locator("#preview-summary").inner_text()
    assert page.locator("#preview-cuts h3").count() == 2  # the lower and the upper cut
