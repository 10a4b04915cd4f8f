"""Pipeline bubble: measured idle fraction of a pipeline-parallel training step vs the theory
(p - 1)/(m + p - 1), for p in {2, 4} stages, m in {p, 2p, 4p, 8p} micro-batches, the gpipe and
1f1b schedules, and three OpenMPI transport settings. Writes
benchmarks/results/pipeline_bubble.{json,png,md}.

    python3 benchmarks/pipeline_bubble/run.py [--steps 12] [--repeats 2] [--variants default,cma,eager,gpt2vocab]

Needs: a release build (built with `cargo build --release` if missing) and OpenMPI's mpirun.
Python stdlib only: the PNG is drawn by the small rasteriser below (matplotlib is used instead
when it can be imported). About 2.5 minutes on 2 cores.

Measurement: `ferrotron train` with pp = p ranks (dp = tp = 1), 1 thread per rank, micro-batch
1, global batch m. The metrics JSONL gives per step `bubble_ms` (time blocked waiting for a
pipeline neighbour, averaged over ranks) and `step_ms`. Step 1 of each run is warm-up; the
figure is the median over the other steps (of `--repeats` runs, pooled) of bubble_ms/step_ms.
Also kept: `blocked_frac` = (bubble_ms + comm_ms.pp)/step_ms, because ferrotron splits a
receive in two: the wait until the message is matched counts as bubble, the rest of the
receive (which, for a rendezvous message, includes waiting for the sender) as pp communication;
and `wait_frac` = (bubble_ms + all comm_ms)/step_ms, because a stage that finishes its last
backward early waits in the next collective (tied-embedding all-reduce, grad-norm all-reduce),
which ferrotron counts as communication, not bubble.

Model: 8 layers (4 or 2 per stage), n_embd 64, n_head 4, seq 64, and a 256-token vocabulary on
synthetic tokens, so the last stage's LM head costs about a third of a layer; with GPT-2's
50257-token vocabulary the head alone costs about as much as 65 layers of this width and the
last stage dominates (variant `gpt2vocab`). Token values do not change the timing.

Variants (all: mpirun --oversubscribe --bind-to none -np p):
  default    + --mca btl_vader_single_copy_mechanism none, as scripts/demo.sh runs it. Messages
             over 4 KiB (the 16 KiB activations) use the rendezvous protocol, whose data moves
             only while the sender is inside an MPI call.
  cma        OpenMPI's default single-copy mechanism (CMA): the receiver copies the data itself.
  eager      default + --mca btl_vader_eager_limit 65536 --mca btl_vader_free_list_num 64: the
             messages go eagerly into preallocated fragments, no sender progress needed.
  gpt2vocab  cma with vocab_size 50257 (the real GPT-2 LM head on the last stage); p=2 only.

The machine's core count matters: with fewer cores than p ranks the stages time-share cores and
the measured bubble means little. `nproc`, the CPU model and the load average are recorded.
"""
import argparse, json, math, os, platform, random, shutil, statistics, struct, subprocess, sys, tempfile, time, zlib
from array import array

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
RESULTS = os.path.join(ROOT, "benchmarks", "results")

MODEL = {"n_layer": 8, "n_head": 4, "n_embd": 64, "seq_len": 64}
BASE = ["--oversubscribe", "--bind-to", "none"]
NO_CMA = ["--mca", "btl_vader_single_copy_mechanism", "none"]  # as scripts/demo.sh and scripts/test.sh
EAGER = ["--mca", "btl_vader_eager_limit", "65536", "--mca", "btl_vader_free_list_num", "64"]
VARIANTS = {
    # name: (mpirun options, vocab_size, pp values or None for all)
    "default": (BASE + NO_CMA, 256, None),
    "cma": (BASE, 256, None),
    "eager": (BASE + NO_CMA + EAGER, 256, None),
    "gpt2vocab": (BASE, 50257, [2]),
}


def theory(p, m):
    return (p - 1) / (m + p - 1)


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def loadavg():
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        return ""


