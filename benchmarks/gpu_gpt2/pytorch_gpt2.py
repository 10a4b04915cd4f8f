"""PyTorch side of benchmarks/gpu_gpt2: HF GPT2LMHeadModel (GPT-2 124M shape, random init) on one
GPU with bf16 autocast, SDPA attention and fused AdamW, optionally torch.compile. Prints one JSON
line: tokens/s (median over timed steps), MFU (llm.c FLOPs, H100 bf16 dense peak 989 TFLOP/s)
and peak allocated memory.

    python3 pytorch_gpt2.py --batch 16 --seq 1024 [--compile] [--steps 10]
"""
import argparse, json, statistics, time
import torch
from transformers import GPT2Config, GPT2LMHeadModel

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--seq", type=int, default=1024)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--compile", action="store_true")
ap.add_argument("--peak-tflops", type=float, default=989.0)
a = ap.parse_args()

torch.manual_seed(0)
cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
cfg._attn_implementation = "sdpa"
model = GPT2LMHeadModel(cfg).cuda()
n_params = sum(p.numel() for p in model.parameters())
decay = [p for p in model.parameters() if p.dim() >= 2]
nodecay = [p for p in model.parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": nodecay, "weight_decay": 0.0}],
                        lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
fwd = torch.compile(model) if a.compile else model
B, T = a.batch, a.seq
x = torch.randint(0, 50257, (B, T), device="cuda")
y = torch.randint(0, 50257, (B, T), device="cuda")

def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = fwd(x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

for _ in range(a.warmup):
    step()
torch.cuda.synchronize()
torch.cuda.reset_peak_memory_stats()
times = []
for _ in range(a.steps):
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    times.append(time.perf_counter() - t0)
dt = statistics.median(times)
tps = B * T / dt
flops_per_token = 6 * n_params + 6 * cfg.n_layer * T * cfg.n_embd
print(json.dumps({"impl": "pytorch" + ("+compile" if a.compile else ""), "torch": torch.__version__,
                  "gpu": torch.cuda.get_device_name(), "batch": B, "seq": T, "params": n_params,
                  "tokens_per_s": tps, "step_ms": dt * 1e3,
                  "mfu": tps * flops_per_token / (a.peak_tflops * 1e12),
                  "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}))
