"""Fixtures of the training app's tests: a private data folder, Huey in immediate mode, a small
slice of Jane Austen as a dataset, and a real tokenizer trained on it by a tokenizer run."""

from __future__ import annotations

import pytest

# A config that trains in a few seconds on a shared 2-core machine (checkpoints at 3 and 6).
TINY_PRETRAIN = {
    "model": {"preset": "tiny", "dim": 64, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "max_seq_len": 64},
    "data": {"seq_len": 32, "micro_batch_size": 2, "val_batches": 1},
    "optim": {"lr": 3e-3, "warmup_steps": 2},
    "steps": 6, "eval_every": 3, "ckpt_every": 3, "device": "cpu", "dtype": "fp32",
}


@pytest.fixture
def data_dir(settings, tmp_path):  # noqa: ANN001, ANN201
    settings.DATA_DIR = tmp_path
    return tmp_path


@pytest.fixture
def huey_immediate():  # noqa: ANN201
    from huey.contrib.djhuey import HUEY

    previous = HUEY.immediate
    HUEY.immediate = True
    yield HUEY
    HUEY.immediate = previous


@pytest.fixture
def austen_dataset(db, data_dir, builder):  # noqa: ANN001, ANN201
    from training.actions import import_corpus

    return import_corpus(builder, "austen", name="austen-slice", limit=12)


@pytest.fixture
def trained_tokenizer(austen_dataset, builder, huey_immediate, django_capture_on_commit_callbacks):  # noqa: ANN001, ANN201
    from training.actions import do_create_run
    from training.models import Run

    with django_capture_on_commit_callbacks(execute=True):
        run = do_create_run(builder, kind="tokenizer", name="austen-320", dataset=austen_dataset.pk,
                            config={"vocab_size": 320, "min_frequency": 2})
    run = Run.objects.get(pk=run.pk)
    assert run.status == "succeeded", (run.error, run.log_path.read_text())
    return run.produced_tokenizer
