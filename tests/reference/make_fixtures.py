#!/usr/bin/env python3
"""Generate Hugging Face GPT-2 numerical reference fixtures for ferrotron's Rust tests.

Run (from the repository root; CPU only, needs torch, transformers, safetensors, numpy):

    python3 tests/reference/make_fixtures.py [--out DIR]

DIR defaults to tests/reference/fixtures next to this script. The script is
deterministic (fixed seeds, float64 math on CPU). For each config NAME it writes
DIR/NAME/:

  config.json, model.safetensors   exactly what GPT2LMHeadModel.save_pretrained
                                   writes (float32; tied lm_head is not stored).
                                   The model is HF-initialised and then every
                                   LayerNorm weight := 1 + 0.1*randn and every
                                   bias := 0.02*randn so that no parameter is a
                                   constant.
  generation_config.json           also written by save_pretrained (harmless).
  expected.safetensors             input_ids int32 [B,T], targets int32 [B,T],
                                   logits float32 [B,T,V], and grad.<key> float32
                                   for every key in model.safetensors (the wte
                                   grad includes the tied lm_head contribution).
                                   Computed in float64, cast to float32.
  expected.json                    config, batch, seq, loss (float64 mean CE of
                                   logits vs targets, no shift), a 5-step AdamW
                                   training trace (step_losses, pre-clip
                                   grad_norms, final_loss, hyper-parameters),
                                   greedy generation (prompt_ids -> new_ids) and
                                   the library versions used.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

CONFIGS = [
    dict(name="gpt2_v50257", V=50257, P=32, C=16, L=2, H=2, B=2, T=8, seed=1234),
    dict(name="gpt2_v1000", V=1000, P=64, C=64, L=3, H=4, B=4, T=32, seed=4321),
]

TRAIN = dict(
    lr=3e-3,
    min_lr=3e-4,
    warmup_steps=2,
    total_steps=5,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    eps=1e-8,
    grad_clip=1.0,
)

N_PROMPT = 5
N_NEW = 8


def lr_at(s, tr):
    """0-based step s -> learning rate (linear warmup, cosine decay to min_lr)."""
    lr, min_lr, warm, total = tr["lr"], tr["min_lr"], tr["warmup_steps"], tr["total_steps"]
    if s < warm:
        return lr * (s + 1) / warm
    ratio = (s - warm) / max(1, total - warm)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return min_lr + coeff * (lr - min_lr)


def build_model(c):
    torch.manual_seed(c["seed"])
    cfg = GPT2Config(
        vocab_size=c["V"],
        n_positions=c["P"],
        n_embd=c["C"],
        n_layer=c["L"],
        n_head=c["H"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        activation_function="gelu_new",
    )
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg)
    model.eval()
    # Perturb the constant-initialised parameters (seeded, independent generator).
    g = torch.Generator().manual_seed(c["seed"] + 1)
    with torch.no_grad():
        ln_weights = set()
        for mname, mod in model.named_modules():
            if isinstance(mod, torch.nn.LayerNorm):
                ln_weights.add(id(mod.weight))
        for name, p in model.named_parameters():
            if id(p) in ln_weights:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g, dtype=torch.float32))
            elif name.endswith(".bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g, dtype=torch.float32))
    return model


def load_f64(d):
    m = GPT2LMHeadModel.from_pretrained(d, attn_implementation="eager", dtype=torch.float32)
    m.eval()
    m.double()
    assert m.lm_head.weight is m.transformer.wte.weight, "lm_head must stay tied to wte"
    return m


def ce(model, ids, tgt):
    logits = model(input_ids=ids.long(), use_cache=False).logits
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), tgt.long().reshape(-1))
    return logits, loss


def param_key_map(model, keys):
    """named_parameters name -> safetensors key (they coincide; verified here)."""
    names = [n for n, _ in model.named_parameters()]
    assert sorted(names) == sorted(keys), (sorted(names), sorted(keys))
    return {n: n for n in names}


def make_one(c, out_root):
    d = os.path.join(out_root, c["name"])
    os.makedirs(d, exist_ok=True)
    V, B, T = c["V"], c["B"], c["T"]

    model = build_model(c)
    model.save_pretrained(d, safe_serialization=True)
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        saved_f32 = {k: f.get_tensor(k) for k in keys}
    assert all(t.dtype == torch.float32 for t in saved_f32.values())

    g = torch.Generator().manual_seed(c["seed"] + 2)
    input_ids = torch.randint(0, V, (B, T), generator=g, dtype=torch.int64).to(torch.int32)
    targets = torch.randint(0, V, (B, T), generator=g, dtype=torch.int64).to(torch.int32)
    prompt_ids = torch.randint(0, V, (N_PROMPT,), generator=g, dtype=torch.int64)

    # ---- forward/backward in float64 from the saved float32 weights ----
    m = load_f64(d)
    kmap = param_key_map(m, keys)
    for n, p in m.named_parameters():
        assert torch.equal(p.detach().float(), saved_f32[kmap[n]]), n
    m.zero_grad(set_to_none=True)
    logits, loss = ce(m, input_ids, targets)
    loss.backward()
    tensors = {
        "input_ids": input_ids.contiguous(),
        "targets": targets.contiguous(),
        "logits": logits.detach().float().contiguous(),
    }
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.shape == saved_f32[kmap[n]].shape, n
        tensors["grad." + kmap[n]] = p.grad.detach().float().contiguous()
    save_file(tensors, os.path.join(d, "expected.safetensors"))
    loss0 = loss.item()

    # Sanity: float32 reload agrees with float64 logits.
    m32 = GPT2LMHeadModel.from_pretrained(d, attn_implementation="eager", dtype=torch.float32)
    m32.eval()
    with torch.no_grad():
        l32 = m32(input_ids=input_ids.long(), use_cache=False).logits
    f32_err = (l32.double() - logits.detach()).abs().max().item()
    assert f32_err < 1e-4, f32_err

    # ---- greedy generation (original weights, float64, full recompute) ----
    seq = prompt_ids.clone()
    new_ids = []
    with torch.no_grad():
        for _ in range(N_NEW):
            lg = m(input_ids=seq[None, :], use_cache=False).logits[0, -1]
            nxt = int(torch.argmax(lg).item())
            new_ids.append(nxt)
            seq = torch.cat([seq, torch.tensor([nxt], dtype=seq.dtype)])
    del m

    # ---- 5-step AdamW training in float64 ----
    tr = dict(TRAIN)
    m = load_f64(d)
    m.train()  # dropout probabilities are all 0, so train/eval are identical
    params = list(m.parameters())
    decay = [p for p in params if p.dim() >= 2]
    nodecay = [p for p in params if p.dim() < 2]
    assert len(decay) + len(nodecay) == len(keys)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": tr["weight_decay"]},
            {"params": nodecay, "weight_decay": 0.0},
        ],
        lr=tr["lr"],
        betas=(tr["beta1"], tr["beta2"]),
        eps=tr["eps"],
        foreach=False,
        fused=False,
    )
    step_losses, grad_norms, lrs = [], [], []
    for s in range(tr["total_steps"]):
        opt.zero_grad(set_to_none=True)
        _, loss = ce(m, input_ids, targets)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, max_norm=tr["grad_clip"])
        lr_s = lr_at(s, tr)
        for grp in opt.param_groups:
            grp["lr"] = lr_s
        opt.step()
        step_losses.append(loss.item())
        grad_norms.append(gn.item())
        lrs.append(lr_s)
    with torch.no_grad():
        _, floss = ce(m, input_ids, targets)
    final_loss = floss.item()
    assert any(gn > tr["grad_clip"] for gn in grad_norms), (
        "clipping never triggered; lower grad_clip", grad_norms)
    assert abs(step_losses[0] - loss0) < 1e-12

    exp = {
        "config": {
            "vocab_size": V,
            "n_positions": c["P"],
            "n_embd": c["C"],
            "n_layer": c["L"],
            "n_head": c["H"],
            "layer_norm_epsilon": 1e-5,
            "activation_function": "gelu_new",
        },
        "batch": B,
        "seq": T,
        "seed": c["seed"],
        "loss": loss0,
        "train": tr,
        "step_lrs": lrs,
        "step_losses": step_losses,
        "grad_norms": grad_norms,
        "final_loss": final_loss,
        "greedy": {"prompt_ids": [int(x) for x in prompt_ids.tolist()], "new_ids": new_ids},
        "param_keys": keys,
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
    }
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(exp, f, indent=2)
        f.write("\n")

    print(f"[{c['name']}] V={V} P={c['P']} C={c['C']} L={c['L']} H={c['H']} B={B} T={T}")
    print(f"  keys ({len(keys)}): {keys}")
    print(f"  loss={loss0:.12f}  f32-vs-f64 max|dlogit|={f32_err:.3e}")
    print(f"  step_losses={[round(x, 8) for x in step_losses]}")
    print(f"  grad_norms={[round(x, 8) for x in grad_norms]}")
    print(f"  lrs={lrs}")
    print(f"  final_loss={final_loss:.12f}")
    print(f"  greedy prompt={exp['greedy']['prompt_ids']} new={new_ids}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # determinism of reductions
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, out={args.out}")
    for c in CONFIGS:
        make_one(c, args.out)


if __name__ == "__main__":
    main()
