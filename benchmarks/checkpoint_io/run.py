"""Checkpoint I/O: save and load bandwidth of ferrotron's sharded HDF5 checkpoints (model + AdamW
state) for GPT-2 124M and 350M on 1 and 4 ranks, against the raw sequential write (and read)
bandwidth of the same number of bytes to the same disk, measured in the same run; and the
training stall per save with background writing on and off. Writes
benchmarks/results/checkpoint_io.{json,png,md}.

    python3 benchmarks/checkpoint_io/run.py [--models 124m,350m] [--ranks 1,4] [--dir /tmp]

Needs a release build and OpenMPI's mpirun; Python stdlib only (the PNG is drawn by
pipeline_bubble's rasteriser). Disk: about 5× the largest checkpoint (4.3 GB for 350M) under
--dir. About 5 minutes on 2 cores.

Save: `ferrotron train` on the model's config for 1 step (T = 64, one sequence — the step is
not what is measured) with `checkpoint.background = false`. The metrics JSONL's checkpoint line
gives the bytes of all files and the slowest rank's write time (every file written as .tmp,
fsynced and renamed); save bandwidth = bytes / write time. 4 ranks = tp 2 × pp 2, so four
writers each write a quarter. Raw write: one Python stream writes the same number of bytes
from one in-memory buffer of that size (random data, like a snapshot of the state; writing
the same 64 MiB buffer over and over measured up to 1.7x faster here, as it stays in the CPU
caches) in 64 MiB pieces to a new file in the same directory and fsyncs; the median of 3 new
files, written after the case's save and load and before its checkpoint is deleted (on this
VM a write into blocks just freed by a deleted file is about 3x faster than into fresh ones;
a checkpoint writes fresh files, so the raw files must too).

Load: `ferrotron train --resume` of that checkpoint with train.steps = 1 (nothing left to
train): each rank logs the bytes it read and the seconds `restore` took (open, read every
dataset it needs whole, CRC check, placement); load bandwidth = checkpoint bytes / the slowest
rank's time. Raw read: the raw file read back in 64 MiB chunks. Before every read the page
cache is dropped when the kernel allows it (`/proc/sys/vm/drop_caches`; recorded) — otherwise
both reads come from memory.

Stall: 124M on 1 rank, 6 steps with a save every 2 steps (steps 2, 4, 6), background on vs off;
the checkpoint lines' `stall_s` is how long the training thread was held (host copy of the
state; with background off, the whole save). The first save allocates the host buffers; later
ones refill them.
"""
import argparse, importlib.util, json, os, re, shutil, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
_spec = importlib.util.spec_from_file_location("pipeline_bubble", os.path.join(HERE, "..", "pipeline_bubble", "run.py"))
pb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pb)

GRIDS = {1: (1, 1), 4: (2, 2)}  # ranks -> (tp, pp)
CHUNK = 64 << 20


