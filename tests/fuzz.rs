//! Mutation fuzzing of every parser that reads outside input: the token-shard header, the config
//! TOML and `--set` overrides, Hugging Face `config.json` and the safetensors header, and
//! checkpoint metadata (`meta.h5` attributes). Each target starts from valid inputs and applies
//! random mutations (bit flips, interesting integers, byte runs, cuts, splices); every input
//! must give a result or an error — no panic — and no single allocation may exceed what the
//! input justifies (a counting global allocator watches the fuzzing thread).
//!
//! CI runs each target for `FERROTRON_FUZZ_SECS` seconds (default 6; the whole file stays well
//! under two minutes). A long run: `FERROTRON_FUZZ_SECS=600 cargo test --release --test fuzz
//! -- --nocapture` prints executions per target. A failing input is written to
//! `$TMPDIR/ferrotron-fuzz-<target>.bin` and its hex printed.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::{Duration, Instant};

/// Counts, per thread while armed, the largest single allocation.
struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the bookkeeping touches only
// const-initialised thread-locals (no allocation, no re-entry).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn note(size: usize) {
    let _ = ARMED.try_with(|a| {
        if a.get() {
            let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
        }
    });
}

/// xorshift64*: the fuzzer's own deterministic random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x8000_0000,
    u64::MAX,
    1 << 40,
];

/// One random mutation of `x` (which may come from `seeds` for a splice).
fn mutate(r: &mut Rng, x: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let n = x.len();
    match r.below(7) {
        0 if n > 0 => {
            let i = r.below(n);
            x[i] ^= 1 << r.below(8);
        }
        1 if n > 0 => {
            let i = r.below(n);
            x[i] = r.next() as u8;
        }
        2 if n > 0 => {
            let v = INTERESTING[r.below(INTERESTING.len())].to_le_bytes();
            let w = [1, 2, 4, 8][r.below(4)];
            let i = r.below(n);
            for (k, b) in v[..w].iter().enumerate() {
                if i + k < n {
                    x[i + k] = *b;
                }
            }
        }
        3 if n > 0 => x.truncate(r.below(n)),
        4 => {
            let i = r.below(n + 1);
            let run = vec![r.next() as u8; 1 + r.below(16)];
            x.splice(i..i, run);
        }
        5 if n > 1 => {
            let (a, b) = (r.below(n), r.below(n));
            let (a, b) = (a.min(b), a.max(b));
            x.drain(a..b);
        }
        _ => {
            let s = &seeds[r.below(seeds.len())];
            if !s.is_empty() {
                let (a, i) = (r.below(s.len()), r.below(n + 1));
                let b = (a + 1 + r.below(64)).min(s.len());
                x.splice(i..i, s[a..b].iter().copied());
            }
        }
    }
}

/// Seconds per target.
fn budget() -> Duration {
    let s = std::env::var("FERROTRON_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(6.0);
    Duration::from_secs_f64(s)
}

/// Runs `target` on mutations of `seeds` for the time budget. `limit(len)`: the largest single
/// allocation an input of `len` bytes may cause.
fn fuzz(
    name: &str,
    seed: u64,
    seeds: &[Vec<u8>],
    limit: impl Fn(usize) -> usize,
    target: impl Fn(&[u8]),
) {
    let mut r = Rng(seed | 1);
    // Warm-up, not counted: lazy one-time set-up of libraries (HDF5's, the tokenizer's).
    target(&seeds[0]);
    let t0 = Instant::now();
    let (mut execs, mut errors_seen) = (0u64, 0u64);
    while t0.elapsed() < budget() {
        let mut x = seeds[r.below(seeds.len())].clone();
        for _ in 0..1 + r.below(4) {
            mutate(&mut r, &mut x, seeds);
        }
        LARGEST.with(|m| m.set(0));
        ARMED.with(|a| a.set(true));
        let res = std::panic::catch_unwind(AssertUnwindSafe(|| target(&x)));
        ARMED.with(|a| a.set(false));
        let largest = LARGEST.with(|m| m.get());
        let bad = match res {
            Err(_) => Some("panicked".to_string()),
            Ok(()) if largest > limit(x.len()) => Some(format!(
                "allocated {largest} bytes at once for a {}-byte input (limit {})",
                x.len(),
                limit(x.len())
            )),
            Ok(()) => None,
        };
        if let Some(why) = bad {
            let path = std::env::temp_dir().join(format!("ferrotron-fuzz-{name}.bin"));
            let _ = std::fs::write(&path, &x);
            let hex: String = x.iter().take(512).map(|b| format!("{b:02x}")).collect();
            panic!(
                "fuzz {name}: input {why} (saved to {}): {hex}",
                path.display()
            );
        }
        execs += 1;
        errors_seen += u64::from(largest > 0);
    }
    eprintln!(
        "fuzz {name}: {execs} executions in {:.1} s, no panic, allocations within the limit",
        t0.elapsed().as_secs_f64()
    );
    let _ = errors_seen;
}

/// The test corpus's first shard.
fn shard_seed() -> Vec<u8> {
    let dir = common::corpus();
    let mut b = std::fs::read(dir.join("val_000000.bin")).unwrap();
    b.truncate(1024 + 2 * 300);
    b[8..12].copy_from_slice(&300i32.to_le_bytes());
    b
}

#[test]
fn fuzz_token_shard_header() {
    let seeds = vec![shard_seed()];
    // A shard is decoded into 2 bytes per token it holds: at most the input's size, plus slack.
    fuzz(
        "shard",
        11,
        &seeds,
        |n| 2 * n + 4096,
        |x| {
            let _ = ferrotron::data::shard::decode_shard(x);
        },
    );
}

#[test]
fn fuzz_config_toml_and_overrides() {
    let base =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("inputs/tiny.toml")).unwrap();
    let sets = b"train.steps=3\nparallel.tp=2\noptim.lr=1e-3\ndata.sampler=\"shuffle\"\nruntime.watchdog_s=5\nmodel.n_layer=2".to_vec();
    let seeds = vec![base, sets];
    // TOML parsing allocates in proportion to the text (strings, tables); nothing in a config
    // sizes a buffer.
    fuzz(
        "config",
        23,
        &seeds,
        |n| 64 * n + (1 << 16),
        |x| {
            let text = String::from_utf8_lossy(x);
            match text.split_once("\n#SETS\n") {
                Some((toml, sets)) => {
                    let sets: Vec<String> = sets.lines().map(String::from).collect();
                    let _ = ferrotron::config::Config::from_str_with_overrides(toml, &sets);
                }
                None => {
                    let sets: Vec<String> = text.lines().take(4).map(String::from).collect();
                    let _ = ferrotron::config::Config::from_str_with_overrides(&text, &[]);
                    let tiny = include_str!("../inputs/tiny.toml");
                    let _ = ferrotron::config::Config::from_str_with_overrides(tiny, &sets);
                }
            }
        },
    );
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/reference/fixtures/gpt2_v1000")
            .join(name),
    )
    .unwrap()
}

