"""Validation perplexity of a character LM with structured, per-element or no dropout.

Trains fedsim's ``charlm`` (vocab 80, embedding 8, 2 x --hidden) centrally on the embedded
corpus (Python's reference docs, ``data.dataset.name: text``) for the same number of
steps with the same seeds in each variant, then reports validation perplexity
(exp of the mean per-character loss on the held-out last 10% of the text). The default
(25,000 characters, ~110 epochs) is the overfitting regime where dropout matters.

Usage::

    python benchmarks/dropout_perplexity.py [--steps 1000] [--max-chars 25000]
        [--hidden 128] [--seeds 0,1] [--p 0.3]

Prints one line per variant and seed, then the means and, last,
``structured_over_element_perplexity: X``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from fedsim.config.schema import TextDataset
from fedsim.data.datasets import load_text
from fedsim.evaluation import evaluate_model
from fedsim.models.charlm import CharLM

VARIANTS = {"none": (0.0, False), "element": (None, True), "structured": (None, False)}


def train(
    variant: str, p: float, seed: int, steps: int, batch: int, hidden: int, data: object
) -> float:
    """Train one model; return its final validation perplexity."""
    x, y, xv, yv = data  # type: ignore[misc]
    drop, per_element = VARIANTS[variant]
    torch.manual_seed(seed)
    model = CharLM(80, 8, hidden, 2, p if drop is None else drop, per_element)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (batch,), generator=gen)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xt[idx]), yt[idx]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    loss, _ = evaluate_model(model, xv, yv, 64)
    return math.exp(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--p", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-chars", type=int, default=25_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_text(TextDataset(max_chars=args.max_chars))
    data = (ds.x, ds.y, ds.x_test, ds.y_test)
    print(
        f"{len(ds.x)} train / {len(np.asarray(ds.x_test))} validation sequences of 80 chars; "
        f"{args.steps} steps of batch {args.batch}; dropout p = {args.p}"
    )
    result: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for seed in (int(s) for s in args.seeds.split(",")):
        for variant in VARIANTS:
            start = time.perf_counter()
            ppl = train(variant, args.p, seed, args.steps, args.batch, args.hidden, data)
            result[variant].append(ppl)
            print(
                f"{variant:<11} seed {seed}: validation perplexity {ppl:.3f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    means = {v: statistics.fmean(r) for v, r in result.items()}
    for v, m in means.items():
        print(f"mean {v:<11} {m:.3f}")
    print(f"structured_over_element_perplexity: {means['structured'] / means['element']:.4f}")


if __name__ == "__main__":
    main()