def machine_info(bin_):
    mpi = sh(["mpirun", "--version"]).splitlines()
    return {"cpu": cpu_name(), "nproc": int(sh(["nproc"]) or os.cpu_count()), "os_cpu_count": os.cpu_count(),
            "mpirun": mpi[0] if mpi else "", "kernel": platform.release(),
            "git_commit": sh(["git", "rev-parse", "HEAD"]), "git_dirty": bool(sh(["git", "status", "--porcelain", "src"])),
            "binary_mtime_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(bin_))),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_shard(path, n_tokens, vocab, seed=0):
    """llm.c token shard (1024-byte header: magic 20240520, version 1, count; then u16 tokens)."""
    rng = random.Random(seed)
    toks = array("H", (rng.randrange(vocab) for _ in range(n_tokens)))
    if sys.byteorder != "little":
        toks.byteswap()
    header = [0] * 256
    header[:3] = [20240520, 1, n_tokens]
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *header))
        f.write(toks.tobytes())


def run_one(bin_, work, p, m, schedule, steps, mpi_opts, vocab, shard, repeats):
    timed, walls = [], []
    for rep in range(repeats):
        out = os.path.join(work, f"run_p{p}_m{m}_{schedule}_{vocab}_{len(mpi_opts)}_{rep}")
        rows, wall = train(bin_, out, p, m, schedule, steps, mpi_opts, vocab, shard)
        timed += rows[1:]  # step 1 of each run is warm-up
        walls.append(round(wall, 2))
    med = lambda f: statistics.median(f(x) for x in timed)
    groups = sorted(timed[0]["comm_ms"])
    return {"p": p, "m": m, "schedule": schedule,
            "bubble_frac": med(lambda x: x["bubble_ms"] / x["step_ms"]),
            "theory": theory(p, m),
            "blocked_frac": med(lambda x: (x["bubble_ms"] + x["comm_ms"].get("pp", 0.0)) / x["step_ms"]),
            "wait_frac": med(lambda x: (x["bubble_ms"] + sum(x["comm_ms"].values())) / x["step_ms"]),
            "step_ms": med(lambda x: x["step_ms"]), "bubble_ms": med(lambda x: x["bubble_ms"]),
            "compute_ms": med(lambda x: x["compute_ms"]),
            "comm_ms": {g: med(lambda x: x["comm_ms"].get(g, 0.0)) for g in groups},
            "bubble_frac_per_step": [round(x["bubble_ms"] / x["step_ms"], 4) for x in timed],
            "timed_steps": len(timed), "runs": repeats, "oversubscribed": p > (os.cpu_count() or 1),
            "wall_s": walls}


def train(bin_, out, p, m, schedule, steps, mpi_opts, vocab, shard):
    sets = [f"parallel.pp={p}", f'parallel.schedule="{schedule}"', f"train.steps={steps}",
            "train.micro_batch_size=1", f"train.global_batch_size={m}", "train.val_every=0", "train.val_batches=0",
            f"model.n_layer={MODEL['n_layer']}", f"model.n_head={MODEL['n_head']}", f"model.n_embd={MODEL['n_embd']}",
            f"model.n_positions={MODEL['seq_len']}", f"train.seq_len={MODEL['seq_len']}", f"model.vocab_size={vocab}",
            f'data.train="{shard}"', f'data.val="{shard}"', f'log.out_dir="{out}"', "log.plot=false",
            "log.save_final=false"]
    cmd = ["mpirun", *mpi_opts, "-np", str(p), bin_, "train", "--config",
           os.path.join(ROOT, "inputs", "tiny.toml"), "--threads", "1"]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    wall = time.time() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\nexit {r.returncode}\n{r.stderr[-3000:]}")
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"step"' in l]
    return rows, wall


# ----------------------------------------------------------------------------------------------
# Plot. matplotlib when importable; otherwise a minimal RGB rasteriser with a 5x7 bitmap font
# written as PNG with zlib (stdlib only).

