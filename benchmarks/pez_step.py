"""PEZ step time with the frozen input cache against without it, measured side by side in one run.

    python benchmarks/pez_step.py                       # GPT-2-small-shaped model (124M, random weights)
    python benchmarks/pez_step.py --model smollm2-135m  # the demo's real LM

Both variants do the same PEZ step (project, task loss at the projection, gradient, AdamW update) on the
same batch of the same examples (SST-2 16-shot from ``../shared/data`` when present, else Rotten Tomatoes):

- ``cached``: ``{x}``'s keys/values computed once up front; the step runs only the ``L`` prompt positions.
- ``uncached``: the step runs ``{x}{prompt}`` through the whole model, forward and backward.

Also printed: the bare compute floor of the work a cached step needs (forward+backward of the ``L``
prompt positions against a fixed key/value cache through the model alone). Steps alternate between the two
variants so machine noise hits both alike; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import bench_lm, bench_task

from objectives.metrics import nearest_tokens, task_ce
from objectives.scoring import PromptScorer
from objectives.tasks import verbalizer_ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gpt2-shaped", help="gpt2-shaped (124M random) or any model spec")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lm = bench_lm(args.model)
    task, _ = bench_task()
    texts, labels = task.texts("train"), torch.tensor(task.labels("train"))
    vids = verbalizer_ids(lm.tokenizer, [" terrible", " great"])
    scorer = PromptScorer(lm, texts, template="suffix", verbalizer_ids=vids, use_cache=True)
    embeds = lm.embeddings
    gen = torch.Generator().manual_seed(0)
    soft = embeds[torch.randint(len(embeds), (args.prompt_len,), generator=gen)].clone().requires_grad_(True)
    opt = torch.optim.AdamW([soft], lr=0.1)
    batches = [torch.randperm(len(texts), generator=gen)[: args.batch] for _ in range(args.steps + 2)]
    lengths = [len(lm.tokenizer.encode(t)) for t in texts]

    def step(rows: torch.Tensor, cached: bool) -> float:
        start = time.perf_counter()
        ids = nearest_tokens(soft.detach(), embeds)[0]
        at = embeds[ids].clone().requires_grad_(True)
        logits = scorer.logits(at, rows) if cached else scorer.uncached_suffix_logits(at, rows)
        (grad,) = torch.autograd.grad(task_ce(logits, labels[rows]), at)
        opt.zero_grad()
        soft.grad = grad
        opt.step()
        return time.perf_counter() - start

    floor_kv = [(k[batches[0]], v[batches[0]]) for k, v in scorer._kv]  # the resident cache, read for the floor

    def floor() -> float:
        from transformers import DynamicCache

        start = time.perf_counter()
        x = torch.randn(args.batch, args.prompt_len, embeds.shape[1], requires_grad=True)
        width = floor_kv[0][0].shape[2]
        mask = torch.ones(args.batch, width + args.prompt_len, dtype=torch.long)
        out = lm.body(inputs_embeds=x, attention_mask=mask, cache=DynamicCache(floor_kv), use_cache=True)
        out.last_hidden_state[:, -1].sum().backward()
        return time.perf_counter() - start

    for rows in batches[:2]:  # warm-up
        step(rows, True), step(rows, False), floor()
    times: dict[str, list[float]] = {"cached": [], "uncached": [], "floor": []}
    for rows in batches[2:]:
        times["cached"].append(step(rows, True))
        times["uncached"].append(step(rows, False))
        times["floor"].append(floor())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"model={lm.spec} batch={args.batch} prompt_len={args.prompt_len} threads={args.threads} "
        f"examples: mean {statistics.mean(lengths):.1f} tokens, max {max(lengths)}; {args.steps} steps each"
    )
    print(f"PEZ step, uncached (x + prompt, fwd+bwd): {med['uncached'] * 1000:8.1f} ms")
    print(f"PEZ step, frozen input cache:             {med['cached'] * 1000:8.1f} ms")
    print(f"speed-up from the cache:                  {med['uncached'] / med['cached']:8.2f}x")
    print(
        f"bare floor (prompt positions vs fixed KV): {med['floor'] * 1000:7.1f} ms  "
        f"(cached step / floor = {med['cached'] / med['floor']:.2f})"
    )


if __name__ == "__main__":
    main()
