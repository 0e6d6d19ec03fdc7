"""Evaluating a prompt on a long-tailed test split: the padded scorer, the length-bucketed one, and the floor.

    python benchmarks/eval_split.py                        # SmolLM2-135M (the demo's LM)
    python benchmarks/eval_split.py --model gpt2-shaped    # GPT-2-small-shaped model (124M, random weights)
    python benchmarks/eval_split.py --write-folder /tmp/longtail   # also write the split as an LM-BFF folder

The split (built here, deterministically): ``--n`` SST-2 test sentences (``../shared/data``; Rotten Tomatoes
when absent), mostly single sentences plus a few same-label concatenations cut to 50..117 tokens, so that,
with SmolLM2's tokenizer, the mean is ~22 tokens and the longest 117: the shape of the held-out split whose
final evaluation took 249 s of a 271 s PEZ run.

Printed side by side, in one run:

- (a) before: the previous scorer's evaluation of that split (every example padded to the split's longest,
  so its cache was over the 512 MB budget: a streamed frozen pass per call, ``P`` copies of each chunk's
  cache, and a padded pass of its own for the no-prompt baseline). All its calls have one shape, so by default
  only the first ``--padded-calls`` of each kind are timed and the total is scaled by examples.
- (b) now: what ``objectives.evaluation.evaluate`` does with the test split: build the scorer, score
  ``--prompts`` prompts on every example, read the no-prompt baseline (from the same frozen pass).
- (c) the floor: one no-grad forward pass over the split's real tokens only, packed into rows of ``--pack``.

The target is (b) within 1.5x of (c).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _common import SST2, bench_lm
from transformers import DynamicCache

from objectives.models import LanguageModel
from objectives.scoring import PromptScorer
from objectives.tasks import Example, load_task, read_tsv, verbalizer_ids

LONGEST = 117
SHORTEST_LONG = 50


def longtail_split(tokenizer: object, n: int = 500, *, n_long: int = 12, seed: int = 0) -> list[Example]:
    """``n`` labelled examples: ``n - n_long`` single sentences of at most 38 tokens and ``n_long``
    concatenations of same-label sentences cut to lengths from 50 to 117 tokens (denser near 50)."""

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    if (SST2 / "test.tsv").is_file():
        pool = read_tsv(SST2 / "test.tsv", num_classes=2)
    else:
        pool = list(load_task("rotten-tomatoes", num_classes=2, k_shot=16, n_test=2000).test)
    rng = random.Random(seed)
    pool = rng.sample(pool, len(pool))
    singles = [e for e in pool if len(encode(e.text)) <= 38][: n - n_long]
    rest = [e for e in pool if e not in set(singles)]
    longs, at = [], 0
    for j in range(n_long):
        target = round(SHORTEST_LONG + (LONGEST - SHORTEST_LONG) * (j / max(1, n_long - 1)) ** 1.5)
        label, parts = j % 2, []
        while len(encode(" ".join(parts))) < target:
            example, at = rest[at % len(rest)], at + 1
            if example.label == label:
                parts.append(example.text)
        longs.append(Example(text=tokenizer.decode(encode(" ".join(parts))[:target]).strip(), label=label))
    examples = singles + longs
    rng.shuffle(examples)
    return examples


def write_folder(folder: Path, test: list[Example]) -> None:
    """An LM-BFF folder: train/dev from SST-2 16-shot (seed 100), ``test`` as given."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text((SST2 / name).read_text())
    (folder / "test.tsv").write_text("sentence\tlabel\n" + "".join(f"{e.text}\t{e.label}\n" for e in test))


