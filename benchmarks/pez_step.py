"""PEZ step time with the frozen input cache against without it, and with the fluent projection against
without it, measured side by side in one run.

    python benchmarks/pez_step.py                       # GPT-2-small-shaped model (124M, random weights)
    python benchmarks/pez_step.py --model smollm2-135m  # the demo's real LM
    python benchmarks/pez_step.py --model smollm2-135m --fluent-top-k 50 --skip-uncached
    python benchmarks/pez_step.py --model smollm2-135m --device cuda --skip-uncached   # GPU: + peak memory

All variants do the same PEZ step (project, task loss at the projection, gradient, AdamW update) on the
same batch of the same examples (SST-2 16-shot from ``../shared/data`` when present, else Rotten Tomatoes):

- ``cached``: ``{x}``'s keys/values computed once up front; the step runs only the ``L`` prompt positions.
- ``uncached``: the step runs ``{x}{prompt}`` through the whole model, forward and backward.
- ``fluent``: ``cached`` with the projection restricted to the LM's top-k next tokens at each position
  (``objectives.fluent.fluent_projection``), with the run's memo of candidates per prefix, as ``tuners/pez.py``
  runs it: the LM runs only for prefixes the run has not projected onto before.
- ``fluent, every prefix new``: the same without the memo, the worst case: ``L`` one-token cached forward
  passes without gradient every step.

The fluent variants each follow their own trajectory (their gradient is taken at their own projection). The
projections alone are timed apart: the plain one (``nearest_tokens`` over the vocabulary) and the fluent one
without memo.

Also printed: the bare compute floor of the work a cached step needs (forward+backward of the ``L``
prompt positions against a fixed key/value cache through the model alone). Steps alternate between the
variants so machine noise hits all alike; medians are reported. On CUDA (``--device cuda``: the model as
``load_lm`` holds it there, a bf16 body with an fp32 head) each timing waits for the device at both ends, and
the peak memory each variant allocated is printed too.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import bench_lm, bench_task

from objectives.fluent import CandidateMemo, fluent_projection
from objectives.metrics import nearest_tokens, task_ce
from objectives.models import LanguageModel, cast_body, load_lm, start_token_id
from objectives.scoring import PromptScorer
from objectives.tasks import verbalizer_ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gpt2-shaped", help="gpt2-shaped (124M random) or any model spec")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fluent-top-k", type=int, default=50, help="k of the fluent variants")
    parser.add_argument("--skip-uncached", action="store_true", help="leave out the slow uncached variant")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.model == "gpt2-shaped":
        lm = _on_device(bench_lm(args.model), args.device)
    else:
        lm = load_lm(args.model, args.device)
    device = lm.device
    task, _ = bench_task()
    texts, labels = task.texts("train"), torch.tensor(task.labels("train"), device=device)
    vids = verbalizer_ids(lm.tokenizer, [" terrible", " great"])
    scorer = PromptScorer(lm, texts, template="suffix", verbalizer_ids=vids, use_cache=True)
    embeds = lm.embeddings
    gen = torch.Generator().manual_seed(0)
    init = embeds[torch.randint(len(embeds), (args.prompt_len,), generator=gen)].clone()
    batches = [torch.randperm(len(texts), generator=gen)[: args.batch] for _ in range(args.steps + 2)]
    lengths = [len(lm.tokenizer.encode(t)) for t in texts]
    start_id = start_token_id(lm.tokenizer)
    k = args.fluent_top_k

    class Run:
        """One PEZ trajectory: its continuous prompt, its optimiser and (fluent) its run's candidate memo."""

        def __init__(self, fluent: bool, memo: bool) -> None:
            self.soft = init.clone().requires_grad_(True)
            self.opt = torch.optim.AdamW([self.soft], lr=0.1)
            self.fluent = fluent
            self.memo: CandidateMemo | None = {} if memo else None
            self.passes: list[int] = []  # LM passes of the fluent projection per step

        def project(self) -> torch.Tensor:
            if not self.fluent:
                return nearest_tokens(self.soft.detach(), embeds)[0]
            known = len(self.memo) if self.memo is not None else 0
            ids = fluent_projection(lm, self.soft.detach(), k, start_id=start_id, memo=self.memo)
            # With one prompt, every prefix missing from the memo costs one LM pass and adds one entry.
            self.passes.append(len(self.memo) - known if self.memo is not None else args.prompt_len)
            return ids

    # The plain variants share one trajectory (the same computation two ways); each fluent variant follows its
    # own, as a fluent run would (its gradient is taken at a different projection).
    plain, fluent, fluent_fresh = Run(False, False), Run(True, True), Run(True, False)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def step(run: Run, rows: torch.Tensor, cached: bool = True) -> float:
        start = clock()
        ids = run.project()
        at = embeds[ids].float().clone().requires_grad_(True)
        logits = scorer.logits(at, rows) if cached else scorer.uncached_suffix_logits(at, rows)
        (grad,) = torch.autograd.grad(task_ce(logits, labels[rows.to(device)]), at)
        run.opt.zero_grad()
        run.soft.grad = grad
        run.opt.step()
        return clock() - start

    def projection(run: Run) -> float:
        start = clock()
        run.project()
        return clock() - start

    # The resident cache, read for the floor.
    floor_kv = [(k[batches[0].to(device)], v[batches[0].to(device)]) for k, v in scorer._kv]

    def floor() -> float:
        from transformers import DynamicCache

        start = clock()
        x = torch.randn(args.batch, args.prompt_len, embeds.shape[1], device=device, requires_grad=True)
        width = floor_kv[0][0].shape[2]
        mask = torch.ones(args.batch, width + args.prompt_len, dtype=torch.long, device=device)
        with lm.autocast():
            out = lm.body(inputs_embeds=x, attention_mask=mask, cache=DynamicCache(floor_kv), use_cache=True)
        out.last_hidden_state[:, -1].float().sum().backward()
        return clock() - start

    variants = {
        "cached": lambda rows: step(plain, rows),
        "uncached": lambda rows: step(plain, rows, cached=False),
        "fluent": lambda rows: step(fluent, rows),
        "fluent_fresh": lambda rows: step(fluent_fresh, rows),
        "floor": lambda rows: floor(),
        "project_plain": lambda rows: projection(plain),
        "project_fluent_fresh": lambda rows: projection(fluent_fresh),
    }
    if args.skip_uncached:
        del variants["uncached"]
    for rows in batches[:2]:  # warm-up
        for run_variant in variants.values():
            run_variant(rows)
    fluent.passes.clear()
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, int] = dict.fromkeys(variants, 0)
    for rows in batches[2:]:
        for name, run_variant in variants.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[name].append(run_variant(rows))
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
    med = {name: statistics.median(v) for name, v in times.items()}
    print(
        f"model={lm.spec} device={device} batch={args.batch} prompt_len={args.prompt_len} threads={args.threads} "
        f"examples: mean {statistics.mean(lengths):.1f} tokens, max {max(lengths)}; {args.steps} steps each"
    )
    if device.type == "cuda":
        mib = {name: peak / 2**20 for name, peak in peaks.items()}
        print(
            f"peak MiB allocated: cached step {mib['cached']:.0f}, fluent step {mib['fluent']:.0f}, "
            f"fluent every prefix new {mib['fluent_fresh']:.0f}, floor {mib['floor']:.0f} "
            f"(resident cache {scorer.cache_bytes() / 2**20:.0f} MiB)"
        )
    if "uncached" in med:
        print(f"PEZ step, uncached (x + prompt, fwd+bwd): {med['uncached'] * 1000:8.1f} ms")
    print(f"PEZ step, frozen input cache:             {med['cached'] * 1000:8.1f} ms")
    if "uncached" in med:
        print(f"speed-up from the cache:                  {med['uncached'] / med['cached']:8.2f}x")
    print(
        f"bare floor (prompt positions vs fixed KV): {med['floor'] * 1000:7.1f} ms  "
        f"(cached step / floor = {med['cached'] / med['floor']:.2f})"
    )
    print(f"--- fluent projection, top-{k} ---")
    print(
        f"fluent PEZ step, as the tuner runs it:    {med['fluent'] * 1000:8.1f} ms  "
        f"= {med['fluent'] / med['cached']:.2f}x the plain step (target <= 1.30); "
        f"LM passes per step {statistics.mean(fluent.passes):.1f} (memo of known prefixes)"
    )
    print(
        f"fluent PEZ step, every prefix new:        {med['fluent_fresh'] * 1000:8.1f} ms  "
        f"= {med['fluent_fresh'] / med['cached']:.2f}x the plain step; {args.prompt_len} LM passes per step"
    )
    print(
        f"projection alone: plain (nearest over V) {med['project_plain'] * 1000:.1f} ms; fluent, every prefix new "
        f"({args.prompt_len} one-token cached passes) {med['project_fluent_fresh'] * 1000:.1f} ms"
    )


def _on_device(lm: LanguageModel, device: str) -> LanguageModel:
    """``lm`` as ``load_lm`` holds it on ``device``: on CUDA its body's matrices cast to bf16 once."""
    if device == "cpu":
        return lm
    model = lm.model.to(device)
    moved = LanguageModel(spec=lm.spec, model=model, tokenizer=lm.tokenizer, device=torch.device(device))
    if moved.device.type == "cuda":
        cast_body(model, moved.compute_dtype or torch.float32)
    return moved


if __name__ == "__main__":
    main()
