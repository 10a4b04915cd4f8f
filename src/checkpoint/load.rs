//! Reading checkpoints onto any grid. For each tensor a rank needs, the stored boxes of the
//! writing grid's shards are read whole (so their CRC can be checked), placed into the global
//! tensor, and the rank's own part extracted — the same run arithmetic (`StageLayout`) that
//! initialisation and export use, so every (dp, tp, pp) reads every other.

use super::format::{
    optim_file, placement, read_tensor, read_tensor_into, shard_file, step_dir_name, StoredTensor,
};
use super::meta::Meta;
use super::save::list_steps;
use crate::model::gpt2::{Gpt2Config, ParamLayout};
use crate::parallel::shard::{stage_layers, Split, StageLayout};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which state to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Model,
    AdamM,
    AdamV,
}

impl Kind {
    /// The HDF5 path of tensor `name`'s state of this kind.
    fn dataset(self, name: &str) -> String {
        match self {
            Kind::Model => format!("model/{name}"),
            Kind::AdamM => format!("optim/{name}/m"),
            Kind::AdamV => format!("optim/{name}/v"),
        }
    }
}

/// The checkpoint a `--resume` spec names. `auto`: the one `<root>/latest` names, or None when
/// `root` holds no checkpoint yet or no `root` is configured (a fresh start). A path: a step directory, or a root whose
/// `latest` is followed. The result is always a complete checkpoint.
pub fn resolve(spec: &str, root: Option<&Path>) -> Result<Option<PathBuf>> {
    if spec == "auto" {
        let Some(root) = root else {
            // The job templates always pass `--resume auto`; without checkpoints there is
            // nothing to resume from.
            log::warn!("--resume auto without checkpoint.dir: a fresh start (nothing is saved, so a stopped run cannot resume)");
            return Ok(None);
        };
        return from_root(root, true);
    }
    let p = PathBuf::from(spec);
    if p.join("meta.h5").exists()
        || p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("step_"))
    {
        check_complete(&p)?;
        return Ok(Some(p));
    }
    if !p.is_dir() {
        bail!("--resume {spec}: no such checkpoint directory");
    }
    from_root(&p, false)
}

fn from_root(root: &Path, fresh_ok: bool) -> Result<Option<PathBuf>> {
    let latest = root.join("latest");
    if latest.exists() {
        let name = std::fs::read_to_string(&latest)
            .with_context(|| format!("reading {}", latest.display()))?;
        let dir = root.join(name.trim());
        if name.trim().is_empty() || !dir.is_dir() {
            bail!(
                "{} names '{}', which does not exist (restore that checkpoint or remove `latest` to pick the newest complete one)",
                latest.display(),
                name.trim()
            );
        }
        check_complete(&dir)?;
        return Ok(Some(dir));
    }
    let newest = list_steps(root)?.into_iter().rev().find(|s| s.2);
    match newest {
        Some((_, dir, _)) => Ok(Some(dir)),
        None if fresh_ok => Ok(None),
        None => bail!("{} holds no complete checkpoint", root.display()),
    }
}

/// Error unless `dir` has its `COMPLETE` marker.
pub fn check_complete(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!("checkpoint {} does not exist", dir.display());
    }
    if !dir.join("COMPLETE").exists() {
        bail!(
            "checkpoint {} is incomplete (no COMPLETE marker: its save was interrupted)",
            dir.display()
        );
    }
    Ok(())
}

/// The writing grid's view of a checkpoint: its layouts, and open files.
pub struct Source {
    pub dir: PathBuf,
    pub meta: Meta,
    gcfg: Gpt2Config,
    global: ParamLayout,
    files: HashMap<String, hdf5::File>,
    layouts: HashMap<(usize, usize), Arc<StageLayout>>,
    /// Bytes of tensor data read so far.
    pub bytes_read: u64,
}

impl Source {
    pub fn open(dir: &Path) -> Result<Self> {
        let meta = Meta::read(dir)?;
        let gcfg = meta.model.with_tp_padding(meta.tp);
        Ok(Self {
            dir: dir.to_path_buf(),
            global: ParamLayout::new(&gcfg),
            gcfg,
            meta,
            files: HashMap::new(),
            layouts: HashMap::new(),
            bytes_read: 0,
        })
    }

    fn file(&mut self, name: &str) -> Result<&hdf5::File> {
        if !self.files.contains_key(name) {
            let path = self.dir.join(name);
            if !path.exists() {
                bail!("checkpoint file {} is missing", path.display());
            }
            let f = hdf5::File::open(&path).with_context(|| {
                format!("cannot open {} (truncated or not HDF5?)", path.display())
            })?;
            self.files.insert(name.to_string(), f);
        }
        Ok(&self.files[name])
    }

    fn layout(&mut self, s: usize, t: usize) -> Result<Arc<StageLayout>> {
        if !self.layouts.contains_key(&(s, t)) {
            let m = &self.meta;
            let ly = StageLayout::new(&self.gcfg, &self.global, m.tp, t, m.pp, s)?;
            self.layouts.insert((s, t), Arc::new(ly));
        }
        Ok(Arc::clone(&self.layouts[&(s, t)]))
    }

