"""RLPrompt reward evaluation with the frozen input cache against a per-prompt loop without it, in one run.

    python benchmarks/rlprompt_reward.py                       # GPT-2-small-shaped model (124M, random weights)
    python benchmarks/rlprompt_reward.py --model smollm2-135m  # the demo's real LM

One reward evaluation = the gap reward of ``--prompts`` prompts (``--prompt-len`` random tokens each) on every
training example (SST-2 16-shot seed 100 from ``../shared/data`` when present: 32 examples; else Rotten
Tomatoes k_shot=16), z-scored and shaped, as one RLPrompt step needs it:

- ``batched``: all prompts × all examples in one ``PromptScorer.logits`` call; ``{x}``'s keys/values are
  computed once up front and only the prompt positions run. The ``P`` prompts of an example run as one
  sequence of ``P·L`` positions against its cache (a mask keeps them apart), so no copy of the cache is
  made per prompt.
- ``batched, before``: the scorer's previous multi-prompt path, kept here for comparison: the split's cache
  padded to its longest example, copied ``P`` times (``repeat``) and copied once more into a fresh
  ``DynamicCache`` on every call, one (prompt, example) sequence each.
- ``per-prompt``: one ``PromptScorer.uncached_suffix_logits`` call per prompt, running ``{x}{prompt}``
  through the whole model (what the original does, minus its padding to a fixed length).

All give the same rewards (checked). Per-token throughput counts the real positions each variant computes:
the ``P·B·L`` prompt positions for the cached ones, every ``x`` token as well for the per-prompt loop (which
also computes padding, not counted); the reference is a plain forward pass over every ``x`` alone, length-
bucketed, no prompt. Variants alternate so machine noise hits all alike; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import bench_lm, bench_task
from transformers import DynamicCache

from objectives.scoring import PromptScorer
from objectives.tasks import verbalizer_ids
from tuners.rlprompt.sql import shaped_rewards, task_rewards


@torch.no_grad()
def before_logits(scorer: PromptScorer, prompts: torch.Tensor, chunk_size: int = 64) -> torch.Tensor:
    """The previous ``PromptScorer.logits`` for prompts ``(P, L, d)`` on every example → ``(P, N, C)``."""
    lm = scorer.lm
    padded = scorer.padded_cache()  # the split's cache padded to its longest example, as it used to be kept
    lengths = torch.tensor(scorer._lengths, device=lm.device)
    width = padded[0][0].shape[2]
    mask = (torch.arange(width, device=lm.device) < lengths[:, None]).long()
    n_prompts, length, _ = prompts.shape
    step = max(1, chunk_size // n_prompts)
    out = []
    for start in range(0, scorer.n, step):
        rows = torch.arange(start, min(start + step, scorer.n), device=lm.device)
        layers = [(k[rows].repeat(n_prompts, 1, 1, 1), v[rows].repeat(n_prompts, 1, 1, 1)) for k, v in padded]
        embeds = prompts.repeat_interleave(len(rows), dim=0)
        ones = torch.ones(embeds.shape[0], length, dtype=torch.long, device=lm.device)
        positions = lengths[rows].repeat(n_prompts)[:, None] + torch.arange(length, device=lm.device)
        with lm.autocast():
            hidden = lm.body(
                inputs_embeds=embeds,
                attention_mask=torch.cat([mask[rows].repeat(n_prompts, 1), ones], dim=1),
                position_ids=positions,
                cache=DynamicCache(layers),
                use_cache=True,
            ).last_hidden_state
            out.append(scorer._verbalize(hidden[:, -1]).view(n_prompts, len(rows), -1))
    return torch.cat(out, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gpt2-shaped", help="gpt2-shaped (124M random) or any model spec")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lm = bench_lm(args.model)
    task, source = bench_task()
    texts, labels = task.texts("train"), torch.tensor(task.labels("train"))
    vids = verbalizer_ids(lm.tokenizer, [" terrible", " great"])
    start = time.perf_counter()
    scorer = PromptScorer(lm, texts, template="suffix", verbalizer_ids=vids, use_cache=True, chunk_size=64)
    cache_s = time.perf_counter() - start
    gen = torch.Generator().manual_seed(0)
    lengths = [len(lm.tokenizer.encode(t)) for t in texts]

    def reward(logits: torch.Tensor) -> torch.Tensor:
        return shaped_rewards(task_rewards(logits, labels), old_min=0.0, old_max=1.0, new_min=0.0, new_max=5.0)

    @torch.no_grad()
    def batched(prompts: torch.Tensor) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        out = reward(scorer.logits(prompts))
        return time.perf_counter() - start, out

    @torch.no_grad()
    def before(prompts: torch.Tensor) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        out = reward(before_logits(scorer, prompts))
        return time.perf_counter() - start, out

    @torch.no_grad()
    def per_prompt(prompts: torch.Tensor) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        out = reward(torch.stack([scorer.uncached_suffix_logits(p) for p in prompts]))
        return time.perf_counter() - start, out

    def draw() -> torch.Tensor:
        ids = torch.randint(len(lm.embeddings), (args.prompts, args.prompt_len), generator=gen)
        return lm.embeddings[ids].float()

    @torch.no_grad()
    def plain(prompts: torch.Tensor) -> tuple[float, None]:
        start = time.perf_counter()
        for chunk in scorer._chunks:  # a plain forward pass over every x, no prompt, no cache kept
            scorer._input_cache(chunk, keep=False)
        return time.perf_counter() - start, None

    warm = draw()
    _, a = batched(warm)
    _, b = per_prompt(warm)
    _, c = before(warm)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # same rewards either way
    torch.testing.assert_close(a, c, atol=1e-3, rtol=1e-3)
    variants = {"batched": batched, "before": before, "per_prompt": per_prompt, "plain": plain}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.reps):
        prompts = draw()
        for name, variant in variants.items():
            times[name].append(variant(prompts)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    cached_tokens = args.prompts * len(texts) * args.prompt_len
    uncached_tokens = args.prompts * sum(scorer._lengths[i] + args.prompt_len for i in range(scorer.n))
    rate = {
        "batched": cached_tokens / med["batched"],
        "before": cached_tokens / med["before"],
        "per_prompt": uncached_tokens / med["per_prompt"],
        "plain": sum(scorer._lengths) / med["plain"],
    }
    print(
        f"model={lm.spec} prompts={args.prompts} prompt_len={args.prompt_len} threads={args.threads} "
        f"data={source}: {len(texts)} examples, mean {statistics.mean(lengths):.1f} tokens, max {max(lengths)}; "
        f"{args.reps} reps each"
    )
    print(f"input cache built once (not per step):          {cache_s * 1000:9.1f} ms")
    print(f"reward eval, per-prompt loop, no cache:         {med['per_prompt'] * 1000:9.1f} ms")
    print(f"reward eval, one batched call with input cache: {med['batched'] * 1000:9.1f} ms")
    print(f"speed-up:                                       {med['per_prompt'] / med['batched']:9.2f}x")
    print(f"reward eval, batched, before (repeat + copy):   {med['before'] * 1000:9.1f} ms")
    print(f"batched now vs before:                          {med['before'] / med['batched']:9.2f}x")
    print(
        f"per-token throughput (positions/s): plain forward over x {rate['plain']:6.0f}; per-prompt loop "
        f"{rate['per_prompt']:6.0f} ({rate['per_prompt'] / rate['plain']:.2f} of plain, its padding included)"
    )
    print(
        f"  batched before {rate['before']:6.0f} ({rate['before'] / rate['plain']:.2f} of plain), "
        f"batched now {rate['batched']:6.0f} ({rate['batched'] / rate['plain']:.2f} of plain)"
    )


if __name__ == "__main__":
    main()
