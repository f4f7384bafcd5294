"""Browser tests (Playwright on Debian's Chromium) against the real studio with its Huey worker:
create a tiny pretraining run from the form, watch live points arrive and the chart grow, cancel,
resume, see it finish; inline field errors; chat with the checkpoint and watch tokens stream;
report an answer and find it in the moderators' queue."""

from __future__ import annotations

import re
import time

import pytest

from tests.live import StudioServer, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # noqa: ANN001, ANN201
    srv = StudioServer(tmp_path_factory.mktemp("studio-browser-runs")).start()
    s = srv.session("builder", "builder-demo-pass")
    status, ds = s.request("POST", "/api/datasets/", {"corpus": "austen", "limit": 12})
    assert status == 201, ds
    status, run = s.request("POST", "/api/runs/", {"kind": "tokenizer", "name": "austen-320", "dataset": ds["id"],
                                                   "config": {"vocab_size": 320}})
    assert status == 201, run
    deadline = time.monotonic() + 300
    while s.request("GET", f"/api/runs/{run['id']}/")[1]["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, "tokenizer run did not finish"
        time.sleep(0.5)
    assert s.request("GET", f"/api/runs/{run['id']}/")[1]["status"] == "succeeded"
    srv.shared = {}
    yield srv
    srv.stop()


def points(page, canvas: str = "#chart-loss") -> int:  # noqa: ANN001
    return int(page.locator(canvas).get_attribute("data-points") or 0)


def test_invalid_config_shows_inline_field_errors(page, server):  # noqa: ANN001
    sign_in(page, server, "builder", "builder-demo-pass")
    page.goto(server.url + "/pretraining/")
    page.get_by_label("Steps", exact=True).fill("0")
    page.get_by_label("More settings (JSON, merged into the config)").fill('{"model": {"n_heads": 5}}')
    page.get_by_role("button", name="Start run").click()
    error = page.locator('[data-error-for="config.model.preset"]')
    error.filter(has_text="divisible").wait_for()
    assert page.url.endswith("/pretraining/")
    page.get_by_label("More settings (JSON, merged into the config)").fill("")
    page.get_by_role("button", name="Start run").click()
    page.locator('[data-error-for="config.steps"]').filter(has_text="positive").wait_for()
    assert page.get_by_label("Steps", exact=True).get_attribute("aria-invalid") == "true"


def test_pretraining_run_live_cancel_resume_finish(page, server):  # noqa: ANN001
    sign_in(page, server, "builder", "builder-demo-pass")
    page.goto(server.url + "/pretraining/")
    page.get_by_label("Preset").select_option("cpu-demo")
    page.get_by_label("Run name").fill("browser run")
    page.get_by_label("Steps", exact=True).fill("300")
    page.get_by_label("Sequence length").fill("32")
    page.get_by_label("Micro-batch size").fill("2")
    page.get_by_label("Validate every").fill("50")
    page.get_by_label("Checkpoint every").fill("50")
    page.get_by_label("CPU threads per process (0 = auto)").fill("1")
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url("**/runs/*/")
    run_id = int(page.locator("#run").get_attribute("data-run-id"))
    page.locator("#live-status").filter(has_text="live").wait_for()
    # live points arrive and the chart grows
    page.wait_for_function("() => Number(document.querySelector('#chart-loss').dataset.points || 0) >= 5",
                           timeout=180_000)
    first = points(page)
    page.wait_for_function(f"() => Number(document.querySelector('#chart-loss').dataset.points || 0) > {first + 5}",
                           timeout=60_000)
    assert int(page.locator("#run-progress").get_attribute("value")) > 0
    page.locator("#eta").filter(has_text="ETA").wait_for()
    # cancel: the core checkpoints and exits
    page.get_by_role("button", name="Cancel").click()
    page.locator("#run-status").filter(has_text="cancelled").wait_for(timeout=120_000)
    stopped_at = int(page.locator("#run").get_attribute("data-step"))
    assert 0 < stopped_at < 300
    assert page.get_by_role("button", name="Resume").is_visible()
    # resume: continues from the cancel checkpoint and finishes
    page.get_by_role("button", name="Resume").click()
    page.locator("#run-status").filter(has_text="succeeded").wait_for(timeout=600_000)
    page.wait_for_function("() => document.querySelector('#run-progress').value == 300", timeout=30_000)
    page.wait_for_function("() => Number(document.querySelector('#chart-loss').dataset.points || 0) >= 300",
                           timeout=30_000)
    assert page.locator("#checkpoints tr[data-step='300']").count() == 1
    # a fresh page draws the stored history
    page.reload()
    page.wait_for_function("() => Number(document.querySelector('#chart-loss').dataset.points || 0) >= 300")
    server.shared["run_id"] = run_id
    # overlay it with another run on the comparison page
    page.goto(server.url + "/pretraining/")
    assert page.locator(f'[data-run-status="{run_id}"]').inner_text() == "succeeded"
    page.get_by_label(f"compare run {run_id}").check()
    page.get_by_role("button", name="Compare selected").click()
    page.wait_for_url("**/pretraining/compare/?runs=*")
    page.wait_for_function("() => Number(document.querySelector('#cmp-loss').dataset.points || 0) >= 300")


def test_chat_with_the_checkpoint_streams_tokens_and_reports(page, server):  # noqa: ANN001
    run_id = server.shared.get("run_id")
    if run_id is None:
        pytest.skip("needs the run of the previous test")
    s = server.session("builder", "builder-demo-pass")
    ckpt = max(s.request("GET", f"/api/checkpoints/?run={run_id}")[1]["results"], key=lambda c: c["step"])
    sign_in(page, server, "annotator", "annotator-demo-pass")  # any signed-in user may chat
    page.goto(server.url + f"/chat/?model=checkpoint:{ckpt['id']}")
    assert page.get_by_label("Model", exact=True).input_value() == f"checkpoint:{ckpt['id']}"
    page.locator("#chat-status").filter(has_text="ready").wait_for()
    page.get_by_label("Temperature (0 = greedy)").fill("0")
    page.get_by_label("Max new tokens").fill("40")
    page.get_by_label("Repetition penalty").fill("1.3")
    # count the updates of the answer while it streams
    page.evaluate("""() => { window.__updates = 0; new MutationObserver(() => { window.__updates++; })
        .observe(document.getElementById('chat-log'), {subtree: true, characterData: true, childList: true}); }""")
    page.get_by_label("Message", exact=True).fill("Who is Mr. Darcy?")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("li.msg.assistant").last
    page.wait_for_function("() => { const a = [...document.querySelectorAll('li.msg.assistant')].pop();"
                           " return a && a.dataset.done; }", timeout=120_000)
    assert answer.get_attribute("data-done") == "true"
    tokens = int(answer.get_attribute("data-tokens") or 0)
    assert tokens >= 3, answer.inner_text()
    assert page.evaluate("window.__updates") >= tokens  # the answer grew token by token
    assert answer.locator(".body").inner_text().strip()
    # report it
    answer.get_by_role("button", name="Report").click()
    page.get_by_label("Category").select_option("bias")
    page.get_by_label("Kind of bias").select_option("gender")
    page.get_by_label("What is wrong?").fill("stereotype in the answer")
    page.get_by_role("button", name="Send report").click()
    answer.locator(".stats").filter(has_text="reported").wait_for()
    mod = server.session("moderator", "moderator-demo-pass")
    status, reports = mod.request("GET", "/api/labeling/reports/")
    assert status == 200, reports
    found = [r for r in reports["results"] if r.get("description") == "stereotype in the answer"]
    assert found and found[0]["source"] == "playground" and found[0]["category"] == "bias"


def test_datasets_and_tokenizer_from_the_tokenizers_page(page, server):  # noqa: ANN001
    sign_in(page, server, "builder", "builder-demo-pass")
    page.goto(server.url + "/tokenizers/")
    page.get_by_label("Corpus").select_option("austen")
    page.get_by_label("Documents (empty = all)").fill("0")
    page.get_by_role("button", name="Import").click()
    page.locator('#corpus-form [data-error-for="limit"]').filter(has_text="greater than or equal to 1").wait_for()
    page.get_by_label("Documents (empty = all)").fill("4")
    page.get_by_role("button", name="Import").click()
    page.wait_for_load_state()
    page.get_by_role("cell", name="austen v2").wait_for()
    page.get_by_label("Dataset version", exact=True).select_option(label="austen v2")
    page.get_by_label("Vocabulary size").fill("100")
    page.get_by_role("button", name="Train tokenizer").click()
    page.locator('[data-error-for="config.vocab_size"]').filter(has_text="between").wait_for()
    page.get_by_label("Vocabulary size").fill("300")
    page.get_by_label("Tokenizer name").fill("tiny-300")
    page.get_by_role("button", name="Train tokenizer").click()
    page.wait_for_url("**/runs/*/")
    page.locator("#run-status").filter(has_text="succeeded").wait_for(timeout=180_000)
    page.reload()
    page.get_by_role("link", name="tiny-300").click()
    page.get_by_label("Text").fill("Elizabeth Bennet")
    page.get_by_role("button", name="Tokenize").click()
    page.locator("#tk-summary").filter(has_text="round trip exact").wait_for()
    assert page.locator("#tk-out .tok").count() >= 2


def test_compare_mode_vote(page, server):  # noqa: ANN001
    run_id = server.shared.get("run_id")
    if run_id is None:
        pytest.skip("needs the run of the pretraining test")
    s = server.session("builder", "builder-demo-pass")
    ckpts = s.request("GET", f"/api/checkpoints/?run={run_id}")[1]["results"]
    assert len(ckpts) >= 2
    sign_in(page, server, "moderator", "moderator-demo-pass")
    page.goto(server.url + "/chat/")
    page.locator("#chat-status").filter(has_text="ready").wait_for()
    page.get_by_label("Compare two anonymous models").check()
    page.get_by_label("Max new tokens").fill("12")
    page.get_by_label("Message", exact=True).fill("Good morning")
    page.get_by_role("button", name="Send").click()
    page.locator("li.votes button[data-vote='tie']").wait_for(timeout=180_000)
    assert page.locator("li.pair li.msg.assistant").count() == 2
    page.locator("li.votes button[data-vote='tie']").click()
    page.locator("li.votes").filter(has_text="A was").wait_for()


def test_upload_a_text_file_as_a_dataset(page, server, tmp_path):  # noqa: ANN001
    notes = tmp_path / "notes.txt"
    notes.write_text("It is a truth universally acknowledged.\n\nA second paragraph of real words.\n")
    sign_in(page, server, "builder", "builder-demo-pass")
    page.goto(server.url + "/tokenizers/")
    page.get_by_label(".txt or .jsonl file").set_input_files(str(notes))
    page.get_by_label("Dataset name").fill("uploaded-notes")
    page.get_by_role("button", name="Upload").click()
    page.wait_for_load_state()
    page.get_by_role("cell", name=re.compile("^uploaded-notes")).first.wait_for()
