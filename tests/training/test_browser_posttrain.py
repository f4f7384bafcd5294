"""Browser test (Playwright on Debian's Chromium) of the feedback loop against the real studio and
its Huey worker: a labeling snapshot of preference judgements → a reward model trained from the
fine-tuning form → a PPO run steered by it, its charts filling live → chat with the tuned policy
→ send it back to the annotators as a candidate source. Tiny model on CPU."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.live import StudioServer, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# A tiny studio checkpoint with its tokenizer, as a pretraining run leaves them (made in the
# studio's own data folder and database; the test is about what comes after pretraining).
MAKE_BASE = """
from training.core.checkpoint import save_checkpoint
from training.core.config import ModelConfig
from training.core.model import Transformer
from training.core.tokenizer import train_tokenizer
from training.models import Checkpoint, Run
texts = ["The cat sat on the mat.", "Cats like naps in the sun.", "A short answer is a kind answer."] * 10
run = Run.objects.create(kind="pretrain", name="tiny base", status="succeeded", config={"objective": "clm"})
tok = train_tokenizer(texts, 300, min_frequency=1)
tok.save(run.out_dir / "tokenizer")
cfg = ModelConfig(vocab_size=len(tok), dim=32, n_layers=1, n_heads=2, max_seq_len=128)
path = save_checkpoint(run.out_dir, 1, Transformer(cfg), None, config={"model": cfg.to_dict()})
print(Checkpoint.objects.create(run=run, step=1, path=str(path)).pk)
"""


def wait_run(s, run_id: int, timeout: float = 600) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        run = s.request("GET", f"/api/runs/{run_id}/")[1]
        if run["status"] not in ("queued", "running"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} did not finish"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # noqa: ANN001, ANN201
    srv = StudioServer(tmp_path_factory.mktemp("studio-browser-posttrain")).start()
    base = int(srv.manage("shell", "-c", MAKE_BASE).stdout.strip().splitlines()[-1])
    s = srv.session("builder", "builder-demo-pass")
    status, project = s.request("POST", "/api/labeling/projects/", {"name": "helpfulness", "task_type": "pairwise"})
    assert status == 201, project
    lines = [json.dumps({"prompt": f"Question {i}: what do cats like?", "chosen": f"Cats like naps {i}.",
                         "rejected": f"No idea {i}"}) for i in range(12)]
    lines += [json.dumps({"prompt": p}) for p in ("Tell me about dogs.", "Why do cats purr?")]  # not answered yet
    status, result = s.request("POST", f"/api/labeling/projects/{project['id']}/import/", {"jsonl": "\n".join(lines)})
    assert status == 201, result
    status, snap = s.request("POST", "/api/labeling/snapshots/", {"project": project["id"], "note": "round 1"})
    assert status == 201, snap
    srv.shared = {"base": base, "project": project, "snapshot": snap}
    yield srv
    srv.stop()


def fill_common(page, *, steps: str) -> None:  # noqa: ANN001
    page.get_by_label("Preset").select_option("tiny-cpu")
    page.get_by_label("Steps", exact=True).fill(steps)
    page.get_by_label("Evaluate every").fill("2")
    page.get_by_label("Checkpoint every").fill("2")
    page.get_by_label("Micro-batch size").fill("2")
    page.get_by_label("Max sequence length").fill("64")
    page.get_by_label("CPU threads per process (0 = auto)").fill("1")


def test_snapshot_to_reward_model_to_ppo_to_chat(page, server):  # noqa: ANN001
    shared = server.shared
    sign_in(page, server, "builder", "builder-demo-pass")
    page.goto(server.url + "/fine-tuning/")

    # a reward model on the snapshot; too few pairs for the default bound are refused inline first
    page.get_by_label("Kind").select_option("reward")
    page.get_by_label("Run name").fill("browser RM")
    page.get_by_label("Base model").select_option(f"checkpoint:{shared['base']}")
    page.get_by_label("Labeling snapshot").select_option(str(shared["snapshot"]["id"]))
    fill_common(page, steps="4")
    page.get_by_role("button", name="Start fine-tuning run").click()
    page.locator('[data-error-for="snapshot"]').filter(has_text="12 preference pairs").wait_for()
    assert page.url.endswith("/fine-tuning/")
    page.get_by_label("More settings (JSON, merged into the config)").fill('{"min_pairs": 4}')
    page.get_by_role("button", name="Start fine-tuning run").click()
    page.wait_for_url("**/runs/*/")
    rm_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    s = server.session("builder", "builder-demo-pass")
    page.locator("#run-status").filter(has_text=re.compile("succeeded|failed")).wait_for(timeout=600_000)
    assert page.locator("#run-status").inner_text() == "succeeded", s.request("GET", f"/api/runs/{rm_id}/")[1]
    assert int(page.locator("#chart-1").get_attribute("data-points") or 0) > 0  # pairwise accuracy
    rm = max(s.request("GET", f"/api/checkpoints/?run={rm_id}")[1]["results"], key=lambda c: c["step"])

    # PPO from the same base, steered by that reward model; watch the charts grow while it runs
    page.goto(server.url + "/fine-tuning/")
    page.get_by_label("Kind").select_option("ppo")
    page.get_by_label("Run name").fill("browser PPO")
    page.get_by_label("Base model").select_option(f"checkpoint:{shared['base']}")
    page.get_by_label("Labeling snapshot").select_option(str(shared["snapshot"]["id"]))
    page.get_by_label("Reward", exact=True).select_option(f"checkpoint:{rm['id']}")
    fill_common(page, steps="24")
    page.get_by_label("More settings (JSON, merged into the config)").fill(
        '{"min_prompts": 4, "max_prompt_len": 32, "max_new_tokens": 8, "ppo_epochs": 1, "entropy_warn": 1000}')
    # record every point count the KL chart shows from the moment the run's page loads (sampled in
    # the page, installed before it loads: a fast run can neither finish between two checks of the
    # test nor before the sampler starts, and so hide the growth)
    page.add_init_script("""window.klSeen = [];
        setInterval(() => { const c = document.querySelector("canvas[data-metrics='objective/kl']");
            const n = Number((c && c.dataset.points) || 0);
            if (n && window.klSeen[window.klSeen.length - 1] !== n) window.klSeen.push(n); }, 20);""")
    page.get_by_role("button", name="Start fine-tuning run").click()
    page.wait_for_url("**/runs/*/")
    ppo_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    page.locator("#live-status").filter(has_text="live").wait_for()
    page.locator("#run-status").filter(has_text="succeeded").wait_for(timeout=600_000)
    page.wait_for_function("() => window.klSeen.length >= 2")  # the chart grew while we watched
    seen = page.evaluate("window.klSeen")
    assert len(seen) >= 2 and seen == sorted(seen), (seen, s.request("GET", f"/api/runs/{ppo_id}/")[1])
    assert page.locator("#progress-text").inner_text() == "step 24 / 24"
    # entropy_warn set absurdly high: the RL-health panel warns of entropy collapse (once, rule + core flag)
    assert page.locator("#health").is_visible()
    assert page.locator("#health li[data-warning='entropy']").count() == 1
    lineage = page.locator("#lineage").inner_text()
    assert f"checkpoint:{rm['id']}" in lineage and "helpfulness@v1" in lineage

    # back to the annotators: the policy answers the project's prompts through labeling's API
    pid = shared["project"]["id"]
    page.get_by_label("Labeling project").select_option(str(pid))
    page.get_by_label("Max new tokens").fill("16")  # the tiny model holds 128 tokens
    page.get_by_role("button", name="Send as candidate source").click()
    page.locator("#send-status[data-state='queued']").wait_for()
    count = ("from labeling.models import Response; "
             f"print(Response.objects.filter(prompt__project_id={pid}, model_name='browser PPO @ step 24').count())")
    deadline = time.monotonic() + 300
    while int(server.manage("shell", "-c", count).stdout.split()[-1]) < 4:  # 2 open prompts x 2 answers
        assert time.monotonic() < deadline, "the policy's answers did not reach the project:\n" + server.logs()[-3000:]
        time.sleep(2)

    # chat with the tuned policy
    policy = max(s.request("GET", f"/api/checkpoints/?run={ppo_id}")[1]["results"], key=lambda c: c["step"])
    page.locator("#checkpoints a", has_text="Chat").last.click()
    page.wait_for_url(f"**/chat/?model=checkpoint:{policy['id']}")
    page.locator("#chat-status").filter(has_text="ready").wait_for()
    page.get_by_label("Max new tokens").fill("8")
    page.get_by_label("Message", exact=True).fill("What do cats like?")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function("() => { const a = [...document.querySelectorAll('li.msg.assistant')].pop();"
                           " return a && a.dataset.done; }", timeout=120_000)
    assert page.locator("li.msg.assistant").last.get_attribute("data-done") == "true"