#[test]
fn fuzz_hf_config_json() {
    let seeds = vec![fixture("config.json")];
    let p = Path::new("config.json");
    // The parse allocates in proportion to the text; the layout of an accepted shape (up to
    // 4096 layers, see Gpt2Config::check_bounds) holds about 12 entries per layer.
    fuzz(
        "hf-config",
        37,
        &seeds,
        |n| 64 * n + (8 << 20),
        |x| {
            if let Ok(cfg) = ferrotron::checkpoint::hf::parse_config(&String::from_utf8_lossy(x), p)
            {
                // A shape that passed is one whose layout can be built.
                let _ = ferrotron::model::gpt2::ParamLayout::new(&cfg);
            }
        },
    );
}

#[test]
fn fuzz_safetensors_header() {
    let bytes = fixture("model.safetensors");
    let cfg = ferrotron::checkpoint::hf::parse_config(
        &String::from_utf8(fixture("config.json")).unwrap(),
        Path::new("config.json"),
    )
    .unwrap();
    // Mutate the header (8-byte length + JSON) and keep the tensor data as it is.
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let (head, data) = bytes.split_at(8 + hlen);
    let seeds = vec![head.to_vec()];
    let p = Path::new("model.safetensors");
    let full = bytes.len();
    // Parameters are allocated for the configured model (4 bytes each), whatever the header.
    fuzz(
        "safetensors",
        41,
        &seeds,
        |_| 4 * full + (1 << 20),
        |x| {
            let mut file = x.to_vec();
            file.extend_from_slice(data);
            let _ = ferrotron::checkpoint::hf::params_from_safetensors(&cfg, &file, p);
        },
    );
}

#[test]
fn fuzz_checkpoint_meta_attributes() {
    use ferrotron::checkpoint::meta::Meta;
    let dir = std::env::temp_dir().join(format!("ferrotron-fuzz-meta-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The attributes as 14 little-endian u64s (counts, tokens, samples, seed, adam_t); the
    // strings stay valid. Each input is written as a real meta.h5 and read back.
    let good: Vec<u64> = vec![1, 2, 1, 0, 5, 8, 32, 50257, 32, 32, 2, 4, 1280, 40];
    let seed: Vec<u8> = good.iter().flat_map(|v| v.to_le_bytes()).collect();
    let names = [
        "dp",
        "tp",
        "pp",
        "zero",
        "step",
        "global_batch_size",
        "seq_len",
        "vocab_size",
        "n_positions",
        "n_embd",
        "n_layer",
        "n_head",
        "tokens",
        "samples",
    ];
    fuzz(
        "meta",
        53,
        &[seed],
        |_| 1 << 20,
        |x| {
            let mut v = [0u64; 14];
            for (i, c) in x.chunks(8).take(14).enumerate() {
                let mut b = [0u8; 8];
                b[..c.len()].copy_from_slice(c);
                v[i] = u64::from_le_bytes(b);
            }
            let path = dir.join("meta.h5");
            {
                let f = hdf5::File::create(&path).unwrap();
                let put = |k: &str, val: u64| {
                    f.new_attr::<u64>()
                        .create(k)
                        .unwrap()
                        .write_scalar(&val)
                        .unwrap()
                };
                put("format_version", 1);
                for (k, val) in names.iter().zip(v) {
                    put(k, val);
                }
                put("seed", 1);
                put("adam_t", 5);
                let s: hdf5::types::VarLenUnicode = "x".parse().unwrap();
                for k in ["ferrotron_version", "config", "sampler"] {
                    f.new_attr::<hdf5::types::VarLenUnicode>()
                        .create(k)
                        .unwrap()
                        .write_scalar(&s)
                        .unwrap();
                }
            }
            LARGEST.with(|m| m.set(0));
            ARMED.with(|a| a.set(true));
            if let Ok(m) = Meta::read(&dir) {
                let _ = m.files();
                let _ = ferrotron::checkpoint::load::Source::open(&dir);
            }
        },
    );
    std::fs::remove_dir_all(dir).unwrap();
}
