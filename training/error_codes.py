"""Stable error codes of the training app (clients may switch on them) with their default hints."""

from __future__ import annotations

INVALID_CONFIG = "invalid_config"
DATASET_MISSING = "dataset_missing"
TOKENIZER_MISSING = "tokenizer_missing"
CHECKPOINT_MISSING = "checkpoint_missing"
MODEL_MISSING = "model_missing"
RUN_NOT_ACTIVE = "run_not_active"
RUN_NOT_RESUMABLE = "run_not_resumable"
KIND_NOT_LAUNCHABLE = "kind_not_launchable"
UPLOAD_INVALID = "upload_invalid"
CORPUS_UNAVAILABLE = "corpus_unavailable"
SNAPSHOT_MISSING = "snapshot_missing"
TOO_FEW_PAIRS = "too_few_pairs"
TOKENIZER_MISMATCH = "tokenizer_mismatch"
REWARD_OTHER_BASE = "reward_other_base"
NOT_A_REWARD_MODEL = "not_a_reward_model"

# Failure reasons recorded on a run (Run.error["code"])
CHILD_CRASHED = "child_crashed"
CHILD_INVALID = "invalid_input"
OUT_OF_MEMORY = "out_of_memory"
DISK_FULL = "disk_full"
DIVERGED = "diverged"
WORKER_LOST = "worker_lost"
LAUNCH_FAILED = "launch_failed"

HINTS: dict[str, str] = {
    INVALID_CONFIG: "Fix the fields listed in 'fields'; each message says what is allowed.",
    DATASET_MISSING: "Pick an existing dataset version (GET /api/datasets/) or import one first.",
    TOKENIZER_MISSING: "Train a tokenizer first (a run of kind 'tokenizer'), then pick it (GET /api/tokenizers/).",
    CHECKPOINT_MISSING: "Pick a checkpoint that exists (GET /api/checkpoints/).",
    MODEL_MISSING: "Pick a model from GET /api/models/ (e.g. 'model:1') or a checkpoint ('checkpoint:3').",
    RUN_NOT_ACTIVE: "Only queued or running runs can be cancelled.",
    RUN_NOT_RESUMABLE: "Only cancelled, interrupted or failed runs can be resumed; clone a finished run instead.",
    KIND_NOT_LAUNCHABLE: "This studio launches 'tokenizer', 'pretrain', 'sft', 'reward', 'dpo' and 'ppo' runs.",
    UPLOAD_INVALID: "Upload a UTF-8 .txt file (one document) or .jsonl file (one {\"text\": …} object per line).",
    CORPUS_UNAVAILABLE: "See the message: the corpus is fetched from a package registry on first use.",
    SNAPSHOT_MISSING: "Take a snapshot in the labeling app (Manage → Snapshots) and pick it (GET /api/labeling/snapshots/).",
    TOO_FEW_PAIRS: "Collect more judgements in the labeling app and take a new snapshot.",
    TOKENIZER_MISMATCH: "Train the reward model from the same base model as the policy (same tokenizer).",
    REWARD_OTHER_BASE: "Train a reward model initialised from the policy's base model, then pick it.",
    NOT_A_REWARD_MODEL: "Pick a checkpoint of a 'reward' run (or a rule-based reward).",
    CHILD_CRASHED: "The last log lines show what went wrong; fix it and resume or clone the run.",
    CHILD_INVALID: "The core refused the configuration or input; clone the run with corrected settings.",
    OUT_OF_MEMORY: "Lower data.micro_batch_size (and raise data.grad_accum_steps) or pick a smaller model.",
    DISK_FULL: "Free space under STUDIO_DATA_DIR (old checkpoints, exports) and resume the run.",
    DIVERGED: "The loss became NaN/inf: lower optim.lr or raise optim.warmup_steps, then clone the run.",
    WORKER_LOST: "The worker stopped while the run was going; resume it to continue from its last checkpoint.",
    LAUNCH_FAILED: "The worker could not start the process; the log shows why.",
}
