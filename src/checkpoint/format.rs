//! The HDF5 checkpoint format (version 1): file names, where each stored tensor sits in its
//! global tensor, and checked reads and writes of single tensors.
//!
//! A checkpoint is a directory `step_<N>` (N zero-padded to 8 digits):
//! - `meta.h5` — root attributes only: `format_version`, `ferrotron_version`, `config` (the
//!   run's TOML), `dp`, `tp`, `pp`, `zero`, `step` (optimizer steps done), `tokens`, `samples`
//!   (training samples consumed: the data-loader position; the order is a pure function of
//!   `train.seed`, `sampler` and the sample index, so there is no other RNG state), `seed`,
//!   `adam_t`, `global_batch_size`, `seq_len`, the model shape (`vocab_size`, `n_positions`,
//!   `n_embd`, `n_layer`, `n_head`) and `sampler` (the window order, `feistel` or `shuffle`;
//!   absent in checkpoints written before it was recorded, which used `shuffle`).
//! - `shard_pp<p>_tp<t>.h5` — written by the dp-rank-0 replica of stage p, TP rank t:
//!   `/model/<name>` and, without ZeRO-1, `/optim/<name>/m` and `/optim/<name>/v`. Each
//!   dataset carries `global_shape`, `offset` (u64 arrays: the box of the global tensor it
//!   holds) and `crc32` (of its little-endian f32 bytes). Each tensor is stored once: replicated
//!   ones (LayerNorms, `wpe`, row-parallel biases) by TP rank 0, the tied `wte` by the first
//!   stage (where [`StageLayout::counted`] is set).
//! - `optim_pp<p>_tp<t>_dp<d>.h5` — with ZeRO-1, each dp rank writes the optimizer state it
//!   owns: 1-D datasets `/optim/<name>/{m,v}` holding elements `local_range = [a, b)` of the
//!   shard's tensor (flattened in the order of `/model/<name>`), plus `global_shape`, `offset`
//!   of that tensor's box and `crc32`.
//! - `COMPLETE` — written last, after every rank finished; lists the files.
//!
//! Stored shapes are global shapes' boxes: replicated tensors whole; row-parallel tensors and
//! `wte` by rows (`wte` without the padding rows, global shape `[vocab_size, C]`); column-
//! parallel tensors by columns, with `c_attn` viewed as `[C, 3, C]` (bias `[3, C]`) so each TP
//! shard's q, k and v columns form one box. Boxes do not depend on the grid's padding, so any
//! grid can read any other's files.

use crate::model::gpt2::ParamLayout;
use crate::parallel::shard::{Split, StageLayout};
use anyhow::{bail, Context, Result};
use hdf5::types::VarLenUnicode;
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 1;

pub fn step_dir_name(step: usize) -> String {
    format!("step_{step:08}")
}
pub fn shard_file(pp: usize, tp: usize) -> String {
    format!("shard_pp{pp}_tp{tp}.h5")
}
pub fn optim_file(pp: usize, tp: usize, dp: usize) -> String {
    format!("optim_pp{pp}_tp{tp}_dp{dp}.h5")
}

/// Where local tensor `i` of a stage layout sits in its global tensor, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub shape: Vec<usize>,
    pub global_shape: Vec<usize>,
    pub offset: Vec<usize>,
}

