"""The transformers side of benchmarks/generate: greedy `generate` with KV cache on a batch of
equal-length prompts, timed around the call (after one 2-token warm-up call), one process per
round. Prints one JSON line {"seconds": ..., "ids": [[...], ...]}.

    python3 hf_side.py MODEL_DIR PROMPTS_JSON MAX_NEW THREADS
"""
import json, sys, time

import torch
from transformers import GPT2LMHeadModel

model_dir, prompts_path, max_new, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
prompts = json.load(open(prompts_path))
model = GPT2LMHeadModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
ids = torch.tensor(prompts, dtype=torch.long)
mask = torch.ones_like(ids)
kw = dict(attention_mask=mask, do_sample=False, use_cache=True, pad_token_id=0)
with torch.no_grad():
    model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=max_new, min_new_tokens=max_new, **kw)
    secs = time.perf_counter() - t0
print(json.dumps({"seconds": secs, "ids": out[:, ids.shape[1]:].tolist()}))
