"""Labeling background work: generating candidate answers from studio models (Huey).

:func:`generate_candidates` does the work and can run anywhere (a test, a shell); the Huey task
wraps it. Models are loaded through the ML core (``training.core``: checkpoints, run folders,
exports, Hugging Face folders, GGUF files — pure PyTorch, no Django).
"""

from __future__ import annotations

from typing import Any

from huey.contrib.djhuey import db_task

from studio.events import publish


def generate_candidates(project_id: int, models: list[dict[str, str]], *, k: int = 2, max_new_tokens: int = 128,
                        temperature: float = 0.8, top_p: float | None = 0.95, seed: int = 0,
                        prompt_ids: list[int] | None = None) -> dict[str, Any]:
    """Sample ``k`` answers per prompt from each model (``{"path", "name"}``) and store them as
    responses (source ``checkpoint``) with new items. Prompts default to those with no responses."""
    from labeling import actions
    from labeling.models import Project, Prompt
    from training.core.cli import load_model_and_tokenizer
    from training.core.serve import chat

    project = Project.objects.get(pk=project_id)
    prompts = Prompt.objects.filter(project=project)
    prompts = prompts.filter(pk__in=prompt_ids) if prompt_ids else prompts.filter(responses__isnull=True)
    prompts = list(prompts.order_by("id"))
    group = project.event_group
    publish("labeling.generation.started", {"project": project_id, "prompts": len(prompts),
                                            "models": [m["name"] for m in models]}, group=group)
    produced: dict[int, list[dict[str, Any]]] = {p.pk: [] for p in prompts}
    for m_index, spec in enumerate(models):
        model, tokenizer = load_model_and_tokenizer(spec["path"])
        if tokenizer is None:
            raise ValueError(f"no tokenizer found next to {spec['path']}; export the model with its tokenizer")
        for p_index, prompt in enumerate(prompts):
            for j in range(k):
                sample_seed = seed + 1000 * m_index + 10 * p_index + j
                sampling: dict[str, Any] = {"temperature": temperature, "seed": sample_seed}
                if top_p is not None and temperature > 0:
                    sampling["top_p"] = top_p
                text = chat(model, tokenizer, prompt.messages, max_new_tokens=max_new_tokens, **sampling)
                produced[prompt.pk].append({"text": text, "model": spec["name"],
                                            "metadata": {"path": spec["path"], "seed": sample_seed,
                                                         "temperature": temperature, "top_p": top_p}})
        publish("labeling.generation.progress", {"project": project_id, "model": spec["name"],
                                                 "done_models": m_index + 1, "models": len(models)}, group=group)
    result = actions.add_candidates(project, produced)
    publish("labeling.generation.finished", {"project": project_id, **result}, group=group)
    return result


@db_task()
def generate_candidates_task(project_id: int, models: list[dict[str, str]], options: dict[str, Any]) -> dict[str, Any]:
    """Huey entry point (ids and plain values only)."""
    try:
        return generate_candidates(project_id, models, **options)
    except Exception as e:  # the failure is shown on the project's dashboard
        publish("labeling.generation.failed", {"project": project_id, "error": f"{type(e).__name__}: {e}"},
                group=f"labeling.project.{project_id}")
        raise