impl Placement {
    /// Stored elements: a prefix of the local tensor (all of it, except padding rows of `wte`).
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The stored box of local tensor `i` (`global` is the grid's padded global layout).
pub fn placement(ly: &StageLayout, i: usize, global: &ParamLayout, vocab: usize) -> Placement {
    let e = &ly.entries[i];
    let gi = ly.global_index[i];
    let mut gshape = global.entries[gi].shape.clone();
    let n = gshape.len();
    let zeros = vec![0; n];
    match ly.splits[i] {
        Split::Replicated => Placement {
            shape: e.shape.clone(),
            global_shape: gshape,
            offset: zeros,
        },
        Split::Rows => {
            let (mut shape, mut offset) = (e.shape.clone(), zeros);
            offset[0] = ly.tp_rank * e.shape[0];
            if gi == global.wte {
                gshape[0] = vocab;
                shape[0] = vocab.saturating_sub(offset[0]).min(e.shape[0]);
            }
            Placement {
                shape,
                global_shape: gshape,
                offset,
            }
        }
        Split::Cols(parts) => {
            let (cols, w) = (gshape[n - 1], e.shape[n - 1] / parts);
            let lead = &gshape[..n - 1];
            let (mut shape, mut global_shape) = (lead.to_vec(), lead.to_vec());
            let mut offset = vec![0; n - 1];
            if parts > 1 {
                shape.push(parts);
                global_shape.push(parts);
                offset.push(0);
            }
            shape.push(w);
            global_shape.push(cols / parts);
            offset.push(ly.tp_rank * w);
            Placement {
                shape,
                global_shape,
                offset,
            }
        }
    }
}

/// CRC-32 of the little-endian bytes of `data`.
pub fn crc32(data: &[f32]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    if cfg!(target_endian = "little") {
        h.update(bytemuck::cast_slice(data));
    } else {
        for x in data {
            h.update(&x.to_le_bytes());
        }
    }
    h.finalize()
}

fn u64s(v: &[usize]) -> Vec<u64> {
    v.iter().map(|&x| x as u64).collect()
}

/// Writes dataset `path` (groups created as needed) with `shape`, its box attributes and CRC;
/// `local_range` is added for a ZeRO-1 piece.
pub fn write_tensor(
    file: &hdf5::File,
    path: &str,
    data: &[f32],
    shape: &[usize],
    p: &Placement,
    local_range: Option<[usize; 2]>,
) -> Result<()> {
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        bail!(
            "refusing to save tensor {path}: element {i} is {} (a checkpoint never holds \
             non-finite values)",
            data[i]
        );
    }
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let g = ensure_group(file, parent)?;
    let ds = g.new_dataset::<f32>().shape(shape).create(name)?;
    ds.write_raw(data)?;
    let attr = |k: &str, v: &[usize]| -> Result<()> {
        ds.new_attr::<u64>()
            .shape([v.len()])
            .create(k)?
            .write_raw(&u64s(v))?;
        Ok(())
    };
    attr("global_shape", &p.global_shape)?;
    attr("offset", &p.offset)?;
    if let Some(r) = local_range {
        attr("local_range", &r)?;
    }
    ds.new_attr::<u32>()
        .create("crc32")?
        .write_scalar(&crc32(data))?;
    Ok(())
}

fn ensure_group(file: &hdf5::File, path: &str) -> Result<hdf5::Group> {
    let mut g: hdf5::Group = (**file).clone();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        g = match g.group(part) {
            Ok(x) => x,
            Err(_) => g.create_group(part)?,
        };
    }
    Ok(g)
}

/// A stored tensor read back and checked against its CRC.
pub struct StoredTensor {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
    pub global_shape: Vec<usize>,
    pub offset: Vec<usize>,
    pub local_range: Option<[usize; 2]>,
}

/// A u64-array attribute of a dataset, as usizes.
fn usize_attr(ds: &hdf5::Dataset, k: &str) -> Result<Vec<usize>> {
    let v: Vec<u64> = ds.attr(k)?.read_raw()?;
    Ok(v.into_iter().map(|x| x as usize).collect())
}

/// Error unless `data` matches the dataset's `crc32` attribute and is finite (`at` names it in
/// messages).
fn check_crc(ds: &hdf5::Dataset, data: &[f32], at: &dyn Fn() -> String) -> Result<()> {
    let want: u32 = ds
        .attr("crc32")
        .and_then(|a| a.read_scalar())
        .with_context(|| format!("{}: no crc32", at()))?;
    let got = crc32(data);
    if got != want {
        bail!(
            "{}: checksum mismatch (crc32 {got:08x}, stored {want:08x}) — the file is corrupt",
            at()
        );
    }
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        bail!("{}: element {i} is {} (not finite)", at(), data[i]);
    }
    Ok(())
}

/// Reads dataset `path` of `file` (at `file_path`, for messages) and checks its CRC.
pub fn read_tensor(file: &hdf5::File, file_path: &Path, path: &str) -> Result<StoredTensor> {
    let at = || format!("tensor {path} in {}", file_path.display());
    let ds = file
        .dataset(path)
        .with_context(|| format!("{} is missing", at()))?;
    let data = ds
        .read_raw::<f32>()
        .with_context(|| format!("reading {}", at()))?;
    check_crc(&ds, &data, &at)?;
    let local_range = match usize_attr(&ds, "local_range") {
        Ok(v) if v.len() == 2 => Some([v[0], v[1]]),
        _ => None,
    };
    Ok(StoredTensor {
        shape: ds.shape(),
        global_shape: usize_attr(&ds, "global_shape").with_context(at)?,
        offset: usize_attr(&ds, "offset").with_context(at)?,
        local_range,
        data,
    })
}

/// Reads dataset `path` straight into `out` (which must have its exact size), checking its
/// CRC and that it is stored with `shape` at `offset` of `global_shape`.
pub fn read_tensor_into(
    file: &hdf5::File,
    file_path: &Path,
    path: &str,
    p: &Placement,
    out: &mut [f32],
) -> Result<()> {
    let at = || format!("tensor {path} in {}", file_path.display());
    let ds = file
        .dataset(path)
        .with_context(|| format!("{} is missing", at()))?;
    let shape = ds.shape();
    let gshape = usize_attr(&ds, "global_shape").with_context(at)?;
    let off = usize_attr(&ds, "offset").with_context(at)?;
    if shape != p.shape || gshape != p.global_shape || off != p.offset {
        bail!(
            "{}: stored shape {shape:?} at offset {off:?} of {gshape:?}, expected {:?} at {:?} of {:?} for this grid",
            at(),
            p.shape,
            p.offset,
            p.global_shape
        );
    }
    ds.read_into_raw::<f32>(out)
        .with_context(|| format!("reading {}", at()))?;
    check_crc(&ds, out, &at)
}

