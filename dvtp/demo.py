"""``python -m dvtp.demo``: RedVTP pruning on a small built-in model, in well under a minute on CPU.

Builds a tiny LLaDA-style LM (random weights), a prompt of text embeddings with a block
of synthetic "visual" embeddings, then generates without pruning and with RedVTP at
keep 0.5 and 0.25 (and the "uniform" baseline), printing per-step sequence lengths,
kept counts, timings, the kernel backends used, and whether the outputs agree.
"""
from __future__ import annotations

import argparse
import time

import torch

import dvtp
from dvtp import models


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="dvtp demo: RedVTP visual-token pruning on a tiny diffusion LM")
    p.add_argument("--visual", type=int, default=1500, help="number of synthetic visual tokens")
    p.add_argument("--text", type=int, default=40, help="text tokens around the image")
    p.add_argument("--gen", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--block", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend", default=None, help="dvtp_kernels backend (default: best usable)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = models.tiny_llada_config(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=4)
    model = models.llada_lm(config, seed=0)
    g = torch.Generator().manual_seed(0)
    start = args.text // 2
    n = start + args.visual + (args.text - start)
    ids = torch.randint(0, config.vocab_size - 1, (1, n), generator=g)
    with torch.no_grad():
        prompt = model.get_input_embeddings()(ids)
        prompt[:, start : start + args.visual] = torch.randn(1, args.visual, config.hidden_size, generator=g) * 0.5
    span = (start, args.visual)
    print(f"model: LLaDA-style LM, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"{config.num_attention_heads} heads, vocab {config.vocab_size} (random weights)")
    print(f"prompt: {n} embeddings, visual span {span}; gen_length {args.gen}, steps {args.steps}, "
          f"block_length {args.block}, temperature 0")

    common = dict(inputs_embeds=prompt, visual_span=span, gen_length=args.gen, steps=args.steps,
                  block_length=args.block, progress=args.progress)
    dvtp.generate(model, **{**common, "gen_length": args.block, "steps": 1, "block_length": args.block})  # warm-up
    runs = [("unpruned", None)]
    runs += [(f"redvtp keep {r}", dvtp.PruningConfig(keep_ratio=r, backend=args.backend)) for r in (1.0, 0.5, 0.25)]
    runs += [("uniform keep 0.25", dvtp.PruningConfig(keep_ratio=0.25, policy="uniform", backend=args.backend))]
    base = None
    for name, pruning in runs:
        t0 = time.perf_counter()
        out = dvtp.generate(model, pruning=pruning, **common)
        wall = time.perf_counter() - t0
        if base is None:
            base, base_wall = out, wall
        same = torch.equal(out.sequences, base.sequences)
        agree = (out.sequences == base.sequences).float().mean().item()
        lens = out.tokens_per_step
        print(f"\n[{name}] {wall:.2f}s ({base_wall / wall:.2f}x vs unpruned), {out.num_forwards} forwards")
        print(f"  tokens per step: {lens[0]} -> {lens[-1]}" if lens[0] != lens[-1] else f"  tokens per step: {lens[0]}")
        print(f"  step times (s): {' '.join(f'{t:.3f}' for t in out.step_times)}")
        if out.kept_indices[0] is not None:
            kept = out.kept_indices[0]
            print(f"  kept {kept.numel()}/{args.visual} visual tokens (first: {kept[:8].tolist()}...)")
            if out.scoring_time is not None:
                print(f"  scoring step {out.scoring_time:.3f}s (lse from attention kernel: {out.lse_from_attention}),"
                      f" select+compact {1000 * out.prune_time:.1f} ms")
            else:
                print(f"  select+compact {1000 * out.prune_time:.1f} ms (no scoring pass for this policy)")
            print(f"  kernel backends: {out.backends}")
        print(f"  output: {out.sequences[0].tolist()}")
        print(f"  agrees with unpruned: {'identical' if same else f'{100 * agree:.0f}% of positions'}")
    print("\n(random weights: the 'image' is noise the model attends to, so pruned outputs are not expected"
          " to match the unpruned ones except at keep 1.0; timings on a shared CPU are noisy)")


if __name__ == "__main__":
    main()
