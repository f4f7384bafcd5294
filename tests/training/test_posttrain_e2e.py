"""Fine-tuning and RLHF runs end to end through Huey (immediate mode) and real child processes on a
tiny model: each kind trains from a labeling snapshot, records its metrics under the names the
run page charts and its checkpoints; a reward model then steers a PPO run; policies load with
their tokenizer for the chat; a cancelled run resumes from its checkpoint and finishes."""

from __future__ import annotations

import pytest

from tests.training.test_posttrain import make_base, make_snapshot
from training import actions, posttrain
from training.models import Checkpoint, MetricPoint, Run

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

FAST = {"steps": 4, "eval_every": 2, "ckpt_every": 2, "micro_batch_size": 2, "max_seq_len": 64, "threads": None}


def fast(kind: str, **over: object) -> dict:
    cfg = {**posttrain.preset_config(kind, "tiny-cpu"), **{k: v for k, v in FAST.items() if v is not None}, **over}
    if "max_prompt_len" in cfg:
        cfg["max_prompt_len"] = 32
    if kind in ("reward", "dpo"):
        cfg["min_pairs"] = 4
    if kind == "ppo":
        cfg.update(min_prompts=4, max_new_tokens=8, ppo_epochs=1)
    return cfg


def launch(builder, django_capture_on_commit_callbacks, **kwargs) -> Run:  # noqa: ANN001
    with django_capture_on_commit_callbacks(execute=True):
        run = actions.do_create_run(builder, threads=1, **kwargs)
    run = Run.objects.get(pk=run.pk)
    assert run.status == "succeeded", (run.error, run.log_path.read_text() if run.log_path.exists() else "")
    return run


def metric_names(run: Run) -> set[str]:
    return {k for p in MetricPoint.objects.filter(run=run, kind="train") for k in p.values}


@pytest.fixture
def base(data_dir):  # noqa: ANN001, ANN201
    return make_base("tiny base")


def test_reward_model_from_a_snapshot(builder, base, huey_immediate, django_capture_on_commit_callbacks,
                                      client_for):  # noqa: ANN001
    snap = make_snapshot(builder, 12)
    run = launch(builder, django_capture_on_commit_callbacks, kind="reward", name="rm", base=base.ref,
                 snapshot=snap.pk, config=fast("reward"))
    assert {"loss", "accuracy", "margin", "mean_reward", "min_reward", "max_reward"} <= metric_names(run)
    assert MetricPoint.objects.filter(run=run, kind="eval").exists()
    assert sorted(Checkpoint.objects.filter(run=run).values_list("step", flat=True)) == [2, 4]
    assert isinstance(run.summary.get("calibration"), list) and run.summary["calibration"]
    page = client_for(builder).get(f"/runs/{run.pk}/").content.decode()
    assert 'id="calibration"' in page
    # a reward model is no chat model
    assert not {c.ref for c in run.checkpoints.all()} & {m["ref"] for m in actions.chat_models()}


def test_reward_model_then_ppo_then_chat(builder, base, huey_immediate, django_capture_on_commit_callbacks):  # noqa: ANN001
    from training.core.cli import load_model_and_tokenizer
    from training.core.serve import chat

    snap = make_snapshot(builder, 12)
    rm_run = launch(builder, django_capture_on_commit_callbacks, kind="reward", name="rm", base=base.ref,
                    snapshot=snap.pk, config=fast("reward"))
    assert {"loss", "accuracy", "margin", "mean_reward"} <= metric_names(rm_run)
    assert rm_run.labeling_snapshot_id == snap.pk
    rm = Checkpoint.objects.filter(run=rm_run).order_by("-step").first()
    assert rm is not None and rm.step == 4

    ppo = launch(builder, django_capture_on_commit_callbacks, kind="ppo", name="ppo", base=base.ref,
                 snapshot=snap.pk, reward=rm.ref, config=fast("ppo"))
    names = metric_names(ppo)
    assert {"objective/kl", "objective/entropy", "objective/rlhf_reward", "val/ratio"} <= names, names
    policy = Checkpoint.objects.filter(run=ppo).order_by("-step").first()
    assert policy.ref in {m["ref"] for m in actions.chat_models()}
    model, tok = load_model_and_tokenizer(policy.path)
    assert tok is not None
    assert isinstance(chat(model, tok, [{"role": "user", "content": "Hello"}], max_new_tokens=4), str)


@pytest.mark.parametrize("kind,names", [
    ("dpo", {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen"}),
    ("sft", {"loss", "lr", "grad_norm"}),
])
def test_policy_runs_train_from_a_snapshot(builder, base, huey_immediate, django_capture_on_commit_callbacks,
                                           kind, names):  # noqa: ANN001
    from labeling import actions as lab

    if kind == "sft":
        import json

        project = lab.create_project(builder, name="corrections", task_type="correction")
        lab.import_jsonl(project, builder, "\n".join(json.dumps({"id": f"c{i}", "kind": "sft", "messages": [
            {"role": "user", "content": f"Say hello {i}"}, {"role": "assistant", "content": f"Hello {i}!"}]})
            for i in range(6)))
        snap = lab.create_snapshot(builder, project)
    else:
        snap = make_snapshot(builder, 12)
    run = launch(builder, django_capture_on_commit_callbacks, kind=kind, base=base.ref, snapshot=snap.pk,
                 config=fast(kind))
    assert names <= metric_names(run), metric_names(run)
    assert sorted(Checkpoint.objects.filter(run=run).values_list("step", flat=True)) == [2, 4]
    assert (run.out_dir / "data" / "train.jsonl").exists() and (run.out_dir / "tokenizer" / "tokenizer.json").exists()


def test_cancelled_run_resumes_from_its_checkpoint(builder, base, huey_immediate, django_capture_on_commit_callbacks,
                                                   monkeypatch):  # noqa: ANN001
    """Cancel as soon as the first checkpoint is recorded; resuming continues from it and finishes.

    The run is long (200 steps) so that the cancel, which the supervisor notices on its next poll,
    always arrives before the last step even on a loaded machine."""
    from training.reporting import RunReporter

    original = RunReporter.handle

    def handle(self, events):  # noqa: ANN001, ANN202
        original(self, events)
        if any(e.get("event") == "checkpoint" for e in events):
            Run.objects.filter(pk=self.run_id, attempt=1).update(cancel_requested=True)

    monkeypatch.setattr(RunReporter, "handle", handle)
    snap = make_snapshot(builder, 12)
    with django_capture_on_commit_callbacks(execute=True):
        run = actions.do_create_run(builder, kind="dpo", base=base.ref, snapshot=snap.pk, threads=1,
                                    config=fast("dpo", steps=200, ckpt_every=5, eval_every=0))
    run = Run.objects.get(pk=run.pk)
    assert run.status == "cancelled", (run.error, run.log_path.read_text())
    stopped_at = max(Checkpoint.objects.filter(run=run).values_list("step", flat=True))
    assert 5 <= stopped_at < 200
    with django_capture_on_commit_callbacks(execute=True):
        actions.do_resume_run(run, builder)
    run = Run.objects.get(pk=run.pk)
    assert run.status == "succeeded" and run.attempt == 2, (run.error, run.log_path.read_text())
    assert run.current_step == 200
    steps = list(MetricPoint.objects.filter(run=run, kind="train").values_list("step", flat=True))
    assert steps == sorted(set(steps)) and steps[-1] == 200  # no step recorded twice after the resume