pub fn write_str_attr(loc: &hdf5::Location, k: &str, v: &str) -> Result<()> {
    let s: VarLenUnicode = v
        .parse()
        .map_err(|e| anyhow::anyhow!("attribute {k}: {e:?}"))?;
    loc.new_attr::<VarLenUnicode>()
        .create(k)?
        .write_scalar(&s)?;
    Ok(())
}
pub fn write_u64_attr(loc: &hdf5::Location, k: &str, v: u64) -> Result<()> {
    loc.new_attr::<u64>().create(k)?.write_scalar(&v)?;
    Ok(())
}
pub fn read_str_attr(loc: &hdf5::Location, k: &str) -> Result<String> {
    let s: VarLenUnicode = loc.attr(k)?.read_scalar()?;
    Ok(s.as_str().to_string())
}
pub fn read_u64_attr(loc: &hdf5::Location, k: &str) -> Result<u64> {
    Ok(loc.attr(k)?.read_scalar()?)
}

/// Writes a file atomically: `write` fills `<path>.tmp`, which is flushed, fsynced and renamed
/// to `path`; the directory is fsynced so the rename survives a crash.
pub fn atomic_write(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let _ = std::fs::remove_file(&tmp);
    write(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gpt2::Gpt2Config;

    #[test]
    fn non_finite_tensors_are_never_written() {
        let path = std::env::temp_dir().join(format!("ferrotron-nan-{}.h5", std::process::id()));
        let f = hdf5::File::create(&path).unwrap();
        let p = Placement {
            shape: vec![3],
            global_shape: vec![3],
            offset: vec![0],
        };
        let e =
            write_tensor(&f, "model/x", &[1.0, f32::INFINITY, 0.0], &[3], &p, None).unwrap_err();
        assert!(
            format!("{e:#}").contains("refusing to save tensor model/x: element 1 is inf"),
            "{e:#}"
        );
        write_tensor(&f, "model/y", &[1.0, 2.0, 3.0], &[3], &p, None).unwrap();
        drop(f);
        std::fs::remove_file(path).unwrap();
    }

    /// The stored boxes of all TP shards of a tensor tile its global shape exactly once, and
    /// do not depend on the TP size.
    #[test]
    fn placements_tile_the_global_tensors() {
        for tp in [1, 2, 4] {
            let c = Gpt2Config::new(150, 8, 16, 2, 4).with_tp_padding(tp);
            let g = ParamLayout::new(&c);
            let shards: Vec<_> = (0..tp)
                .map(|r| StageLayout::new(&c, &g, tp, r, 1, 0).unwrap())
                .collect();
            for i in 0..shards[0].entries.len() {
                // Each tensor is stored where it is counted: replicated ones by TP rank 0.
                let ps: Vec<Placement> = shards
                    .iter()
                    .filter(|ly| ly.counted[i])
                    .map(|ly| placement(ly, i, &g, 150))
                    .collect();
                let gs = &ps[0].global_shape;
                assert!(ps.iter().all(|p| &p.global_shape == gs));
                let total: usize = gs.iter().product();
                let mut seen = vec![0u8; total];
                for p in &ps {
                    for_each_index(&p.shape, |idx| {
                        let mut flat = 0;
                        for d in 0..gs.len() {
                            flat = flat * gs[d] + idx[d] + p.offset[d];
                        }
                        seen[flat] += 1;
                    });
                }
                let name = &shards[0].entries[i].name;
                assert!(
                    seen.iter().all(|&s| s == 1),
                    "tp={tp} {name}: boxes do not tile"
                );
            }
            let qkv = shards[0]
                .entries
                .iter()
                .position(|e| e.name.ends_with("c_attn.weight"))
                .unwrap();
            assert_eq!(
                placement(&shards[0], qkv, &g, 150).global_shape,
                vec![16, 3, 16]
            );
        }
    }

    fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
        let n: usize = shape.iter().product();
        let mut idx = vec![0; shape.len()];
        for _ in 0..n {
            f(&idx);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }

    #[test]
    fn crc_matches_known_value() {
        // crc32 of the bytes 00 00 80 3f (1.0f32) — standard CRC-32 (IEEE).
        let want = {
            let mut h = crc32fast::Hasher::new();
            h.update(&[0, 0, 0x80, 0x3f]);
            h.finalize()
        };
        assert_eq!(crc32(&[1.0]), want);
    }
}
