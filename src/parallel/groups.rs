//! The communicators of one rank, one per group of the grid (DESIGN "The grid"), built once
//! from the world and passed explicitly; and the gather of the sharded weights onto rank 0.

use super::shard::StageLayout;
use super::{Coords, Grid};
use crate::comm::mpi::MpiComm;
use crate::model::gpt2::{Gpt2Config, ParamLayout};
use anyhow::Result;
use mpi::topology::SimpleCommunicator;

/// This rank's communicators. `emb` joins the first and last stage of one (tp, dp) when
/// pp > 1 (a single-rank group otherwise); `world` carries the per-step scalars (loss, squared
/// gradient norm); `metrics` only the (uncounted) reduction of the metrics themselves.
pub struct Groups {
    pub tp: MpiComm,
    pub dp: MpiComm,
    pub pp: MpiComm,
    pub emb: MpiComm,
    pub world: MpiComm,
    pub metrics: MpiComm,
}

impl Groups {
    /// Collective over `world`: every rank must call it.
    pub fn new(world: &SimpleCommunicator, g: Grid, rank: usize) -> Result<Self> {
        let c = g.coords(rank);
        let in_emb = g.pp > 1 && (c.pp == 0 || c.pp + 1 == g.pp);
        let emb_color = if in_emb {
            c.tp + g.tp * c.dp
        } else {
            g.world() + rank
        };
        Ok(Self {
            tp: MpiComm::split(world, c.dp + g.dp * c.pp)?,
            dp: MpiComm::split(world, c.tp + g.tp * c.pp)?,
            pp: MpiComm::split(world, c.tp + g.tp * c.dp)?,
            emb: MpiComm::split(world, emb_color)?,
            world: MpiComm::split(world, 0)?,
            metrics: MpiComm::split(world, 0)?,
        })
    }
}

/// Gathers the weights of data-parallel replica 0 onto rank 0 as one global buffer (layout
/// `global`); returns None on the other ranks. `local` is this rank's weights.
pub fn gather_weights(
    world: &MpiComm,
    g: Grid,
    rank: usize,
    cfg: &Gpt2Config,
    global: &ParamLayout,
    local: Vec<f32>,
) -> Result<Option<Vec<f32>>> {
    let me = g.coords(rank);
    if rank != 0 {
        if me.dp == 0 {
            world.isend_f32(0, 7, local)?.wait()?;
        }
        return Ok(None);
    }
    let mut out = vec![0.0f32; global.total];
    for s in 0..g.pp {
        for r in 0..g.tp {
            let ly = StageLayout::new(cfg, global, g.tp, r, g.pp, s)?;
            let src = g.rank(Coords {
                dp: 0,
                tp: r,
                pp: s,
            });
            if src == 0 {
                ly.insert(global, &local, &mut out);
            } else {
                let mut buf = vec![0.0f32; ly.total];
                world.recv_f32(src, 7, &mut buf)?;
                ly.insert(global, &buf, &mut out);
            }
        }
    }
    Ok(Some(out))
}
