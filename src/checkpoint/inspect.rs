//! `ferrotron ckpt inspect | verify | export`: read-only tools on sharded HDF5 checkpoints.

use super::load::{Kind, Source};
use super::meta::Meta;
use crate::cli::CkptCommand;
use crate::model::gpt2::ParamLayout;
use crate::parallel::shard::{repad, StageLayout};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// `println!` that returns an error instead of panicking when stdout is closed (`| head`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($t)*).context("writing to stdout")?
    }};
}

pub fn run(cmd: CkptCommand) -> Result<()> {
    match cmd {
        CkptCommand::Inspect { path } => inspect(&locate(&path)?),
        CkptCommand::Verify { path } => verify(&locate(&path)?),
        CkptCommand::Export { path, hf } => export(&locate(&path)?, &hf),
    }
}

/// A step directory: `path` itself, or the one its `latest` names.
fn locate(path: &Path) -> Result<PathBuf> {
    let latest = path.join("latest");
    if path.join("meta.h5").exists() || path.join("COMPLETE").exists() || !latest.exists() {
        if !path.is_dir() {
            bail!("{}: no such checkpoint directory", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let name = std::fs::read_to_string(&latest)
        .with_context(|| format!("reading {}", latest.display()))?;
    Ok(path.join(name.trim()))
}

fn inspect(dir: &Path) -> Result<()> {
    let meta = Meta::read(dir)?;
    let state = if dir.join("COMPLETE").exists() {
        "complete"
    } else {
        "INCOMPLETE"
    };
    let m = &meta.model;
    outln!("checkpoint {} ({state})", dir.display());
    outln!(
        "  step {}, tokens {}, samples {}, grid dp={} tp={} pp={}, ZeRO-{}, format {}, written by ferrotron {}",
        meta.step, meta.tokens, meta.samples, meta.dp, meta.tp, meta.pp, meta.zero,
        meta.format_version, meta.ferrotron_version
    );
    outln!(
        "  model: vocab_size={} n_positions={} n_embd={} n_layer={} n_head={}; global batch {} × {} tokens; AdamW t={}",
        m.vocab_size, m.n_positions, m.n_embd, m.n_layer, m.n_head, meta.global_batch_size,
        meta.seq_len, meta.adam_t
    );
    let mut total = 0u64;
    for name in meta.files() {
        let path = dir.join(&name);
        let size = std::fs::metadata(&path).map(|m| m.len()).ok();
        total += size.unwrap_or(0);
        let size = size.map_or("MISSING".to_string(), human);
        outln!("  {name}  {size}");
        if name == "meta.h5" || !path.exists() {
            continue;
        }
        let f =
            hdf5::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        list_datasets(&f, "")?;
    }
    outln!("  total {}", human(total));
    Ok(())
}

fn list_datasets(g: &hdf5::Group, prefix: &str) -> Result<()> {
    for name in g.member_names()? {
        let full = format!("{prefix}{name}");
        if let Ok(ds) = g.dataset(&name) {
            let attr = |k: &str| -> String {
                ds.attr(k)
                    .and_then(|a| a.read_raw::<u64>())
                    .map_or("?".into(), |v| format!("{v:?}"))
            };
            let bytes = ds.size() * ds.dtype().map_or(0, |t| t.size());
            outln!(
                "    {full}  f32 {:?}  of {} at {}  {}",
                ds.shape(),
                attr("global_shape"),
                attr("offset"),
                human(bytes as u64)
            );
        } else if let Ok(sub) = g.group(&name) {
            list_datasets(&sub, &format!("{full}/"))?;
        }
    }
    Ok(())
}

fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Completeness, every expected file, every tensor's checksum, shape and place.
fn verify(dir: &Path) -> Result<()> {
    super::load::check_complete(dir)?;
    let mut src = Source::open(dir)?;
    for name in src.meta.files() {
        if !dir.join(&name).exists() {
            bail!("checkpoint file {} is missing", dir.join(name).display());
        }
    }
    let n = src.verify_all()?;
    outln!(
        "ok: {} — step {}, {} files, {n} tensors (model and AdamW m, v): checksums, shapes and offsets match",
        dir.display(),
        src.meta.step,
        src.meta.files().len()
    );
    Ok(())
}

/// The model as a Hugging Face directory: the checkpoint read onto a 1-rank layout.
fn export(dir: &Path, out: &Path) -> Result<()> {
    super::load::check_complete(dir)?;
    let mut src = Source::open(dir)?;
    let cfg = src.meta.model;
    let gcfg = cfg.with_tp_padding(1);
    let global = ParamLayout::new(&gcfg);
    let ly = StageLayout::new(&gcfg, &global, 1, 0, 1, 0)?;
    let local = src.load_local(&ly, Kind::Model)?;
    let mut g = vec![0.0f32; global.total];
    ly.insert(&global, &local, &mut g);
    let host = repad(&global, &g, &ParamLayout::new(&cfg));
    super::hf::save(out, &cfg, &host).with_context(|| format!("writing {}", out.display()))?;
    outln!(
        "exported step {} of {} to {} (Hugging Face GPT-2)",
        src.meta.step,
        dir.display(),
        out.display()
    );
    Ok(())
}
