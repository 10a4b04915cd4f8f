#!/usr/bin/env python3
"""Time GPT-2 training steps of Hugging Face GPT2LMHeadModel on CPU (float32).

Baseline for ferrotron's CPU trainer. Each step: forward, mean CE, backward,
clip_grad_norm_(1.0), AdamW step, zero_grad. Dropout is 0. The token batches are
made before the timed loop (random tokens: speed does not depend on their values),
so only the training step is timed. Prints one JSON line with every step's time
(and writes it to --out if given); the statistic is the median timed step.

Examples:
    python3 benchmarks/cpu_vs_pytorch/pytorch_bench.py --vocab 50257 --n-layer 4 \
        --n-head 4 --n-embd 128 --seq 128 --batch 8 --steps 10 --threads 2
    python3 benchmarks/cpu_vs_pytorch/pytorch_bench.py --vocab 50257 --n-layer 2 \
        --n-head 12 --n-embd 768 --seq 256 --batch 4 --steps 5 --threads 2 --attn eager
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--n-positions", type=int, default=None, help="default: max(1024, seq)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup-steps", type=int, default=3, help="untimed steps")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON line here")
    a = ap.parse_args()

    if a.threads is not None:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = GPT2Config(
        vocab_size=a.vocab,
        n_positions=a.n_positions or max(1024, a.seq),
        n_embd=a.n_embd,
        n_layer=a.n_layer,
        n_head=a.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        activation_function="gelu_new",
    )
    cfg._attn_implementation = a.attn
    model = GPT2LMHeadModel(cfg).float()
    model.train()
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    decay = [p for p in params if p.dim() >= 2]
    nodecay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": nodecay, "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    g = torch.Generator().manual_seed(a.seed + 1)
    B, T, V = a.batch, a.seq, a.vocab

    batches = [(torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g))
               for _ in range(a.warmup_steps + a.steps)]

    def step(x, y):
        logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.view(-1, V), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    times = []
    last_loss = None
    for i, (x, y) in enumerate(batches):
        t0 = time.perf_counter()
        last_loss = step(x, y)
        if i >= a.warmup_steps:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    res = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn": a.attn,
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "config": {
            "vocab_size": V,
            "n_layer": a.n_layer,
            "n_head": a.n_head,
            "n_embd": a.n_embd,
            "seq": T,
            "batch": B,
            "n_params": n_params,
        },
        "steps": a.steps,
        "warmup_steps": a.warmup_steps,
        "tokens_per_s": B * T / med,
        "step_ms": 1000.0 * med,
        "step_ms_all": [1000.0 * t for t in times],
        "last_loss": last_loss,
    }
    line = json.dumps(res)
    print(line)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
