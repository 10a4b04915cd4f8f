//! The communicators of one rank, one per group of the grid (ARCHITECTURE.md "The grid"), built once
//! from the world and passed explicitly; and the gather of the sharded weights onto rank 0.

use super::shard::StageLayout;
use super::{Coords, Grid};
use crate::backend::prelude::*;
use crate::backend::Lane;
use crate::comm::link::{self, Facts, Plan};
use crate::comm::mpi::MpiComm;
use crate::comm::AsyncComm;
use crate::model::gpt2::{Gpt2Config, ParamLayout};
use anyhow::Result;
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;

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
    /// Sets every group's transport to `plan`. With NCCL the tp, dp and embedding groups (1-rank
    /// groups included) get an NCCL communicator: dp's on the backend's communication stream
    /// (its reductions overlap the backward), the others on the compute stream. The pp group
    /// carries only pipeline messages, which never use NCCL, so it gets none. Collective over
    /// each group in turn.
    ///
    /// An error here must end the job (`MPI_Abort`), not be agreed on: the rank's partners may
    /// be waiting inside `ncclCommInitRank` or in another group's set-up, where no agreement
    /// can reach them.
    pub fn connect<B: Backend>(&mut self, plan: Plan, be: &B) -> Result<()> {
        be.connect(&mut self.tp, plan, Lane::Compute)?;
        be.connect(&mut self.emb, plan, Lane::Compute)?;
        be.connect(&mut self.dp, plan, Lane::Comm)?;
        let messages_only = Plan {
            coll: plan.p2p,
            ..plan
        };
        be.connect(&mut self.pp, messages_only, Lane::Compute)
    }

    /// Records every group's operations in the rank's flight recorder (collective over each
    /// group in turn; see `comm::flight`).
    pub fn record(
        &mut self,
        rec: &std::sync::Arc<crate::comm::flight::FlightRecorder>,
        rank: usize,
    ) {
        for (c, name) in [
            (&mut self.tp, "tp"),
            (&mut self.dp, "dp"),
            (&mut self.pp, "pp"),
            (&mut self.emb, "embedding"),
            (&mut self.world, "world"),
            (&mut self.metrics, "world (run control)"),
        ] {
            c.set_flight(rec.clone(), name, rank);
        }
    }

    /// The groups of grid `g`, on host memory until [`Groups::connect`]. Collective over `world`.
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

/// What every rank found about its device and libraries, combined over `world` (the worst case
/// of any rank, so all ranks resolve the same transport). Collective over `world`.
pub fn gather_facts<B: Backend>(world: &SimpleCommunicator, be: &B) -> Result<Facts> {
    // A rank that cannot read its device's UUID must not leave the others waiting in the
    // collectives below: the failure is agreed first (the lowest failing rank reports it).
    let uuid = be.device_uuid();
    let mut failed = [i32::from(uuid.is_err())];
    let mut any = [0i32];
    world.all_reduce_into(&failed[..], &mut any[..], SystemOperation::max());
    if any[0] != 0 {
        failed[0] = if uuid.is_err() {
            world.rank()
        } else {
            i32::MAX
        };
        let mut first = [0i32];
        world.all_reduce_into(&failed[..], &mut first[..], SystemOperation::min());
        return match uuid {
            Err(e) if first[0] == world.rank() => {
                crate::runtime::report(
                    world.rank() as usize,
                    world.size() as usize,
                    &e.context("reading the device UUID"),
                );
                Err(crate::runtime::AgreedFailure.into())
            }
            _ => Err(crate::runtime::AgreedFailure.into()),
        };
    }
    let uuid = uuid?;
    let cuda = uuid.is_some();
    let mine = [
        i32::from(link::mpi_cuda_aware()),
        i32::from(cuda && link::nccl_loadable()),
    ];
    let mut all = [0i32; 2];
    world.all_reduce_into(&mine[..], &mut all[..], SystemOperation::min());
    let mut ids = vec![0u8; 16 * world.size() as usize];
    world.all_gather_into(&uuid.unwrap_or_default()[..], &mut ids[..]);
    let ids: Vec<[u8; 16]> = ids
        .chunks_exact(16)
        .map(|c| c.try_into().unwrap_or_default())
        .collect();
    Ok(Facts {
        cuda,
        shared_gpu: if cuda { link::first_shared(&ids) } else { None },
        mpi_cuda_aware: all[0] == 1,
        nccl: all[1] == 1,
        world: world.size() as usize,
    })
}

/// Gathers the weights of data-parallel replica 0 onto rank 0 as one global buffer (layout
/// `global`); returns None on the other ranks. `local` is this rank's weights.
pub fn gather_weights(
    world: &dyn AsyncComm,
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
