//! The memory-mapped token loader under the real binary: a corpus cut into many small shards
//! trains bitwise like the same corpus in one shard (windows span shard boundaries), on one
//! rank and on a 3-stage pipeline whose middle stage opens no data; and resident memory does
//! not grow with the dataset (a synthetic 2 GB token set against a 20 MB one).

mod common;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `prepare-data` of the test corpus's text into `out` with at most `shard_tokens` per shard.
fn reshard(out: &Path, shard_tokens: usize) -> PathBuf {
    let text = corpus().parent().unwrap().join("text");
    let n = shard_tokens.to_string();
    ferrotron(
        &[
            "prepare-data",
            "--input",
            s(&text),
            "--out",
            s(out),
            "--shard-tokens",
            &n,
        ],
        out.parent().unwrap(),
    )
    .assert_ok();
    out.to_path_buf()
}

fn train_losses(np: usize, cfg: &Path, out: &Path, sets: &[String], dir: &Path) -> (Vec<f64>, Out) {
    let o1 = format!("log.out_dir={:?}", s(out));
    let mut a = vec!["train", "--config", s(cfg), "--set", &o1];
    for x in sets {
        a.extend(["--set", x.as_str()]);
    }
    let o = mpirun(np, &a, &[], dir);
    o.assert_ok();
    let l = losses(&out.join("metrics.jsonl"))
        .iter()
        .map(|(_, v)| v.parse().unwrap())
        .collect();
    (l, o)
}

#[test]
fn many_small_shards_train_like_one_shard() {
    let dir = scratch("data-shards");
    let many = reshard(&dir.join("many"), 3000);
    let n_files = std::fs::read_dir(&many).unwrap().count();
    assert!(n_files > 20, "only {n_files} shard files");
    let cfg = tiny_config(&dir, "");
    let data = |d: &Path| {
        vec![
            format!("data.train={:?}", format!("{}/train_*.bin", s(d))),
            format!("data.val={:?}", format!("{}/val_*.bin", s(d))),
        ]
    };
    let one = corpus().to_path_buf();
    // One rank: bitwise equal.
    let (a, _) = train_losses(1, &cfg, &dir.join("r1"), &data(&one), &dir);
    let (b, _) = train_losses(1, &cfg, &dir.join("r2"), &data(&many), &dir);
    assert_eq!(a, b, "one shard vs {n_files} shards on one rank");
    // Three pipeline stages (the middle one holds no data), three layers.
    let pp3 = |d: &Path| {
        let mut v = data(d);
        v.extend(["model.n_layer=3".to_string(), "parallel.pp=3".to_string()]);
        v
    };
    let (c, o) = train_losses(3, &cfg, &dir.join("r3"), &pp3(&one), &dir);
    let (d, _) = train_losses(3, &cfg, &dir.join("r4"), &pp3(&many), &dir);
    assert_eq!(c, d, "one shard vs {n_files} shards on pp=3");
    let all = o.all();
    let mapped = |r: usize| {
        all.lines()
            .filter(|l| l.starts_with(&format!("[rank {r}]")) && l.contains("mapped"))
            .count()
    };
    assert_eq!((mapped(0), mapped(1), mapped(2)), (2, 0, 2), "{all}");
    let mut one_rank = data(&one);
    one_rank.push("model.n_layer=3".into());
    let (e, _) = train_losses(1, &cfg, &dir.join("r5"), &one_rank, &dir);
    for (i, (x, y)) in c.iter().zip(&e).enumerate() {
        assert!(
            ((x - y) / y).abs() <= 1e-5,
            "step {}: pp=3 {x} vs 1 rank {y}",
            i + 1
        );
    }
}

/// A shard of `n` pseudo-random GPT-2 token ids, written in 1 MiB pieces.
fn synthetic_shard(path: &Path, n: usize) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut header = [0i32; 256];
    header[0] = 20240520;
    header[1] = 1;
    header[2] = i32::try_from(n).unwrap();
    for h in header {
        f.write_all(&h.to_le_bytes()).unwrap();
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut left = n;
    while left > 0 {
        let k = left.min(1 << 19);
        buf.clear();
        for _ in 0..k {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&((x % 50257) as u16).to_le_bytes());
        }
        f.write_all(&buf).unwrap();
        left -= k;
    }
    f.flush().unwrap();
}

fn peak_rss_mib(o: &Out) -> f64 {
    let line = o
        .stdout
        .lines()
        .find(|l| l.starts_with("peak resident memory"))
        .unwrap_or_else(|| panic!("no memory line:\n{}", o.all()));
    line.rsplit(": ")
        .next()
        .unwrap()
        .trim_end_matches(" MiB")
        .parse()
        .unwrap()
}

/// Training over 2 GB of tokens needs no more memory than over 20 MB, but for the sampler's
/// permutation (4 bytes per window of T tokens) and a small constant.
#[test]
fn resident_memory_does_not_grow_with_the_dataset() {
    let dir = scratch("data-rss");
    let (small, big) = (10_000_000usize, 1_000_000_000usize);
    synthetic_shard(&dir.join("small.bin"), small);
    synthetic_shard(&dir.join("big.bin"), big);
    let t = 256;
    let cfg = tiny_config(&dir, "");
    let run = |file: &str, out: &str| {
        let sets = vec![
            format!("data.train={:?}", s(&dir.join(file))),
            format!("model.n_positions={t}"),
            format!("train.seq_len={t}"),
            "model.n_layer=1".into(),
            "train.micro_batch_size=1".into(),
            "train.global_batch_size=1".into(),
            "train.steps=3".into(),
            "train.val_every=0".into(),
            "train.val_batches=0".into(),
        ];
        let (_, o) = train_losses(1, &cfg, &dir.join(out), &sets, &dir);
        peak_rss_mib(&o)
    };
    let (a, b) = (run("small.bin", "small"), run("big.bin", "big"));
    eprintln!("peak RSS: {a:.1} MiB (20 MB of tokens), {b:.1} MiB (2 GB)");
    let perm_mib = 4.0 * ((big - small) / t) as f64 / (1u64 << 20) as f64;
    let allowed = perm_mib + 16.0;
    assert!(
        b - a <= allowed,
        "peak RSS {a:.1} MiB over 20 MB of tokens, {b:.1} MiB over 2 GB: grew {:.1} MiB, allowed {allowed:.1} (permutation {perm_mib:.1} + 16)",
        b - a
    );
}
