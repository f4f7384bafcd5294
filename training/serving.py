"""The model-serving worker: a separate process that keeps models loaded and streams chat replies.

Generation never runs in the ASGI event loop. Each web process starts one worker
(``python -m training.serving``) on first use and talks to it over its stdin/stdout in JSON lines:

requests  ``{"op": "generate", "id", "source", "messages", "max_new_tokens", "temperature", "top_k",
          "top_p", "repetition_penalty", "seed"}`` and ``{"op": "stop", "id"}``;
replies   ``{"id", "type": "loading"}``, ``{"id", "type": "token", "text"}`` (one per decoded piece),
          ``{"id", "type": "done", "text", "stopped", "stats": {...}}`` or ``{"id", "type": "error", …}``.

The worker keeps recently used models in memory while their weights fit in
``STUDIO_SERVE_MEMORY_MB`` (least recently used ones are dropped first). ``source`` is
``"smollm2"`` or a checkpoint / export / HF folder / .gguf path (resolved from a ``model:<id>`` or
``checkpoint:<id>`` ref by the web process, which checks who may use it). This module imports no
Django: the worker side is the core plus the standard library.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
MAX_NEW_TOKENS = 1024


# ==== worker side ================================================================================

class _Stop(Exception):
    """Raised from the token callback when the client pressed stop."""


class ModelCache:
    """Loaded models by source, least recently used first, within a byte budget."""

    def __init__(self, budget_bytes: int, cache_dir: str | None = None) -> None:
        self.budget = budget_bytes
        self.cache_dir = cache_dir
        self.models: OrderedDict[str, tuple[Any, Any, int]] = OrderedDict()

    def get(self, source: str) -> tuple[Any, Any, float]:
        """(model, tokenizer, seconds spent loading: 0 when it was already loaded)."""
        if source in self.models:
            self.models.move_to_end(source)
            model, tok, _ = self.models[source]
            return model, tok, 0.0
        t0 = time.perf_counter()
        model, tok = self._load(source)
        # The parameters, and about as much again for the decoding copy that generation keeps on
        # the model (training.core.serve.generate: transposed, fused weights).
        size = 2 * sum(p.numel() * p.element_size() for p in model.parameters())
        while self.models and sum(s for *_, s in self.models.values()) + size > self.budget:
            self.models.popitem(last=False)
        self.models[source] = (model, tok, size)
        return model, tok, time.perf_counter() - t0

    def _load(self, source: str) -> tuple[Any, Any]:
        if source == "smollm2":
            from training.core.interop.smollm2 import load_smollm2

            model, tok = load_smollm2(self.cache_dir)
            return model.eval(), tok
        from training.core.cli import load_model_and_tokenizer

        model, tok = load_model_and_tokenizer(source)
        if tok is None:
            raise ValueError(f"no tokenizer found next to {source}")
        return model, tok


def stream_chat(model: Any, tok: Any, messages: list[dict[str, Any]], on_text: Callable[[str], None],
                should_stop: Callable[[], bool], *, max_new_tokens: int = 128, **sampling: Any) -> dict[str, Any]:
    """Answer ``messages`` with the chat template, streaming decoded text; returns text and timings.

    Same decoding as :func:`training.core.serve.chat`, plus a stop check after every token.
    """
    from training.core.serve import generate

    ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
    room = model.cfg.max_seq_len - len(ids)
    if room < 1:
        raise ValueError(f"the conversation ({len(ids)} tokens) fills the model's context of "
                         f"{model.cfg.max_seq_len} tokens; start a new chat")
    produced: list[int] = []
    emitted = [""]
    t0 = time.perf_counter()
    first: list[float] = []

    def on_token(row: int, token: int) -> None:
        if not first:
            first.append(time.perf_counter() - t0)
        produced.append(token)
        text = tok.decode(produced, skip_special_tokens=True)
        if not text.endswith("\ufffd") and len(text) > len(emitted[0]):
            on_text(text[len(emitted[0]):])
            emitted[0] = text
        if should_stop():
            raise _Stop

    stopped = False
    try:
        generate(model, [ids], max_new_tokens=min(max_new_tokens, room), stop_ids=tok.stop_ids, on_token=on_token,
                 pad_id=tok.pad_id, **sampling)
    except _Stop:
        stopped = True
    elapsed = time.perf_counter() - t0
    n = len(produced)
    ttft = first[0] if first else elapsed
    decode_time = elapsed - ttft
    return {"text": tok.decode(produced, skip_special_tokens=True).strip(), "stopped": stopped,
            "stats": {"prompt_tokens": len(ids), "tokens": n, "ttft_s": round(ttft, 4), "total_s": round(elapsed, 4),
                      "tokens_per_s": round((n - 1) / decode_time, 2) if n > 1 and decode_time > 0 else None}}


def worker_main() -> int:
    """Serve requests from stdin until it closes."""
    import torch

    threads = int(os.environ.get("STUDIO_SERVE_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    budget = int(float(os.environ.get("STUDIO_SERVE_MEMORY_MB", "4096")) * 2**20)
    data_dir = os.environ.get("STUDIO_DATA_DIR")
    cache = ModelCache(budget, os.environ.get("STUDIO_SERVE_CACHE") or (str(Path(data_dir) / "cache") if data_dir else None))
    out_lock = threading.Lock()
    jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
    stopped: set[str] = set()

    def send(obj: dict[str, Any]) -> None:
        line = json.dumps(obj)
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def read_stdin() -> None:
        for line in sys.stdin:
            try:
                req = json.loads(line)
            except json.JSONDecodeError:
                continue
            if req.get("op") == "stop":
                stopped.add(str(req.get("id")))
            elif req.get("op") == "generate":
                jobs.put(req)
        jobs.put(None)

    threading.Thread(target=read_stdin, daemon=True).start()
    send({"type": "ready", "pid": os.getpid()})
    while True:
        req = jobs.get()
        if req is None:
            return 0
        rid = str(req.get("id"))
        if rid in stopped:
            send({"id": rid, "type": "done", "text": "", "stopped": True, "stats": {}})
            continue
        try:
            if req["source"] not in cache.models:
                send({"id": rid, "type": "loading"})
            model, tok, load_s = cache.get(req["source"])
            sampling = {k: req[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty", "seed")
                        if req.get(k) is not None}
            result = stream_chat(model, tok, req["messages"], lambda piece: send({"id": rid, "type": "token", "text": piece}),
                                 lambda: rid in stopped, max_new_tokens=min(int(req.get("max_new_tokens", 128)),
                                                                            MAX_NEW_TOKENS), **sampling)
            result["stats"]["load_s"] = round(load_s, 3)
            send({"id": rid, "type": "done", **result})
        except Exception as e:  # noqa: BLE001 - one bad request must not end the worker
            send({"id": rid, "type": "error", "detail": f"{type(e).__name__}: {getattr(e, 'message', e)}",
                  "hint": getattr(e, "hint", "")})
        finally:
            stopped.discard(rid)


# ==== web side ===================================================================================

class ServingClient:
    """The web process's handle on its serving worker (started on first use, restarted if it dies)."""

    _instance: "ServingClient | None" = None
    _instance_lock = threading.Lock()

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count(1)

    @classmethod
    def instance(cls) -> "ServingClient":
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _ensure(self) -> subprocess.Popen:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc
        env = {k: v for k, v in (self.env or os.environ).items() if k != "DJANGO_SETTINGS_MODULE"}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH", "")])])
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen([sys.executable, "-m", "training.serving"], cwd=REPO, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=1)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self.proc

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            rid = msg.get("id")
            with self.lock:
                handler = self.handlers.get(rid)
                if msg.get("type") in ("done", "error"):
                    self.handlers.pop(rid, None)
            if handler is not None:
                handler(msg)
        # the worker died: fail what was pending
        with self.lock:
            pending, self.handlers = self.handlers, {}
        for rid, handler in pending.items():
            handler({"id": rid, "type": "error", "detail": f"the serving worker exited (code {proc.poll()})",
                     "hint": "send the message again; the worker restarts"})

    def _write(self, obj: dict[str, Any]) -> None:
        with self.lock:
            proc = self._ensure()
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(obj) + "\n")
            proc.stdin.flush()

    def generate(self, request: dict[str, Any], handler: Callable[[dict[str, Any]], None]) -> str:
        """Submit a chat request; ``handler`` is called (from a reader thread) with every reply."""
        rid = f"r{next(self.ids)}"
        with self.lock:
            self.handlers[rid] = handler
        self._write({**request, "op": "generate", "id": rid})
        return rid

    def stop(self, rid: str) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._write({"op": "stop", "id": rid})

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


if __name__ == "__main__":
    sys.exit(worker_main())
