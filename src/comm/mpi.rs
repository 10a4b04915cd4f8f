//! [`Communicator`] over MPI (rsmpi) on host memory.

use super::flight::FlightRecorder;
use super::link::{Plan, Transport};
use super::{AsyncComm, CommStats, Communicator, Pending, Request};
use anyhow::Result;
use mpi::collective::SystemOperation;
use mpi::topology::{Color, Communicator as _, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One MPI sub-communicator, its counters, the run's transport plan and (with NCCL) the
/// group's NCCL communicator.
pub struct MpiComm {
    comm: SimpleCommunicator,
    stats: CommStats,
    plan: Plan,
    nccl: Option<cudarc::nccl::safe::Comm>,
    /// The rank's flight recorder and this group's index in it ([`Self::set_flight`]).
    flight: Option<(Arc<FlightRecorder>, usize)>,
    /// Operations started on this group (the flight records' sequence numbers).
    seq: AtomicU64,
}

/// A recorded operation in flight: ends its record when dropped (or completed).
struct Op(Option<(Arc<FlightRecorder>, u64)>);

impl Op {
    fn finish(&mut self) {
        if let Some((f, id)) = self.0.take() {
            f.end(id);
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        self.finish();
    }
}

impl MpiComm {
    /// Split `world` into groups: ranks passing the same `color` form one communicator, ordered
    /// by world rank. Collective over `world`.
    pub fn split(world: &SimpleCommunicator, color: usize) -> Result<Self> {
        let comm = world
            .split_by_color(Color::with_value(color as i32))
            .ok_or_else(|| anyhow::anyhow!("MPI_Comm_split returned no communicator"))?;
        Ok(Self {
            comm,
            stats: CommStats::default(),
            plan: Plan {
                coll: Transport::Host,
                p2p: Transport::Host,
            },
            nccl: None,
            flight: None,
            seq: AtomicU64::new(0),
        })
    }

    /// Records this group's operations in `rec` under `name`, with its members' world ranks
    /// (gathered here: collective over the group).
    pub fn set_flight(&mut self, rec: Arc<FlightRecorder>, name: &str, world_rank: usize) {
        let mut members = vec![0u64; self.size()];
        self.comm
            .all_gather_into(&(world_rank as u64), &mut members[..]);
        let g = rec.register_group(name, members.iter().map(|&m| m as usize).collect());
        self.flight = Some((rec, g));
    }

    /// Starts the flight record of an operation (when recording).
    fn op(&self, what: &str, bytes: usize) -> Op {
        Op(self.flight.as_ref().map(|(f, g)| {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            (f.clone(), f.begin(*g, seq, what, bytes))
        }))
    }

    /// Creates the group's NCCL communicator on `stream` (group rank 0 makes the unique id and
    /// broadcasts it over MPI), for a plan whose collectives use NCCL. Collective over the
    /// group.
    pub fn attach_nccl(&mut self, stream: Arc<cudarc::driver::CudaStream>) -> Result<()> {
        use cudarc::nccl::safe::{Comm, Id};
        use mpi::traits::Root;
        let nccl = |e: cudarc::nccl::result::NcclError| anyhow::anyhow!("NCCL: {e:?}");
        let mut id = [0 as std::ffi::c_char; 128];
        if self.rank() == 0 {
            id = *Id::new().map_err(nccl)?.internal();
        }
        self.comm.process_at_rank(0).broadcast_into(&mut id[..]);
        let comm =
            Comm::from_rank(stream, self.rank(), self.size(), Id::uninit(id)).map_err(nccl)?;
        self.nccl = Some(comm);
        Ok(())
    }

    /// The group's NCCL communicator (after [`MpiComm::attach_nccl`]).
    pub fn nccl(&self) -> Option<&cudarc::nccl::safe::Comm> {
        self.nccl.as_ref()
    }
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }
    fn size(&self) -> usize {
        self.comm.size() as usize
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let _op = self.op("all_reduce", std::mem::size_of_val(buf));
        let t0 = Instant::now();
        let send = buf.to_vec();
        self.comm
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        self.stats
            .add(std::mem::size_of_val(buf), t0.elapsed().as_secs_f64());
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let _op = self.op("all_reduce", std::mem::size_of_val(buf));
        let t0 = Instant::now();
        let send = buf.to_vec();
        self.comm
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        self.stats
            .add(std::mem::size_of_val(buf), t0.elapsed().as_secs_f64());
        Ok(())
    }
    fn reduce_scatter_sum_f32(&self, input: &[f32], out: &mut [f32]) -> Result<()> {
        anyhow::ensure!(
            input.len() == out.len() * self.size(),
            "reduce_scatter: input must be size × output"
        );
        let _op = self.op("reduce_scatter", std::mem::size_of_val(input));
        let t0 = Instant::now();
        self.comm
            .reduce_scatter_block_into(input, out, SystemOperation::sum());
        self.stats
            .add(std::mem::size_of_val(input), t0.elapsed().as_secs_f64());
        Ok(())
    }
    fn all_gather_f32(&self, input: &[f32], out: &mut [f32]) -> Result<()> {
        anyhow::ensure!(
            out.len() == input.len() * self.size(),
            "all_gather: output must be size × input"
        );
        let _op = self.op("all_gather", std::mem::size_of_val(out));
        let t0 = Instant::now();
        self.comm.all_gather_into(input, out);
        self.stats
            .add(std::mem::size_of_val(out), t0.elapsed().as_secs_f64());
        Ok(())
    }
    fn stats(&self) -> &CommStats {
        &self.stats
    }
    fn plan(&self) -> Plan {
        self.plan
    }
    fn set_plan(&mut self, plan: Plan) -> Result<()> {
        self.plan = plan;
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl MpiComm {
    /// CUDA-aware MPI: `out ← Σ_group input`, `count` floats at device addresses `input` and
    /// `out` (distinct buffers).
    ///
    /// # Safety
    /// Both addresses must hold `count` floats of device memory whose pending writes have
    /// completed (the stream is synchronised) and which nothing else touches during the call.
    pub unsafe fn all_reduce_device(&self, input: u64, out: u64, count: usize) -> Result<()> {
        use mpi::raw::AsRaw;
        let _op = self.op("all_reduce (device)", 4 * count);
        let t0 = Instant::now();
        // SAFETY: the caller guarantees both device buffers (see above); the MPI library
        // is CUDA-aware (checked when the plan was made).
        let rc = unsafe {
            mpi::ffi::MPI_Allreduce(
                input as *const std::ffi::c_void,
                out as *mut std::ffi::c_void,
                i32::try_from(count)?,
                mpi::ffi::RSMPI_FLOAT,
                mpi::ffi::RSMPI_SUM,
                self.comm.as_raw(),
            )
        };
        check(rc, "MPI_Allreduce (device memory)")?;
        self.stats.add(4 * count, t0.elapsed().as_secs_f64());
        Ok(())
    }
}

/// A non-blocking MPI operation (a send or a collective) that owns its buffers, and the
/// argument arrays the call was given, until MPI has finished with them. Complete it with
/// `wait` (or `test`); dropping an unfinished one leaks its buffers rather than free them
/// under MPI (see `Drop`).
struct MpiRequest {
    /// The input buffer (a send's message) and, for collectives, the output buffer.
    send: Vec<f32>,
    recv: Vec<f32>,
    /// `recvcounts` of a reduce-scatter (must stay untouched until completion).
    _counts: Vec<i32>,
    /// Device buffers an operation on device pointers reads or writes (kept until completion).
    _keep: Option<Box<dyn std::any::Any>>,
    req: mpi::ffi::MPI_Request,
    done: bool,
    /// Its flight record, ended on completion.
    op: Op,
}

/// `rc` of an MPI call as a Result.
fn check(rc: i32, what: &str) -> Result<()> {
    anyhow::ensure!(rc == 0, "{what} failed with error code {rc}");
    Ok(())
}

impl MpiRequest {
    fn new(send: Vec<f32>, recv: Vec<f32>, counts: Vec<i32>) -> Self {
        Self {
            send,
            recv,
            _counts: counts,
            _keep: None,
            // SAFETY: RSMPI_REQUEST_NULL is an initialised constant of the MPI library.
            req: unsafe { mpi::ffi::RSMPI_REQUEST_NULL },
            done: false,
            op: Op(None),
        }
    }

    fn complete(&mut self) -> Result<()> {
        if !self.done {
            // SAFETY: `req` came from a non-blocking call on `send`/`recv`/`counts`, which are
            // still alive and unmoved on the heap; MPI_Wait completes and frees the request.
            let rc = unsafe { mpi::ffi::MPI_Wait(&mut self.req, mpi::ffi::RSMPI_STATUS_IGNORE) };
            self.done = true;
            check(rc, "MPI_Wait")?;
            self.op.finish();
        }
        Ok(())
    }
}

impl Request for MpiRequest {
    /// Drives MPI's progress engine once; true when the operation has completed.
    fn test(&mut self) -> Result<bool> {
        if !self.done {
            let mut flag = 0;
            // SAFETY: `req` is an active request on buffers this value owns (see `complete`).
            let rc = unsafe {
                mpi::ffi::MPI_Test(&mut self.req, &mut flag, mpi::ffi::RSMPI_STATUS_IGNORE)
            };
            check(rc, "MPI_Test")?;
            self.done = flag != 0;
            if self.done {
                self.op.finish();
            }
        }
        Ok(self.done)
    }

    /// Blocks until the operation completes; returns its result (a collective's output, or a
    /// send's buffer for reuse).
    fn wait(mut self: Box<Self>) -> Result<Vec<f32>> {
        self.complete()?;
        Ok(if self.recv.is_empty() {
            std::mem::take(&mut self.send)
        } else {
            std::mem::take(&mut self.recv)
        })
    }
}

impl Drop for MpiRequest {
    /// Every normal path completes an operation (`wait`, or `test` until true); one is dropped
    /// unfinished only on the way out of an error, towards `MPI_Abort`. Waiting there could
    /// hang the job (the peer may be stuck behind the failure and never match it), so drop
    /// tests once and otherwise leaks the buffers: MPI may still read or write them, so they
    /// must never be freed.
    fn drop(&mut self) {
        if matches!(self.test(), Ok(true)) {
            return;
        }
        std::mem::forget(std::mem::replace(&mut self.op, Op(None))); // never completed
        log::warn!("abandoning an unfinished MPI operation (its buffers are leaked)");
        std::mem::forget(std::mem::take(&mut self.send));
        std::mem::forget(std::mem::take(&mut self.recv));
        std::mem::forget(std::mem::take(&mut self._counts));
        if let Some(k) = self._keep.take() {
            std::mem::forget(k);
        }
    }
}

impl MpiComm {
    /// Finishes starting `p` with the call's return code: a failed call leaves no request to
    /// wait for; a started one counts its payload (the host input, or `device_bytes` for an
    /// operation on device memory) and the time the call took.
    fn started(&self, mut p: MpiRequest, rc: i32, what: &str, t0: Instant) -> Result<Pending> {
        self.started_bytes(std::mem::size_of_val(&p.send[..]), &mut p, rc, what, t0)?;
        Ok(Box::new(p))
    }

    fn started_bytes(
        &self,
        bytes: usize,
        p: &mut MpiRequest,
        rc: i32,
        what: &str,
        t0: Instant,
    ) -> Result<()> {
        p.done = rc != 0;
        check(rc, what)?;
        p.op = self.op(what, bytes);
        self.stats.add(bytes, t0.elapsed().as_secs_f64());
        Ok(())
    }

    /// Starts a non-blocking call on device memory: `call` gets the request to fill and returns
    /// MPI's code; the pending operation owns `keep` and counts `4·count` bytes.
    fn start_device(
        &self,
        count: usize,
        keep: Box<dyn std::any::Any>,
        what: &str,
        call: impl FnOnce(&mut mpi::ffi::MPI_Request) -> i32,
    ) -> Result<Pending> {
        let t0 = Instant::now();
        let mut p = MpiRequest::new(Vec::new(), Vec::new(), Vec::new());
        p._keep = Some(keep);
        let rc = call(&mut p.req);
        self.started_bytes(4 * count, &mut p, rc, what, t0)?;
        Ok(Box::new(p))
    }

    /// CUDA-aware MPI: starts sending `count` floats at device address `ptr` to group rank
    /// `dest`; `keep` owns the device buffer.
    ///
    /// # Safety
    /// `ptr` must address `count` floats of device memory owned by `keep`, with no pending
    /// writes.
    pub unsafe fn isend_device(
        &self,
        ptr: u64,
        count: usize,
        dest: usize,
        tag: i32,
        keep: Box<dyn std::any::Any>,
    ) -> Result<Pending> {
        use mpi::raw::AsRaw;
        let (n, dest) = (i32::try_from(count)?, i32::try_from(dest)?);
        self.start_device(count, keep, "MPI_Isend (device memory)", |req| {
            // SAFETY: see the contract above.
            unsafe {
                mpi::ffi::MPI_Isend(
                    ptr as *const std::ffi::c_void,
                    n,
                    mpi::ffi::RSMPI_FLOAT,
                    dest,
                    tag,
                    self.comm.as_raw(),
                    req,
                )
            }
        })
    }

    /// CUDA-aware MPI: receives exactly `count` floats from group rank `src` with `tag` into
    /// device memory at `ptr`. Returns the seconds spent waiting for the message (as
    /// [`MpiComm::recv_f32`]).
    ///
    /// # Safety
    /// `ptr` must address `count` floats of device memory that nothing else uses during the
    /// call.
    pub unsafe fn recv_device(&self, ptr: u64, count: usize, src: usize, tag: i32) -> Result<f64> {
        use mpi::raw::AsRawMut;
        let (mut msg, idle) = self.probe_exact(src, tag, count)?;
        let t1 = Instant::now();
        // SAFETY: `msg` is the matched message of `n` floats; `ptr` holds `count` = n floats.
        let rc = unsafe {
            mpi::ffi::MPI_Mrecv(
                ptr as *mut std::ffi::c_void,
                i32::try_from(count)?,
                mpi::ffi::RSMPI_FLOAT,
                msg.as_raw_mut(),
                mpi::ffi::RSMPI_STATUS_IGNORE,
            )
        };
        std::mem::forget(msg);
        check(rc, "MPI_Mrecv (device memory)")?;
        self.stats.add(4 * count, t1.elapsed().as_secs_f64());
        Ok(idle)
    }

    /// Waits for the next message from group rank `src` with `tag` (`MPI_Mprobe`); returns it
    /// with the seconds spent waiting. A message of other than `count` floats is received
    /// anyway (a matched message must be, and its sender then completes) and reported.
    fn probe_exact(
        &self,
        src: usize,
        tag: i32,
        count: usize,
    ) -> Result<(mpi::point_to_point::Message, f64)> {
        use mpi::datatype::Equivalence;
        use mpi::point_to_point::Source as _;
        let _op = self.op(&format!("recv from group rank {src}"), 4 * count);
        let t0 = Instant::now();
        let p = self.comm.process_at_rank(i32::try_from(src)?);
        let (msg, status) = p.matched_probe_with_tag(tag);
        let idle = t0.elapsed().as_secs_f64();
        let n = status.count(f32::equivalent_datatype()) as usize;
        if n != count {
            msg.matched_receive_into(&mut vec![0.0f32; n][..]);
            anyhow::bail!("pipeline message from rank {src} has {n} floats, expected {count}");
        }
        Ok((msg, idle))
    }

    /// `buf ← Σ over the group` (f64), not counted in the stats (used for metrics only).
    pub fn all_reduce_sum_f64_uncounted(&self, buf: &mut [f64]) {
        let _op = self.op("all_reduce", std::mem::size_of_val(buf));
        let send = buf.to_vec();
        self.comm
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
    }
}

impl AsyncComm for MpiComm {
    /// Starts sending `buf` to group rank `dest` with `tag`; counts its bytes.
    fn isend_f32(&self, dest: usize, tag: i32, buf: Vec<f32>) -> Result<Pending> {
        use mpi::raw::AsRaw;
        let t0 = Instant::now();
        let count = i32::try_from(buf.len())?;
        let dest = i32::try_from(dest)?;
        let mut p = MpiRequest::new(buf, Vec::new(), Vec::new());
        // SAFETY: the buffer is valid for `count` floats and owned by `p`, which keeps it alive
        // (its heap storage does not move) and untouched until the request completes.
        let rc = unsafe {
            mpi::ffi::MPI_Isend(
                p.send.as_ptr() as *const std::ffi::c_void,
                count,
                mpi::ffi::RSMPI_FLOAT,
                dest,
                tag,
                self.comm.as_raw(),
                &mut p.req,
            )
        };
        self.started(p, rc, "MPI_Isend", t0)
    }

    /// Starts `Σ_group buf` (`MPI_Iallreduce`); `wait` returns the sum. Counts the payload.
    fn iall_reduce_f32(&self, buf: Vec<f32>) -> Result<Pending> {
        use mpi::raw::AsRaw;
        let t0 = Instant::now();
        let count = i32::try_from(buf.len())?;
        let recv = vec![0.0f32; buf.len()];
        let mut p = MpiRequest::new(buf, recv, Vec::new());
        // SAFETY: both buffers hold `count` floats and are owned by `p` until completion.
        let rc = unsafe {
            mpi::ffi::MPI_Iallreduce(
                p.send.as_ptr() as *const std::ffi::c_void,
                p.recv.as_mut_ptr() as *mut std::ffi::c_void,
                count,
                mpi::ffi::RSMPI_FLOAT,
                mpi::ffi::RSMPI_SUM,
                self.comm.as_raw(),
                &mut p.req,
            )
        };
        self.started(p, rc, "MPI_Iallreduce", t0)
    }

    /// Starts a reduce-scatter (`MPI_Ireduce_scatter`): `buf` is the concatenation of blocks of
    /// `counts[r]` floats, and rank r receives the group sum of block r (`wait` returns it).
    /// Counts the input payload.
    fn ireduce_scatter_f32(&self, buf: Vec<f32>, counts: &[usize]) -> Result<Pending> {
        use mpi::raw::AsRaw;
        anyhow::ensure!(
            counts.len() == self.size() && counts.iter().sum::<usize>() == buf.len(),
            "reduce-scatter: {} counts summing to {} for a group of {} and {} floats",
            counts.len(),
            counts.iter().sum::<usize>(),
            self.size(),
            buf.len()
        );
        let t0 = Instant::now();
        let counts = counts
            .iter()
            .map(|&c| i32::try_from(c))
            .collect::<Result<Vec<i32>, _>>()?;
        // MPI needs a valid receive buffer even for a zero count.
        let recv = vec![0.0f32; counts[self.rank()].max(1) as usize];
        let mut p = MpiRequest::new(buf, recv, counts);
        // SAFETY: `send` holds Σ counts floats, `recv` at least counts[rank]; both buffers and
        // the counts array are owned by `p` until completion.
        let rc = unsafe {
            mpi::ffi::MPI_Ireduce_scatter(
                p.send.as_ptr() as *const std::ffi::c_void,
                p.recv.as_mut_ptr() as *mut std::ffi::c_void,
                p._counts.as_ptr(),
                mpi::ffi::RSMPI_FLOAT,
                mpi::ffi::RSMPI_SUM,
                self.comm.as_raw(),
                &mut p.req,
            )
        };
        self.started(p, rc, "MPI_Ireduce_scatter", t0)
    }

    /// Receives exactly `buf.len()` floats from group rank `src` with `tag`. Returns the seconds
    /// spent waiting for the message to arrive (idle time: `MPI_Probe`); the transfer itself is
    /// counted in the stats.
    fn recv_f32(&self, src: usize, tag: i32, buf: &mut [f32]) -> Result<f64> {
        let (msg, idle) = self.probe_exact(src, tag, buf.len())?;
        let t1 = Instant::now();
        msg.matched_receive_into(buf);
        self.stats
            .add(std::mem::size_of_val(buf), t1.elapsed().as_secs_f64());
        Ok(idle)
    }
}