FONT = {  # 5x7 glyphs (9 rows with a descender), rows top to bottom, '#' = ink
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#", "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "C": ".###.|#...#|#....|#....|#....|#...#|.###.", "D": "####.|#...#|#...#|#...#|#...#|#...#|####.",
    "E": "#####|#....|#....|####.|#....|#....|#####", "F": "#####|#....|#....|####.|#....|#....|#....",
    "G": ".###.|#...#|#....|#.###|#...#|#...#|.####", "H": "#...#|#...#|#...#|#####|#...#|#...#|#...#",
    "I": ".###.|..#..|..#..|..#..|..#..|..#..|.###.", "J": "..###|...#.|...#.|...#.|...#.|#..#.|.##..",
    "K": "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#", "L": "#....|#....|#....|#....|#....|#....|#####",
    "M": "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#", "N": "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.", "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "Q": ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#", "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "S": ".####|#....|#....|.###.|....#|....#|####.", "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "U": "#...#|#...#|#...#|#...#|#...#|#...#|.###.", "V": "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",
    "W": "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.", "X": "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",
    "Y": "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..", "Z": "#####|....#|...#.|..#..|.#...|#....|#####",
    "a": ".....|.....|.###.|....#|.####|#...#|.####", "b": "#....|#....|#.##.|##..#|#...#|#...#|####.",
    "c": ".....|.....|.###.|#....|#....|#...#|.###.", "d": "....#|....#|.##.#|#..##|#...#|#...#|.####",
    "e": ".....|.....|.###.|#...#|#####|#....|.###.", "f": "..##.|.#..#|.#...|###..|.#...|.#...|.#...",
    "g": ".....|.....|.####|#...#|#...#|#...#|.####|....#|.###.", "h": "#....|#....|#.##.|##..#|#...#|#...#|#...#",
    "i": "..#..|.....|.##..|..#..|..#..|..#..|.###.", "j": "...#.|.....|..##.|...#.|...#.|...#.|...#.|#..#.|.##..",
    "k": "#....|#....|#..#.|#.#..|##...|#.#..|#..#.", "l": ".##..|..#..|..#..|..#..|..#..|..#..|.###.",
    "m": ".....|.....|##.#.|#.#.#|#.#.#|#...#|#...#", "n": ".....|.....|#.##.|##..#|#...#|#...#|#...#",
    "o": ".....|.....|.###.|#...#|#...#|#...#|.###.", "p": ".....|.....|####.|#...#|#...#|#...#|####.|#....|#....",
    "q": ".....|.....|.####|#...#|#...#|#...#|.####|....#|....#", "r": ".....|.....|#.##.|##..#|#....|#....|#....",
    "s": ".....|.....|.###.|#....|.###.|....#|####.", "t": ".#...|.#...|###..|.#...|.#...|.#..#|..##.",
    "u": ".....|.....|#...#|#...#|#...#|#..##|.##.#", "v": ".....|.....|#...#|#...#|#...#|.#.#.|..#..",
    "w": ".....|.....|#...#|#...#|#.#.#|#.#.#|.#.#.", "x": ".....|.....|#...#|.#.#.|..#..|.#.#.|#...#",
    "y": ".....|.....|#...#|#...#|#...#|#...#|.####|....#|.###.", "z": ".....|.....|#####|...#.|..#..|.#...|#####",
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.", "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####", "3": "#####|...#.|..#..|...#.|....#|#...#|.###.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.", "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.", "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.", "9": ".###.|#...#|#...#|.####|....#|...#.|.##..",
    " ": ".....|.....|.....|.....|.....|.....|.....", ".": ".....|.....|.....|.....|.....|.##..|.##..",
    ",": ".....|.....|.....|.....|.##..|..#..|.#...", ":": ".....|.##..|.##..|.....|.##..|.##..|.....",
    "-": ".....|.....|.....|#####|.....|.....|.....", "=": ".....|.....|#####|.....|#####|.....|.....",
    "+": ".....|..#..|..#..|#####|..#..|..#..|.....", "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.",
    ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...", "/": ".....|....#|...#.|..#..|.#...|#....|.....",
    "%": "##...|##..#|...#.|..#..|.#...|#..##|...##", "_": ".....|.....|.....|.....|.....|.....|#####",
    "*": ".....|#...#|.#.#.|..#..|.#.#.|#...#|.....", "[": ".###.|.#...|.#...|.#...|.#...|.#...|.###.",
    "]": ".###.|...#.|...#.|...#.|...#.|...#.|.###.", "<": "...#.|..#..|.#...|#....|.#...|..#..|...#.",
    ">": ".#...|..#..|...#.|....#|...#.|..#..|.#...", "'": "..#..|..#..|.#...|.....|.....|.....|.....",
    "|": "..#..|..#..|..#..|..#..|..#..|..#..|..#..", "?": ".###.|#...#|....#|...#.|..#..|.....|..#..",
}


