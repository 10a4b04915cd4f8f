//! Real datasets under the real binary. The memory-mapped token loader: a corpus cut into many
//! small shards trains bitwise like the same corpus in one shard (windows span shard
//! boundaries), on one rank and on a 3-stage pipeline whose middle stage opens no data; and
//! resident memory does not grow with the dataset (a synthetic 2 GB token set against a 20 MB
//! one). `prepare-data`: JSONL, gzip'd and zstd'd JSONL give the same shards as plain text; a
//! bad JSONL line is named (or skipped with `--skip-bad`); Parquet (written by pyarrow) gives the
//! same shards as the same documents in plain text; 1 and 3 MPI ranks, 1 and 2 threads give
//! byte-identical folders (shards and manifest); a manifest that disagrees with a shard is named.

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
    let n_files = std::fs::read_dir(&many).unwrap().count() - 1; // and manifest.json
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
    // The same shards through the manifest (train) and the prepared folder (val).
    let via_manifest = vec![
        format!("data.train={:?}", s(&many.join("manifest.json"))),
        format!("data.val={:?}", s(&many)),
    ];
    let (m, _) = train_losses(1, &cfg, &dir.join("r6"), &via_manifest, &dir);
    assert_eq!(a, m, "through manifest.json");
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

/// Training over 2 GB of tokens needs no more memory than over 20 MB but a small constant (the
/// default sampler keeps no permutation; the shuffle sampler's 4 bytes per window would be
/// 15 MiB here, so the bound would catch it).
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
    let allowed = 8.0;
    assert!(
        b - a <= allowed,
        "peak RSS {a:.1} MiB over 20 MB of tokens, {b:.1} MiB over 2 GB: grew {:.1} MiB, allowed {allowed:.1}",
        b - a
    );
}

/// The test corpus's documents (fortune format: `%` lines separate them), in file order.
fn corpus_documents() -> Vec<String> {
    let text_dir = corpus().parent().unwrap().join("text");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&text_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        let mut cur = String::new();
        for line in text.split_inclusive('\n') {
            if line.trim_end_matches(['\n', '\r']) == "%" {
                docs.push(std::mem::take(&mut cur));
            } else {
                cur.push_str(line);
            }
        }
        docs.push(cur);
    }
    docs.into_iter()
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect()
}

fn shard_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = folder_bytes(dir);
    v.retain(|(name, _)| name.ends_with(".bin"));
    v
}

/// The same documents as plain text, JSONL, gzip'd JSONL and zstd'd JSONL give byte-identical
/// shards.
#[test]
fn jsonl_and_compressed_inputs_give_the_same_shards_as_text() {
    let dir = scratch("data-jsonl");
    let docs = corpus_documents();
    let jsonl: String = docs
        .iter()
        .map(|d| serde_json::json!({ "id": 0, "text": d }).to_string() + "\n")
        .collect();
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("docs.jsonl"), &jsonl).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(jsonl.as_bytes()).unwrap();
    std::fs::write(src.join("docs.jsonl.gz"), gz.finish().unwrap()).unwrap();
    let zst = zstd::encode_all(jsonl.as_bytes(), 1).unwrap();
    std::fs::write(src.join("docs.jsonl.zst"), zst).unwrap();
    let want = shard_bytes(&reshard(&dir.join("text"), 50_000));
    assert!(want.len() > 2, "{} shard files", want.len());
    for f in ["docs.jsonl", "docs.jsonl.gz", "docs.jsonl.zst"] {
        let out = dir.join(f.replace('.', "_"));
        ferrotron(
            &[
                "prepare-data",
                "--input",
                s(&src.join(f)),
                "--out",
                s(&out),
                "--shard-tokens",
                "50000",
            ],
            &dir,
        )
        .assert_ok();
        let got = shard_bytes(&out);
        assert_eq!(got.len(), want.len(), "{f}");
        for (g, w) in got.iter().zip(&want) {
            assert!(g == w, "{f}: {} differs from the text input's {}", g.0, w.0);
        }
    }
    // A bad line is named with its file and line; --skip-bad counts it and goes on.
    let bad = src.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"text\": \"fine\"}\n{\"txt\": \"oops\"}\n{\"text\": \"also fine\"}\n",
    )
    .unwrap();
    let out = dir.join("bad_out");
    let args = ["prepare-data", "--input", s(&bad), "--out", s(&out)];
    ferrotron(&args, &dir).assert_clean_failure("bad.jsonl:2: no field \"text\"");
    let mut skip = args.to_vec();
    skip.push("--skip-bad");
    let o = ferrotron(&skip, &dir);
    o.assert_ok();
    assert!(o.all().contains("skipped 1 bad JSONL line"), "{}", o.all());
}