def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def state_buffer(n):
    """n bytes of random data in memory, like a snapshot of the training state."""
    chunk = os.urandom(CHUNK)
    return memoryview((chunk * (n // CHUNK + 1))[:n])


def raw_write(path, buf):
    """Writes `buf` sequentially in 64 MiB pieces and fsyncs; returns seconds."""
    t0 = time.time()
    with open(path, "wb") as f:
        for off in range(0, len(buf), CHUNK):
            f.write(buf[off:off + CHUNK])
        f.flush()
        os.fsync(f.fileno())
    return time.time() - t0


def raw_read(path):
    dropped = drop_caches()
    t0 = time.time()
    with open(path, "rb") as f:
        while f.read(CHUNK):
            pass
    return time.time() - t0, dropped


def ferrotron(bin_, n, args, work):
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(n), bin_, "train", "--threads", "1", *args]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\nexit {r.returncode}\n{r.stderr[-3000:]}")
    return r.stdout + r.stderr


def base_sets(model, shard, out, tp, pp, steps, extra=()):
    s = [f"train.steps={steps}", "train.seq_len=64", "train.micro_batch_size=1", "train.global_batch_size=1",
         "train.val_every=0", "train.val_batches=0", f'data.train="{shard}"', f'data.val="{shard}"',
         f'log.out_dir="{out}"', "log.plot=false", "log.save_final=false", f"parallel.tp={tp}", f"parallel.pp={pp}",
         f'checkpoint.dir="{out}/ckpt"', *extra]
    args = ["--config", os.path.join(ROOT, "inputs", f"gpt2-{model}.toml")]
    for x in s:
        args += ["--set", x]
    return args


def ckpt_lines(out):
    return [json.loads(l)["checkpoint"] for l in open(os.path.join(out, "metrics.jsonl")) if '"checkpoint"' in l]


def raw_io(work, n, repeats):
    """Median (and all) of `repeats` raw sequential writes and reads of n bytes, each to a new
    file, all kept until the end: on this VM's disk a write into blocks just freed by a deleted
    file runs about 3x faster than into fresh ones, and a checkpoint save writes fresh files."""
    ws, rs, dropped, paths = [], [], True, []
    buf = state_buffer(n)
    for i in range(repeats):
        raw = os.path.join(work, f"raw{i}.bin")
        paths.append(raw)
        ws.append(raw_write(raw, buf))
        r, d = raw_read(raw)
        rs.append(r)
        dropped = dropped and d
    for p in paths:
        os.remove(p)
    return statistics.median(ws), statistics.median(rs), ws, rs, dropped


def io_case(bin_, work, model, ranks, shard, repeats):
    tp, pp = GRIDS[ranks]
    out = os.path.join(work, f"{model}_{ranks}")
    ferrotron(bin_, ranks, base_sets(model, shard, out, tp, pp, 1, ["checkpoint.background=false"]), work)
    ck = ckpt_lines(out)[-1]
    dropped = drop_caches()
    log = ferrotron(bin_, ranks, base_sets(model, shard, out + "_load", tp, pp, 1) + ["--resume", ck["dir"]], work)
    restores = [(float(mb), float(s)) for mb, s in re.findall(r"restored ([\d.]+) MB of checkpoint data in ([\d.]+) s", log)]
    assert len(restores) == ranks, log[-2000:]
    load_s = max(s for _, s in restores)
    w, r, ws, rs, dropped_raw = raw_io(work, ck["bytes"], repeats)  # before deleting the checkpoint
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out + "_load", ignore_errors=True)
    mb = ck["bytes"] / 1e6
    row = {"model": model, "ranks": ranks, "tp": tp, "pp": pp, "bytes": ck["bytes"],
           "save_s": ck["write_s"], "save_MBps": mb / ck["write_s"], "raw_write_s": w, "raw_write_MBps": mb / w,
           "save_vs_raw": w / ck["write_s"], "load_s": load_s, "load_MBps": mb / load_s,
           "read_MB_per_rank": [x for x, _ in restores], "raw_read_s": r, "raw_read_MBps": mb / r,
           "load_vs_raw": r / load_s, "page_cache_dropped": dropped and dropped_raw,
           "raw_write_s_all": ws, "raw_read_s_all": rs}
    print(f"{model} {ranks} rank(s): {mb:.0f} MB  save {row['save_MBps']:.0f} MB/s (raw {row['raw_write_MBps']:.0f}, "
          f"{100 * row['save_vs_raw']:.0f}%)  load {row['load_MBps']:.0f} MB/s (raw read {row['raw_read_MBps']:.0f}, "
          f"{100 * row['load_vs_raw']:.0f}%)  cache dropped: {row['page_cache_dropped']}", flush=True)
    return row


def stall_case(bin_, work, shard, background):
    out = os.path.join(work, f"stall_{background}")
    extra = ["checkpoint.every=2", "checkpoint.keep_last=1", f"checkpoint.background={str(background).lower()}"]
    ferrotron(bin_, 1, base_sets("124m", shard, out, 1, 1, 6, extra), work)
    cks = ckpt_lines(out)
    steps = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"loss"' in l]
    shutil.rmtree(out, ignore_errors=True)
    row = {"background": background, "stall_s": [c["stall_s"] for c in cks], "write_s": [c["write_s"] for c in cks],
           "median_stall_s": statistics.median(c["stall_s"] for c in cks),
           "median_write_s": statistics.median(c["write_s"] for c in cks),
           "median_step_ms": statistics.median(s["step_ms"] for s in steps)}
    print(f"stall, background={background}: median {row['median_stall_s']:.3f} s per save "
          f"(write {row['median_write_s']:.2f} s; step {row['median_step_ms']:.0f} ms)", flush=True)
    return row


def plot(results, path):
    rows = results["io"]
    cv = pb.Canvas(1000, 60 + 70 * len(rows) + 150)
    cv.text(500, 15, "checkpoint save/load bandwidth vs raw sequential I/O (MB/s)", anchor="c")
    xmax = max(max(r["raw_write_MBps"], r["raw_read_MBps"], r["save_MBps"], r["load_MBps"]) for r in rows) * 1.15
    left, pw = 230, 650
    X = lambda v: left + v / xmax * pw
    cols = [("save", "save_MBps", (31, 119, 180)), ("raw write", "raw_write_MBps", (174, 199, 232)),
            ("load", "load_MBps", (255, 127, 14)), ("raw read", "raw_read_MBps", (255, 187, 120))]
    y = 60
    for r in rows:
        cv.text(left - 10, y + 18, f"{r['model']}, {r['ranks']} rank(s)", anchor="r")
        for i, (_, k, c) in enumerate(cols):
            cv.rect(X(0), y + i * 14, X(r[k]), y + i * 14 + 12, c)
            cv.text(X(r[k]) + 5, y + i * 14, f"{r[k]:.0f}", scale=1)
        y += 70
    cv.line(X(0), 55, X(0), y, (0, 0, 0), 2)
    x = left
    for label, _, c in cols:
        cv.rect(x, y + 10, x + 26, y + 24, c)
        cv.text(x + 32, y + 10, label)
        x += 32 + 12 * len(label) + 30
    st = results["stall"]
    txt = ", ".join(f"background {'on' if s['background'] else 'off'} {s['median_stall_s']:.2f} s" for s in st)
    cv.text(20, y + 45, f"stall per save (124M, 1 rank): {txt}")
    mi = results["machine"]
    cv.text(20, y + 75, f"{mi['cpu']}, nproc={mi['nproc']}, raw = median of 3, page cache dropped "
            f"before reads: {all(r['page_cache_dropped'] for r in rows)}")
    cv.png(path)


def markdown(results):
    lines = ["| model | ranks (tp×pp) | bytes | save MB/s | raw write MB/s | save/raw | load MB/s | raw read MB/s | load/raw |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["io"]:
        lines.append(f"| {r['model']} | {r['ranks']} ({r['tp']}×{r['pp']}) | {r['bytes'] / 1e9:.2f} GB | {r['save_MBps']:.0f} | "
                     f"{r['raw_write_MBps']:.0f} | {100 * r['save_vs_raw']:.0f}% | {r['load_MBps']:.0f} | "
                     f"{r['raw_read_MBps']:.0f} | {100 * r['load_vs_raw']:.0f}% |")
    lines += ["", "| 124M, 1 rank, save every 2 steps | training stall per save (median) | write time (median) | step ms (median) |",
              "|---|---:|---:|---:|"]
    for s in results["stall"]:
        lines.append(f"| background {'on' if s['background'] else 'off'} | {s['median_stall_s']:.3f} s | "
                     f"{s['median_write_s']:.2f} s | {s['median_step_ms']:.0f} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ferrotron", default=os.path.join(ROOT, "target", "release", "ferrotron"))
    ap.add_argument("--models", default="124m,350m")
    ap.add_argument("--ranks", default="1,4")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where checkpoints are written (the disk measured)")
    ap.add_argument("--raw-repeats", type=int, default=3, help="raw write/read measurements per case (median)")
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args()
    if not os.path.exists(a.ferrotron):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    os.makedirs(a.out, exist_ok=True)
    results = {"machine": pb.machine_info(a.ferrotron), "dir": a.dir, "load_before": pb.loadavg(), "io": [], "stall": []}
    df = shutil.disk_usage(a.dir)
    results["disk_free_GB"] = round(df.free / 1e9, 1)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="checkpoint_io_", dir=a.dir) as work:
        bin_ = os.path.join(work, "ferrotron")
        shutil.copy2(a.ferrotron, bin_)
        shard = os.path.join(work, "tokens.bin")
        pb.write_shard(shard, 100_000, 50257)
        for model in a.models.split(","):
            for ranks in (int(x) for x in a.ranks.split(",")):
                results["io"].append(io_case(bin_, work, model, ranks, shard, a.raw_repeats))
        for bg in (True, False):
            results["stall"].append(stall_case(bin_, work, shard, bg))
    results["total_wall_s"] = round(time.time() - t0, 1)
    results["load_after"] = pb.loadavg()
    with open(os.path.join(a.out, "checkpoint_io.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(results, os.path.join(a.out, "checkpoint_io.png"))
    table = markdown(results)
    mi = results["machine"]
    with open(os.path.join(a.out, "checkpoint_io.md"), "w") as f:
        f.write(f"CPU: {mi['cpu']}, nproc {mi['nproc']}; disk under {a.dir}; ferrotron {mi['git_commit'][:7]}\n\n" + table)
    print(table)
    print(f"wrote {a.out}/checkpoint_io.{{json,png,md}} in {results['total_wall_s']} s")


if __name__ == "__main__":
    main()
