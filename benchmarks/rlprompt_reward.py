"""RLPrompt reward evaluation with the frozen input cache against a per-prompt loop without it, in one run.

    python benchmarks/rlprompt_reward.py                       # GPT-2-small-shaped model (124M, random weights)
    python benchmarks/rlprompt_reward.py --model smollm2-135m  # the demo's real LM

One reward evaluation = the gap reward of ``--prompts`` prompts (``--prompt-len`` random tokens each) on every
training example (SST-2 16-shot seed 100 from ``../shared/data`` when present: 32 examples; else Rotten
Tomatoes k_shot=16), z-scored and shaped, as one RLPrompt step needs it:

- ``batched``: all prompts × all examples in one ``PromptScorer.logits`` call; ``{x}``'s keys/values are
  computed once up front and only the prompt positions run.
- ``per-prompt``: one ``PromptScorer.uncached_suffix_logits`` call per prompt, running ``{x}{prompt}``
  through the whole model (what the original does, minus its padding to a fixed length).

Both give the same rewards (checked). Variants alternate so machine noise hits both alike; medians are
reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import bench_lm, bench_task

from objectives.scoring import PromptScorer
from objectives.tasks import verbalizer_ids
from tuners.rlprompt.sql import shaped_rewards, task_rewards


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
    def per_prompt(prompts: torch.Tensor) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        out = reward(torch.stack([scorer.uncached_suffix_logits(p) for p in prompts]))
        return time.perf_counter() - start, out

    def draw() -> torch.Tensor:
        ids = torch.randint(len(lm.embeddings), (args.prompts, args.prompt_len), generator=gen)
        return lm.embeddings[ids].float()

    warm = draw()
    _, a = batched(warm)
    _, b = per_prompt(warm)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # same rewards either way
    times: dict[str, list[float]] = {"batched": [], "per_prompt": []}
    for _ in range(args.reps):
        prompts = draw()
        times["batched"].append(batched(prompts)[0])
        times["per_prompt"].append(per_prompt(prompts)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"model={lm.spec} prompts={args.prompts} prompt_len={args.prompt_len} threads={args.threads} "
        f"data={source}: {len(texts)} examples, mean {statistics.mean(lengths):.1f} tokens, max {max(lengths)}; "
        f"{args.reps} reps each"
    )
    print(f"input cache built once (not per step):          {cache_s * 1000:9.1f} ms")
    print(f"reward eval, per-prompt loop, no cache:         {med['per_prompt'] * 1000:9.1f} ms")
    print(f"reward eval, one batched call with input cache: {med['batched'] * 1000:9.1f} ms")
    print(f"speed-up:                                       {med['per_prompt'] / med['batched']:9.2f}x")


if __name__ == "__main__":
    main()
