#!/usr/bin/env python3
"""Time GPT-2 training steps of Hugging Face GPT2LMHeadModel on CPU (float32).

Baseline for ferrotron's CPU trainer. Each step: random token batch, forward,
mean CE vs random targets, backward, clip_grad_norm_(1.0), AdamW step,
zero_grad. Dropout is 0. Prints one JSON line (and writes it to --out if given).

Examples:
    python3 benchmarks/cpu_vs_pytorch/pytorch_bench.py --vocab 50257 --n-layer 4 \
        --n-head 4 --n-embd 128 --seq 128 --batch 8 --steps 10 --threads 2
    python3 benchmarks/cpu_vs_pytorch/pytorch_bench.py --vocab 50257 --n-layer 2 \
        --n-head 12 --n-embd 768 --seq 256 --batch 4 --steps 5 --threads 2 --attn eager
"""

import argparse
import json
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
        n_positions=max(1024, a.seq),
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

    def step():
        x = torch.randint(0, V, (B, T), generator=g)
        y = torch.randint(0, V, (B, T), generator=g)
        logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.view(-1, V), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(a.warmup_steps):
        step()
    times = []
    last_loss = None
    for _ in range(a.steps):
        t0 = time.perf_counter()
        last_loss = step()
        times.append(time.perf_counter() - t0)
    total = sum(times)
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
        "tokens_per_s": B * T * a.steps / total if total > 0 else None,
        "step_ms": 1000.0 * total / max(1, a.steps),
        "step_ms_min": 1000.0 * min(times) if times else None,
        "last_loss": last_loss,
    }
    line = json.dumps(res)
    print(line)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