/// Every file of a prepared folder (name → bytes), the manifest included.
fn folder_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

/// `prepare-data` over text, Parquet and zstd'd JSONL inputs on 1 rank with 1 and 2 threads and
/// on 3 MPI ranks writes byte-identical folders; Parquet gives the shards of the same documents
/// as plain text.
#[test]
fn prepare_data_is_identical_on_any_ranks_and_threads_and_reads_parquet() {
    let dir = scratch("data-ranks");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/fixtures/parquet");
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for f in ["snappy.parquet", "zstd.parquet", "gzip.parquet"] {
        std::fs::copy(fixtures.join(f), src.join(f)).unwrap();
    }
    let jsonl = std::fs::read(fixtures.join("docs.jsonl")).unwrap();
    std::fs::write(
        src.join("docs.jsonl.zst"),
        zstd::encode_all(&jsonl[..], 3).unwrap(),
    )
    .unwrap();
    let text = corpus().parent().unwrap().join("text");
    let run = |np: usize, threads: &str, out: &Path| {
        let args = [
            "--threads",
            threads,
            "prepare-data",
            "--input",
            s(&text),
            s(&src),
            "--out",
            s(out),
            "--shard-tokens",
            "7000",
            "--val-every",
            "9",
        ];
        let o = if np == 1 {
            ferrotron(&args, &dir)
        } else {
            mpirun(np, &args, &[], &dir)
        };
        o.assert_ok();
        folder_bytes(out)
    };
    let want = run(1, "1", &dir.join("t1"));
    assert!(want.len() > 10, "{} files", want.len());
    assert!(want.iter().any(|(n, _)| n == "manifest.json"));
    for (np, threads, name) in [(1, "2", "t2"), (3, "1", "r3"), (3, "2", "r3t2")] {
        let got = run(np, threads, &dir.join(name));
        assert_eq!(got.len(), want.len(), "{name}");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                g == w,
                "{name}: {} differs from the 1-rank 1-thread {}",
                g.0,
                w.0
            );
        }
    }
    // Parquet alone gives the shards of the same documents as plain text.
    let one = |input: &Path, out: &str| {
        let out = dir.join(out);
        ferrotron(
            &["prepare-data", "--input", s(input), "--out", s(&out)],
            &dir,
        )
        .assert_ok();
        shard_bytes(&out)
    };
    let from_text = one(&fixtures.join("docs.txt"), "txt");
    for f in [
        "snappy.parquet",
        "zstd.parquet",
        "gzip.parquet",
        "plain.parquet",
    ] {
        assert!(
            one(&fixtures.join(f), f) == from_text,
            "{f} differs from docs.txt"
        );
    }
    // A shard that disagrees with the manifest is named when training starts.
    let t1 = dir.join("t1");
    synthetic_shard(&t1.join("val_000000.bin"), 10);
    let cfg = tiny_config(&dir, "");
    let o = ferrotron(
        &[
            "train",
            "--config",
            s(&cfg),
            "--set",
            &format!("data.train={:?}", s(&t1)),
            "--set",
            &format!("data.val={:?}", s(&t1)),
        ],
        &dir,
    );
    o.assert_clean_failure("val_000000.bin: holds 10 tokens but");
    // An empty input is one clear error.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("blank.jsonl"), "\n\n").unwrap();
    ferrotron(
        &[
            "prepare-data",
            "--input",
            s(&empty),
            "--out",
            s(&dir.join("e")),
        ],
        &dir,
    )
    .assert_clean_failure("no usable input text found");
}