    /// The stage that stores global tensor `gi` (wte: the first).
    fn stage_of(&self, gi: usize) -> usize {
        let g = &self.global;
        let (l, pp) = (self.meta.model.n_layer, self.meta.pp);
        let layer = g.blocks.iter().position(|b| {
            let first = b.ln1_w;
            gi >= first && gi <= b.fcproj_b
        });
        match layer {
            Some(l0) => (0..pp)
                .find(|&s| stage_layers(l, pp, s).contains(&l0))
                .unwrap_or(0),
            None if gi == g.lnf_w || gi == g.lnf_b => pp - 1,
            None => 0,
        }
    }

    /// Global tensor `name` (this source's padded layout) of `kind`.
    pub fn global_tensor(&mut self, name: &str, kind: Kind) -> Result<Vec<f32>> {
        let gi = self
            .global
            .entries
            .iter()
            .position(|e| e.name == name)
            .with_context(|| format!("the checkpoint's model has no tensor {name}"))?;
        let s = self.stage_of(gi);
        if self.meta.tp == 1 {
            // One shard holds the whole tensor, in global order (no copy needed).
            let ly = self.layout(s, 0)?;
            let i = ly
                .global_index
                .iter()
                .position(|&x| x == gi)
                .context("layout")?;
            return self.local_tensor(&ly, i, kind);
        }
        let mut g = vec![0.0f32; self.global.entries[gi].len];
        for t in 0..self.meta.tp {
            let ly = self.layout(s, t)?;
            let i = ly
                .global_index
                .iter()
                .position(|&x| x == gi)
                .context("layout")?;
            if !ly.counted[i] {
                continue;
            }
            let local = self.local_tensor(&ly, i, kind)?;
            for run in &ly.runs[i] {
                g[run.global..][..run.len].copy_from_slice(&local[run.local..][..run.len]);
            }
        }
        Ok(g)
    }

    /// Local tensor `i` of shard layout `ly` (padding rows zero), checked against its box.
    fn local_tensor(&mut self, ly: &StageLayout, i: usize, kind: Kind) -> Result<Vec<f32>> {
        let e = &ly.entries[i];
        let p = placement(ly, i, &self.global, self.meta.model.vocab_size);
        if p.is_empty() {
            return Ok(vec![0.0f32; e.len]);
        }
        let (s, t) = (ly.stage, ly.tp_rank);
        let path = kind.dataset(&e.name);
        if kind != Kind::Model && self.meta.sharded_optim() {
            return self.zero_pieces(s, t, &path, &p.shape, vec![0.0f32; e.len]);
        }
        let name = shard_file(s, t);
        let fpath = self.dir.join(&name);
        let st = read_tensor(self.file(&name)?, &fpath, &path)?;
        self.bytes_read += 4 * st.data.len() as u64;
        check_box(&st, &p.shape, &p.global_shape, &p.offset, &fpath, &path)?;
        let mut local = st.data;
        local.resize(e.len, 0.0); // padding rows of wte
        Ok(local)
    }