class Canvas:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.px = bytearray(b"\xff" * (w * h * 3))

    def set(self, x, y, c):
        x, y = int(round(x)), int(round(y))
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(c)

    def rect(self, x0, y0, x1, y1, c):
        for y in range(int(y0), int(y1)):
            for x in range(int(x0), int(x1)):
                self.set(x, y, c)

    def dot(self, x, y, r, c, square=False):
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if square or dx * dx + dy * dy <= r * r + r:
                    self.set(x + dx, y + dy, c)

    def line(self, x0, y0, x1, y1, c, width=1, dash=None, phase=0.0):
        """Line of `width` px; `dash` = (on, off) px, starting `phase` px into the pattern.
        Returns the phase at the end, so a polyline keeps its dash pattern across segments."""
        length = ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5
        n = max(1, int(length * 2))
        r = width // 2
        for i in range(n + 1):
            t = i / n
            if dash and (phase + t * length) % (dash[0] + dash[1]) >= dash[0]:
                continue
            x, y = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
            if r:
                self.dot(x, y, r, c)
            else:
                self.set(x, y, c)
        return phase + length

    def polyline(self, pts, c, width=1, dash=None):
        phase = 0.0
        for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
            phase = self.line(xa, ya, xb, yb, c, width, dash, phase)

    def text(self, x, y, s, c=(0, 0, 0), scale=2, anchor="l", vertical=False):
        """Text with its top-left at (x, y); anchor 'c' centres, 'r' right-aligns (along the run)."""
        adv = 6 * scale
        width = len(s) * adv - scale
        off = {"l": 0, "c": -width // 2, "r": -width}[anchor]
        for k, ch in enumerate(s):
            rows = FONT.get(ch, "#####|#...#|#...#|#...#|#...#|#...#|#####").split("|")
            for gy, row in enumerate(rows):
                for gx, v in enumerate(row):
                    if v != "#":
                        continue
                    u, w = off + k * adv + gx * scale, gy * scale
                    for sy in range(scale):
                        for sx in range(scale):
                            if vertical:  # reads bottom to top
                                self.set(x + w + sy, y - (u + sx), c)
                            else:
                                self.set(x + u + sx, y + w + sy, c)

    def png(self, path):
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h))
        chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


SERIES = [  # (p, schedule, colour, square marker)
    (2, "gpipe", (31, 119, 180), False), (2, "1f1b", (255, 127, 14), True),
    (4, "gpipe", (44, 160, 44), False), (4, "1f1b", (214, 39, 40), True),
]
THEORY_COLOUR = {2: (0, 0, 0), 4: (140, 140, 140)}
PANEL_NOTE = {"default": "single-copy off (as demo.sh): rendezvous > 4 KiB",
              "cma": "OpenMPI default: CMA single-copy on",
              "eager": "single-copy off, eager limit 64 KiB, 64 frags"}


def panels(results, variants):
    out = []
    for v in variants:
        rows = [r for r in results["rows"] if r["variant"] == v]
        if rows:
            out.append((v, rows))
    return out


