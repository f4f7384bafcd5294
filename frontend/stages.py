"""The lifecycle the navigation follows, from raw text to a deployed, reported-on model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    slug: str
    title: str
    role: str  # access level needed to open the page
    summary: str
    # True when an app serves this stage's pages itself at /<slug>/ (the generic page steps aside)
    own_pages: bool = False


STAGES: tuple[Stage, ...] = (
    Stage("data", "Data", "builder",
          "Collect text, clean it, remove duplicates, toxic text and personal data, and build versioned datasets.",
          own_pages=True),
    Stage("tokenizers", "Tokenizers", "builder",
          "Train byte-level BPE tokenizers on a dataset version and check their compression.", own_pages=True),
    Stage("pretraining", "Pretraining", "builder",
          "Train a Llama-family model from scratch with next-token or masked-LM objectives, on one CPU or many GPUs.",
          own_pages=True),
    Stage("fine-tuning", "Fine-tuning", "builder",
          "Supervised fine-tuning, reward models, PPO and DPO on the studio's own human feedback.", own_pages=True),
    Stage("labeling", "Labeling", "annotator",
          "Rate, rank and correct model answers; the judgements become training data.", own_pages=True),
    Stage("evaluation", "Evaluation", "builder",
          "Benchmarks, bias and fairness suites, adversarial probes and human review."),
    Stage("optimization", "Optimization", "builder",
          "Quantize, prune and distill models, and measure what each change costs."),
    Stage("deploy", "Deploy", "builder",
          "Serve models through an API and export them for other runtimes.", own_pages=True),
    Stage("reports", "Reports", "moderator",
          "Reports of harmful or biased answers from users, triaged by moderators.", own_pages=True),
)

BY_SLUG = {stage.slug: stage for stage in STAGES}
