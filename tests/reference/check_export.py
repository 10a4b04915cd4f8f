"""Check that a Hugging Face directory written by ferrotron loads in `transformers` and gives
the loss that `ferrotron eval` reports on the same windows.

    python3 tests/reference/check_export.py runs/tiny/final data/fortunes/val_000000.bin \
        --ferrotron target/release/ferrotron

Reads the llm.c shard directly (256 int32 header, uint16 tokens), evaluates B×T windows
(sequence i = tokens[i*T : i*T+T], targets shifted by one) in float64, and compares.
"""
import argparse, json, subprocess
import numpy as np
import torch
from transformers import GPT2LMHeadModel

ap = argparse.ArgumentParser()
ap.add_argument("hf_dir"); ap.add_argument("shard")
ap.add_argument("--batch", type=int, default=4); ap.add_argument("--seq", type=int, default=64)
ap.add_argument("--batches", type=int, default=2); ap.add_argument("--ferrotron", default="target/release/ferrotron")
a = ap.parse_args()

header = np.fromfile(a.shard, dtype="<i4", count=256)
assert header[0] == 20240520, "not an llm.c shard"
tokens = np.fromfile(a.shard, dtype="<u2", offset=1024)[: header[2]].astype(np.int64)
model = GPT2LMHeadModel.from_pretrained(a.hf_dir).double().eval()
B, T, K = a.batch, a.seq, a.batches
total, count = 0.0, 0
with torch.no_grad():
    for k in range(K):
        idx = [(k * B + b) * T for b in range(B)]
        x = torch.tensor(np.stack([tokens[i : i + T] for i in idx]))
        y = torch.tensor(np.stack([tokens[i + 1 : i + T + 1] for i in idx]))
        logits = model(x).logits
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        count += B * T
hf_loss = total / count
out = subprocess.run([a.ferrotron, "eval", "--hf", a.hf_dir, "--data", a.shard, "--batch", str(B), "--seq", str(T),
                      "--batches", str(K), "--json"], check=True, capture_output=True, text=True).stdout
ft = json.loads(out.strip().splitlines()[-1])
rel = abs(ft["loss"] - hf_loss) / abs(hf_loss)
print(f"transformers loss {hf_loss:.6f}  ferrotron eval {ft['loss']:.6f}  rel diff {rel:.2e}")
assert rel < 1e-5, "mismatch"