@torch.no_grad()
def padded_evaluation(
    lm: LanguageModel, scorer: PromptScorer, prompts: torch.Tensor, chunk: int, max_calls: int
) -> tuple[float, int, int]:
    """The previous scorer's evaluation of a split over its cache budget: every example padded to the
    split's longest; ``logits`` streams (a frozen pass per ``chunk // P`` examples, then the prompt pass on
    ``P`` copies of its cache), and ``empty_prompt_logits`` runs its own padded pass.

    Every padded call has the same shape, so only the first ``max_calls`` of each kind are timed (all
    when 0) and the total is scaled by examples. Returns (seconds, calls timed, calls in all).
    """
    ids = torch.nn.utils.rnn.pad_sequence(scorer._tokens, batch_first=True)
    lengths = torch.tensor(scorer._lengths, device=lm.device)
    width = ids.shape[1]
    mask = (torch.arange(width, device=lm.device) < lengths[:, None]).long()
    n_prompts, length, _ = prompts.shape
    total, timed, calls = 0.0, 0, 0
    for step, with_prompt in ((max(1, chunk // n_prompts), True), (chunk, False)):
        starts = list(range(0, scorer.n, step))
        calls += len(starts)
        done, spent = 0, 0.0
        for start in starts[: max_calls or None]:
            sel = torch.arange(start, min(start + step, scorer.n), device=lm.device)
            began = time.perf_counter()
            positions = torch.arange(width, device=lm.device).expand(len(sel), -1)
            with lm.autocast():
                out = lm.body(
                    input_ids=ids[sel], attention_mask=mask[sel], position_ids=positions, use_cache=with_prompt
                )
                if with_prompt:
                    layers = [(k.repeat(n_prompts, 1, 1, 1), v.repeat(n_prompts, 1, 1, 1)) for k, v, *_ in out.cache]
                    embeds = prompts.repeat_interleave(len(sel), dim=0)
                    ones = torch.ones(embeds.shape[0], length, dtype=torch.long, device=lm.device)
                    lm.body(
                        inputs_embeds=embeds,
                        attention_mask=torch.cat([mask[sel].repeat(n_prompts, 1), ones], dim=1),
                        position_ids=lengths[sel].repeat(n_prompts)[:, None] + torch.arange(length, device=lm.device),
                        cache=DynamicCache(layers),
                        use_cache=True,
                    )
            spent += time.perf_counter() - began
            done += len(sel)
            timed += 1
        total += spent * scorer.n / done
    return total, timed, calls


@torch.no_grad()
def floor_pass(lm: LanguageModel, scorer: PromptScorer, *, pack: int, rows_per_call: int) -> float:
    """One forward pass over the split's real tokens and nothing else: every example's tokens end to end,
    cut into rows of ``pack`` tokens (attention then spans example boundaries: a compute floor, not a
    meaningful output). Returns seconds."""
    flat = torch.cat(scorer._tokens)
    n_rows = -(-len(flat) // pack)
    flat = torch.nn.functional.pad(flat, (0, n_rows * pack - len(flat))).view(n_rows, pack).to(lm.device)
    began = time.perf_counter()
    for start in range(0, n_rows, rows_per_call):
        with lm.autocast():
            lm.body(input_ids=flat[start : start + rows_per_call], use_cache=False)
    return time.perf_counter() - began


@torch.no_grad()
def new_evaluation(
    lm: LanguageModel, texts: list[str], vids: list[int], prompts: torch.Tensor, **kwargs: Any
) -> tuple[float, PromptScorer]:
    """What ``objectives.evaluation.evaluate`` does with the test split: build its scorer, score the prompts,
    read the no-prompt baseline. Returns (seconds, scorer)."""
    began = time.perf_counter()
    scorer = PromptScorer(lm, texts, template="suffix", verbalizer_ids=vids, **kwargs)
    scorer.logits(prompts)
    scorer.empty_prompt_logits()
    return time.perf_counter() - began, scorer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, gpt2-shaped (124M random) or a spec")
    parser.add_argument("--n", type=int, default=500, help="examples in the split")
    parser.add_argument("--prompts", type=int, default=1, help="prompts scored (PEZ's evaluate scores 2)")
    parser.add_argument("--prompt-len", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=64, help="eval_chunk")
    parser.add_argument("--padded-calls", type=int, default=2, help="padded calls timed per kind (0: all)")
    parser.add_argument("--pack", type=int, default=128, help="tokens per row of the floor's packed pass")
    parser.add_argument("--resident", action="store_true", help="also time the new scorer with no memory budget")
    parser.add_argument("--reps", type=int, default=1, help="repetitions of (b) and (c); medians are printed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write-folder", type=Path, help="also write the split as an LM-BFF folder here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lm = bench_lm(args.model)
    examples = longtail_split(lm.tokenizer, args.n)
    if args.write_folder:
        write_folder(args.write_folder, examples)
        print(f"wrote {args.write_folder} (train/dev: {SST2}, test: this split)")
    texts = [e.text for e in examples]
    vids = verbalizer_ids(lm.tokenizer, [" terrible", " great"])
    gen = torch.Generator().manual_seed(0)
    prompts = lm.embeddings[torch.randint(len(lm.embeddings), (args.prompts, args.prompt_len), generator=gen)]

    new_evaluation(lm, texts[:16], vids, prompts, chunk_size=args.chunk)  # warm-up: first calls pay for setup
    news, floors = [], []
    for _ in range(args.reps):  # (b) and (c) alternate so machine noise hits both alike
        seconds, scorer = new_evaluation(lm, texts, vids, prompts, chunk_size=args.chunk)
        news.append(seconds)
        floors.append(floor_pass(lm, scorer, pack=args.pack, rows_per_call=max(1, args.chunk * 32 // args.pack)))
    new_s, floor_s = statistics.median(news), statistics.median(floors)
    padded_s, timed, calls = padded_evaluation(lm, scorer, prompts, args.chunk, args.padded_calls)
    resident_s = None
    if args.resident:
        resident_s, _ = new_evaluation(lm, texts, vids, prompts, chunk_size=args.chunk, cache_budget_bytes=float("inf"))
    lengths = scorer._lengths
    real, longest = sum(lengths), max(lengths)
    padded_tokens = sum(len(c) * lengths[c[-1]] for c in scorer._chunks)
    print(
        f"model={lm.spec} threads={args.threads} split: {len(texts)} examples, mean {real / len(texts):.1f} tokens, "
        f"longest {longest}; {args.prompts} prompt(s) of {args.prompt_len} tokens; eval_chunk={args.chunk}"
    )
    print(
        f"tokens: real {real}, padded to the longest {len(texts) * longest} ({len(texts) * longest / real:.2f}x), "
        f"in {len(scorer._chunks)} length-bucketed chunks {padded_tokens} ({padded_tokens / real:.2f}x); "
        f"resident cache {scorer.cache_bytes() / 1e6:.0f} MB "
        f"({'kept' if scorer.cached else 'over the 512 MB budget: streamed'})"
    )
    what = "all" if timed == calls else f"{timed} of {calls} calls timed, scaled"
    print(f"(a) before: padded scorer, streamed, baseline pass of its own: {padded_s:8.1f} s  ({what})")
    print(f"(b) now: length-bucketed scorer: build + prompt + baseline:    {new_s:8.1f} s")
    if resident_s is not None:
        print(f"    now, cache kept resident (no budget):                     {resident_s:8.1f} s")
    print(f"(c) floor: one pass over the real tokens, packed:              {floor_s:8.1f} s")
    print(f"(b) / (c) = {new_s / floor_s:.2f} (target <= 1.5); (a) / (b) = {padded_s / new_s:.1f}x faster")


if __name__ == "__main__":
    main()