    /// A ZeRO-1 optimizer tensor gathered from the pieces in every dp rank's file.
    fn zero_pieces(
        &mut self,
        s: usize,
        t: usize,
        path: &str,
        shape: &[usize],
        mut local: Vec<f32>,
    ) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        let mut covered = 0;
        for d in 0..self.meta.dp {
            let name = optim_file(s, t, d);
            let fpath = self.dir.join(&name);
            let f = self.file(&name)?;
            if f.dataset(path).is_err() {
                continue; // this owner's range does not touch the tensor
            }
            let st = read_tensor(f, &fpath, path)?;
            self.bytes_read += 4 * st.data.len() as u64;
            let Some([a, b]) = st.local_range else {
                bail!("{} in {}: no local_range attribute", path, fpath.display());
            };
            if b > n || b - a != st.data.len() {
                bail!(
                    "{} in {}: local_range [{a}, {b}) does not fit the tensor's {n} elements",
                    path,
                    fpath.display()
                );
            }
            local[a..b].copy_from_slice(&st.data);
            covered += b - a;
        }
        if covered != n {
            bail!(
                "{path} of stage {s}, TP rank {t}: the dp files hold {covered} of its {n} elements"
            );
        }
        Ok(local)
    }

    /// The state of `kind` for a rank with layout `ly` (any grid's layout of the same model):
    /// its flat local buffer.
    pub fn load_local(&mut self, ly: &StageLayout, kind: Kind) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; ly.total];
        for (i, e) in ly.entries.iter().enumerate() {
            if self.read_direct(ly, i, kind, &mut out[e.offset..e.offset + e.len])? {
                continue;
            }
            let src = self.global_tensor(&e.name, kind)?;
            // Vocabulary padding may differ between grids: rows are the leading dimension and
            // padding rows are zero, so elements past the source's end are zero.
            for run in &ly.runs[i] {
                let n = src.len().saturating_sub(run.global).min(run.len);
                out[e.offset + run.local..][..n].copy_from_slice(&src[run.global..][..n]);
            }
        }
        Ok(out)
    }

    /// Fast path when the writing grid stored exactly this local tensor (same TP size, not a
    /// ZeRO piece): read it straight into `out`. Returns false when it does not apply.
    fn read_direct(
        &mut self,
        ly: &StageLayout,
        i: usize,
        kind: Kind,
        out: &mut [f32],
    ) -> Result<bool> {
        if ly.tp != self.meta.tp || (kind != Kind::Model && self.meta.sharded_optim()) {
            return Ok(false);
        }
        let name = &ly.entries[i].name;
        let Some(gi) = self.global.entries.iter().position(|e| &e.name == name) else {
            return Ok(false);
        };
        let s = self.stage_of(gi);
        // Replicated tensors are stored by TP rank 0 (the same values on every TP rank).
        let t = if ly.splits[i] == Split::Replicated {
            0
        } else {
            ly.tp_rank
        };
        let old = self.layout(s, t)?;
        let Some(j) = old.global_index.iter().position(|&x| x == gi) else {
            return Ok(false);
        };
        let p = placement(&old, j, &self.global, self.meta.model.vocab_size);
        if !old.counted[j] || p != placement(ly, i, &self.global, self.meta.model.vocab_size) {
            return Ok(false);
        }
        if p.is_empty() {
            return Ok(true);
        }
        let path = kind.dataset(name);
        let file = shard_file(s, t);
        let fpath = self.dir.join(&file);
        let n = p.len();
        read_tensor_into(self.file(&file)?, &fpath, &path, &p, &mut out[..n])?;
        self.bytes_read += 4 * n as u64;
        Ok(true)
    }

    /// Every stored tensor of every shard, read and checked (CRC, shape, box); returns the
    /// number of tensors checked. Used by `ckpt verify`.
    pub fn verify_all(&mut self) -> Result<usize> {
        let kinds = [Kind::Model, Kind::AdamM, Kind::AdamV];
        let mut n = 0;
        for s in 0..self.meta.pp {
            for t in 0..self.meta.tp {
                let ly = self.layout(s, t)?;
                for i in 0..ly.entries.len() {
                    if !ly.counted[i] {
                        continue;
                    }
                    for k in kinds {
                        self.local_tensor(&ly, i, k)?;
                        n += 1;
                    }
                }
            }
        }
        Ok(n)
    }
}

fn check_box(
    st: &StoredTensor,
    shape: &[usize],
    global_shape: &[usize],
    offset: &[usize],
    file: &Path,
    path: &str,
) -> Result<()> {
    if st.shape != shape || st.global_shape != global_shape || st.offset != offset {
        bail!(
            "{path} in {}: stored shape {:?} at offset {:?} of {:?}, expected {:?} at {:?} of {:?} for this grid",
            file.display(),
            st.shape,
            st.offset,
            st.global_shape,
            shape,
            offset,
            global_shape
        );
    }
    Ok(())
}

/// The step directory name for `step` under `root`.
pub fn step_path(root: &Path, step: usize) -> PathBuf {
    root.join(step_dir_name(step))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--resume auto|PATH` resolution: fresh start, `latest`, dangling `latest`, incomplete.
    #[test]
    fn resolve_follows_latest_and_refuses_incomplete() {
        let root = std::env::temp_dir().join(format!("ferrotron-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        assert_eq!(
            resolve("auto", Some(&root)).unwrap(),
            None,
            "empty dir: fresh start"
        );
        assert_eq!(
            resolve("auto", None).unwrap(),
            None,
            "no checkpoint.dir: fresh start"
        );
        let s4 = root.join("step_00000004");
        std::fs::create_dir_all(&s4).unwrap();
        std::fs::write(s4.join("COMPLETE"), "").unwrap();
        let s8 = root.join("step_00000008");
        std::fs::create_dir_all(&s8).unwrap(); // incomplete
        assert_eq!(
            resolve("auto", Some(&root)).unwrap(),
            Some(s4.clone()),
            "newest complete"
        );
        std::fs::write(root.join("latest"), "step_00000004\n").unwrap();
        assert_eq!(resolve("auto", Some(&root)).unwrap(), Some(s4.clone()));
        let p = root.to_str().unwrap();
        assert_eq!(resolve(p, None).unwrap(), Some(s4));
        let e = resolve(s8.to_str().unwrap(), None).unwrap_err().to_string();
        assert!(e.contains("incomplete"), "{e}");
        std::fs::write(root.join("latest"), "step_00000099\n").unwrap();
        let e = resolve("auto", Some(&root)).unwrap_err().to_string();
        assert!(
            e.contains("step_00000099") && e.contains("does not exist"),
            "{e}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
