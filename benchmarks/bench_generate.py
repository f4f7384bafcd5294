"""Generation throughput: our KV-cache ``generate`` vs transformers ``generate()`` (with its cache).

Same weights (transformers loads our HF export), greedy decoding, the same prompts (batch 8 has
prompts of different lengths, left-padded on both sides), exactly ``--new`` tokens per row (no
stop token), same threads, timed round-robin in one process. Both outputs are checked to be the
same tokens. The ratio is new tokens/s ours / new tokens/s transformers.

    python benchmarks/bench_generate.py                    # "small" preset (random weights)
    python benchmarks/bench_generate.py --model smollm2    # the real SmolLM2-135M-Instruct
    python benchmarks/bench_generate.py --compile          # + generate(compile=True), timed warm
    python benchmarks/bench_generate.py --lookup 10        # + prompt-lookup decoding, batch 1, both sides

The headline ratio is default against default (our eager ``generate`` against transformers'
eager ``generate()``). ``--compile`` adds our compiled decoding as a separate row: its compilation
time is printed, then it is timed warm (graphs kept per batch size and cache bucket). ``--lookup K``
adds a separate comparison at batch 1: our ``generate(prompt_lookup=K)`` against transformers'
``generate(prompt_lookup_num_tokens=K)`` on the same prompt (both greedy-exact; how much either
gains depends on how often the text repeats itself).
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import hf_llama_from, interleaved, machine_line, report  # noqa: I001

from training.core.config import ModelConfig
from training.core.model import Transformer
from training.core.serve import generate


def prompts_for(batch: int, vocab: int, base_len: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(batch)
    lengths = [base_len - 3 * (i % 4) for i in range(batch)]  # different lengths in a batch
    return [torch.randint(10, vocab, (n,), generator=g).tolist() for n in lengths]


def weight_stream_ms(model: Transformer, repeats: int = 20) -> float:
    """CPU milliseconds to stream the weight matrices a decoding step reads (every block matrix
    and the output projection; of the embedding only one row per token) through memory once,
    one matrix-vector product each (best of ``repeats``): the scale of the memory traffic of a
    single-token fp32 step on this machine (an estimate, not a bound: matrices that fit the
    caches stay there between repeats, and a plain matrix-vector product may not reach the
    memory bandwidth; the flat step measured below it on the 16M-parameter preset)."""
    mats = [p.detach() for p in model.layers.parameters() if p.dim() == 2] + [model.output.weight.detach()]
    vecs = [torch.ones(m.shape[1], dtype=m.dtype) for m in mats]
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        for m, v in zip(mats, vecs):
            torch.mv(m, v)
        best = min(best, time.process_time() - c0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small", help="a ModelConfig preset, or 'smollm2'")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new", type=int, default=32, help="new tokens per row")
    ap.add_argument("--prompt", type=int, default=24, help="longest prompt length")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="also time generate(compile=True), warm")
    ap.add_argument("--lookup", type=int, default=0, help="also compare prompt-lookup decoding with K draft tokens")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "smollm2":
        from training.core.interop.smollm2 import load_smollm2

        model, _ = load_smollm2()
    else:
        model = Transformer(ModelConfig.preset(args.model, init_std=0.1))
    model.eval()
    ref = hf_llama_from(model).eval()
    ref.generation_config.pad_token_id = 0
    print(f"generate, model={args.model} ({model.num_params() / 1e6:.1f}M params), {args.new} new tokens per row, "
          f"greedy; {machine_line()}")
    floor = weight_stream_ms(model)
    print(f"  reading the matrices a decoding step reads once (one matrix-vector product each): {floor:.1f} ms "
          f"({1e3 / floor:.0f} steps/s): the scale of a batch-1 step's weight traffic (not a hard floor: the "
          "matrices that fit stay cached between repeats, and torch.mv does not reach full bandwidth)")
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = prompts_for(batch, model.cfg.vocab_size, args.prompt)
        longest = max(len(p) for p in prompts)
        ids = torch.zeros(batch, longest, dtype=torch.long)
        mask = torch.zeros(batch, longest, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, longest - len(p):] = torch.tensor(p)
            mask[i, longest - len(p):] = 1

        def ours() -> list[list[int]]:
            return generate(model, prompts, max_new_tokens=args.new)

        def theirs() -> list[list[int]]:
            with torch.inference_mode():
                out = ref.generate(ids, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                                   do_sample=False, eos_token_id=None, pad_token_id=0)
            return out[:, longest:].tolist()

        a, b = ours(), theirs()
        same = sum(x == y for x, y in zip(a, b))
        fns = {"ours": ours, "transformers": theirs}
        if args.compile:
            def ours_compiled() -> list[list[int]]:
                return generate(model, prompts, max_new_tokens=args.new, compile=True)

            t0 = time.perf_counter()
            c = ours_compiled()
            print(f"batch {batch}: compiling the decoding step took {time.perf_counter() - t0:.1f} s (once per batch "
                  f"size and cache bucket); compiled outputs identical to transformers' "
                  f"{sum(x == y for x, y in zip(c, b))}/{batch}")
            fns["ours compiled (warm)"] = ours_compiled
        times = interleaved(fns, repeats=args.repeats, warmup=0)
        print(f"batch {batch}: identical outputs {same}/{batch}")
        report(times, batch * args.new, "new tokens", "transformers")
        if args.compile:
            comp, base = times["ours compiled (warm)"], times["transformers"]
            print(f"  speedup ours compiled (warm) vs transformers: x{base.best() / comp.best():.2f} (best wall), "
                  f"x{base.median() / comp.median():.2f} (median wall), x{base.best('cpu') / comp.best('cpu'):.2f} "
                  "(best cpu)")

        if args.lookup and batch == 1:
            def ours_lookup() -> list[list[int]]:
                return generate(model, prompts, max_new_tokens=args.new, prompt_lookup=args.lookup)

            def theirs_lookup() -> list[list[int]]:
                with torch.inference_mode():
                    out = ref.generate(ids, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                                       do_sample=False, eos_token_id=None, pad_token_id=0,
                                       prompt_lookup_num_tokens=args.lookup)
                return out[:, longest:].tolist()

            la, lb = ours_lookup(), theirs_lookup()
            print(f"batch 1, prompt lookup ({args.lookup} draft tokens): outputs identical to plain greedy: ours "
                  f"{la == a}, transformers {lb == b}")
            report(interleaved({"ours": ours_lookup, "transformers": theirs_lookup}, repeats=args.repeats, warmup=0),
                   args.new, "new tokens", "transformers")


if __name__ == "__main__":
    main()