def plot_png(results, path, variants, title):
    pans = panels(results, variants)
    pw, ph, top, left, bottom = 620, 470, 95, 80, 190
    cv = Canvas(left + len(pans) * (pw + 80), top + ph + bottom)
    cv.text(cv.w // 2, 15, title, anchor="c")
    ticks = [2, 4, 8, 16, 32]
    lx0, lx1 = math.log2(ticks[0]), math.log2(ticks[-1])
    ymax = max([r["bubble_frac"] for _, rows in pans for r in rows] + [r["theory"] for _, rows in pans for r in rows])
    ymax = math.ceil(ymax * 10 + 0.5) / 10
    for k, (v, rows) in enumerate(pans):
        x0, y0 = left + k * (pw + 80), top
        X = lambda m: x0 + (math.log2(m) - lx0) / (lx1 - lx0) * pw
        Y = lambda f: y0 + ph - f / ymax * ph
        for i in range(int(round(ymax * 10)) + 1):  # grid and tick labels
            f = i / 10
            cv.line(x0, Y(f), x0 + pw, Y(f), (225, 225, 225))
            cv.text(x0 - 8, Y(f) - 7, f"{f:.1f}", anchor="r")
        for m in ticks:
            cv.line(X(m), y0, X(m), y0 + ph, (225, 225, 225))
            cv.text(X(m), y0 + ph + 8, str(m), anchor="c")
        cv.line(x0, y0, x0, y0 + ph, (0, 0, 0), 2)
        cv.line(x0, y0 + ph, x0 + pw, y0 + ph, (0, 0, 0), 2)
        cv.text(x0 + pw // 2, y0 - 50, f"variant: {v}", anchor="c")
        cv.text(x0 + pw // 2, y0 - 26, PANEL_NOTE.get(v, ""), (90, 90, 90), anchor="c")
        cv.text(x0 + pw // 2, y0 + ph + 34, "micro-batches m per step (log scale)", anchor="c")
        for p in THEORY_COLOUR:  # theory: dashed curve over the measured range of m
            ms = sorted({r["m"] for r in rows if r["p"] == p})
            if len(ms) > 1:
                grid = [ms[0] * (ms[-1] / ms[0]) ** (i / 80) for i in range(81)]
                cv.polyline([(X(m), Y(theory(p, m))) for m in grid], THEORY_COLOUR[p], 2, dash=(9, 7))
        for p, s, c, sq in SERIES:
            pts = sorted((r["m"], r["bubble_frac"]) for r in rows if r["p"] == p and r["schedule"] == s)
            cv.polyline([(X(m), Y(f)) for m, f in pts], c, 3)
            for m, f in pts:
                cv.dot(X(m), Y(f), 5, c, square=sq)
    ly = top + ph + 70  # legend
    items = [(f"p={p} {s} measured", c, sq, False) for p, s, c, sq in SERIES] + \
            [(f"p={p} theory (p-1)/(m+p-1)", c, False, True) for p, c in THEORY_COLOUR.items()]
    for i, (label, c, sq, dashed) in enumerate(items):
        x, y = left + (i % 3) * 420, ly + (i // 3) * 30
        if dashed:
            cv.line(x, y + 7, x + 40, y + 7, c, 2, dash=(9, 7))
        else:
            cv.line(x, y + 7, x + 40, y + 7, c, 3)
            cv.dot(x + 20, y + 7, 5, c, square=sq)
        cv.text(x + 50, y, label)
    mi = results["machine"]
    cv.text(left, ly + 75, f"{mi['cpu']}, nproc={mi['nproc']}: the p=4 runs put 4 single-threaded ranks on "
            f"{mi['nproc']} cores", scale=2)
    cv.text(14, top + ph // 2, "bubble_ms / step_ms", anchor="c", vertical=True)
    cv.png(path)


def plot(results, path, variants):
    title = "Pipeline bubble: measured (median over steps) vs theory"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return plot_png(results, path, variants, title)
    pans = panels(results, variants)
    fig, axes = plt.subplots(1, len(pans), figsize=(6.5 * len(pans), 5), sharey=True, squeeze=False)
    for ax, (v, rows) in zip(axes[0], pans):
        for p, s, c, sq in SERIES:
            pts = sorted((r["m"], r["bubble_frac"]) for r in rows if r["p"] == p and r["schedule"] == s)
            if pts:
                ax.plot(*zip(*pts), marker="s" if sq else "o", color=[x / 255 for x in c], label=f"p={p} {s}")
        for p in (2, 4):
            ms = sorted({r["m"] for r in rows if r["p"] == p})
            if ms:
                ax.plot(ms, [theory(p, m) for m in ms], "--", color=[x / 255 for x in THEORY_COLOUR[p]],
                        label=f"p={p} theory")
        ax.set_xscale("log", base=2)
        ax.set_title(f"variant: {v}")
        ax.set_xlabel("micro-batches m per step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("bubble_ms / step_ms")
    axes[0][0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown(results):
    """One row per (variant, p, m): theory; per schedule bubble_ms, + comm_ms.pp, + all comm_ms
    (as fractions of step_ms); step ms."""
    by = {(r["variant"], r["p"], r["m"], r["schedule"]): r for r in results["rows"]}
    lines = ["| variant | p | m | theory | gpipe bubble | gpipe +pp | gpipe all waits | 1f1b bubble | 1f1b +pp "
             "| 1f1b all waits | step ms gpipe / 1f1b |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v, p, m in sorted({k[:3] for k in by}, key=lambda k: (list(VARIANTS).index(k[0]), k[1], k[2])):
        g, f = by.get((v, p, m, "gpipe")), by.get((v, p, m, "1f1b"))
        cell = lambda r, k: f"{r[k]:.3f}" if r else "-"
        step = " / ".join(f"{r['step_ms']:.1f}" if r else "-" for r in (g, f))
        over = "*" if p > results["machine"]["nproc"] else ""  # * = more ranks than cores
        cols = [cell(r, k) for r in (g, f) for k in ("bubble_frac", "blocked_frac", "wait_frac")]
        lines.append(f"| {v} | {p}{over} | {m} | {theory(p, m):.3f} | " + " | ".join(cols) + f" | {step} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ferrotron", default=os.path.join(ROOT, "target", "release", "ferrotron"))
    ap.add_argument("--steps", type=int, default=12, help="steps per run; step 1 is dropped as warm-up")
    ap.add_argument("--pp", default="2,4")
    ap.add_argument("--multiples", default="1,2,4,8", help="m = multiple * p")
    ap.add_argument("--schedules", default="gpipe,1f1b")
    ap.add_argument("--repeats", type=int, default=2, help="runs per point; their timed steps are pooled")
    ap.add_argument("--variants", default="default,cma,eager,gpt2vocab", help=",".join(VARIANTS))
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args()
    if not os.path.exists(a.ferrotron):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    if shutil.which("mpirun") is None:
        sys.exit("mpirun not found (OpenMPI)")
    pps = [int(x) for x in a.pp.split(",")]
    mults = [int(x) for x in a.multiples.split(",")]
    scheds = a.schedules.split(",")
    variants = a.variants.split(",")
    os.makedirs(a.out, exist_ok=True)
    results = {"machine": machine_info(a.ferrotron), "model": dict(MODEL, micro_batch_size=1, threads_per_rank=1),
               "variants": {v: {"mpirun": ["mpirun", *o], "vocab_size": vs, "pp": pp} for v, (o, vs, pp) in VARIANTS.items()}, "steps": a.steps,
               "metric": "median over steps 2..N (runs pooled) of bubble_ms/step_ms; blocked_frac adds comm_ms.pp; "
                         "wait_frac adds every comm_ms group (an upper bound on time spent waiting)",
               "theory": "(p-1)/(m+p-1)", "load_before": loadavg(), "rows": []}
    if (results["load_before"] or [0])[0] > 0.5:
        print(f"warning: load average {results['load_before']}: timings are only meaningful on an idle machine",
              file=sys.stderr)
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="pipeline_bubble_") as work:
        bin_ = os.path.join(work, "ferrotron")  # a private copy: a rebuild mid-run cannot swap it
        shutil.copy2(a.ferrotron, bin_)
        shards = {}
        for v in variants:
            opts, vocab, only_pp = VARIANTS[v]
            if vocab not in shards:
                shards[vocab] = os.path.join(work, f"tokens_v{vocab}.bin")
                write_shard(shards[vocab], 200_000, vocab)
            for p in pps:
                if only_pp and p not in only_pp:
                    continue
                for mult in mults:
                    for s in scheds:
                        row = run_one(bin_, work, p, mult * p, s, a.steps, opts, vocab, shards[vocab], a.repeats)
                        row = {"variant": v, "vocab_size": vocab, **row}
                        results["rows"].append(row)
                        print(f"{v:9s} p={p} m={mult * p:2d} {s:5s}  bubble {row['bubble_frac']:.3f}  theory "
                              f"{row['theory']:.3f}  blocked {row['blocked_frac']:.3f}  step {row['step_ms']:7.1f} ms",
                              flush=True)
    results["load_after"] = loadavg()
    results["total_wall_s"] = round(time.time() - t_start, 1)
    with open(os.path.join(a.out, "pipeline_bubble.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot(results, os.path.join(a.out, "pipeline_bubble.png"), [v for v in variants if VARIANTS[v][2] is None])
    table = markdown(results)
    with open(os.path.join(a.out, "pipeline_bubble.md"), "w") as f:
        mi = results["machine"]
        f.write(f"CPU: {mi['cpu']}, nproc {mi['nproc']}; {mi['mpirun']}; load average before/after "
                f"{results['load_before']} / {results['load_after']}\n\n" + table)
    print(table)
    print(f"wrote {a.out}/pipeline_bubble.{{json,png,md}} in {results['total_wall_s']} s")


if __name__ == "__main__":
    main()
