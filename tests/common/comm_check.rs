//! The backend communication methods under a real `mpirun`, per transport: each rank of a
//! world of n fills a buffer with `(rank + 1)·(i + 1)`, then
//! - `all_reduce_region` on one region must give `(i + 1)·n(n+1)/2` there and leave the rest;
//! - two data-parallel buckets started with `start_all_reduce` and finished with
//!   `finish_all_reduce` (in the reverse order) must do the same on their regions;
//! - `send_buf`/`recv_buf` around the ring must deliver the left neighbour's buffer.
//!
//! A test binary re-runs itself under mpirun with `FERROTRON_COMM_CHILD=<transport>` (the child
//! initialises MPI; the parent never does). Included by `tests/comm.rs` (CPU) and
//! `tests/cuda_parallel.rs` (GPU) with `#[path]`.

use crate::common::*;
use ferrotron::backend::prelude::*;
use ferrotron::backend::{Lane, Region};
use ferrotron::comm::link::{Plan, Transport};
use ferrotron::comm::mpi::MpiComm;
use ferrotron::comm::{AsyncComm, Communicator};
use std::path::Path;

/// The environment variable that makes a test binary the MPI child.
pub const CHILD: &str = "FERROTRON_COMM_CHILD";

/// Parent: run `test` of this binary on `np` ranks with transport `t`; the child's output.
pub fn spawn(test: &str, np: usize, t: &str, dir: &Path) -> Out {
    let exe = std::env::current_exe().unwrap();
    let np = np.to_string();
    let args = [
        "-np",
        &np,
        exe.to_str().unwrap(),
        "--exact",
        test,
        "--nocapture",
    ];
    run_timeout(120, "mpirun", &args, &[(CHILD, t)], dir)
}

/// Parses a transport name as the child gets it.
pub fn transport(name: &str) -> Transport {
    match name {
        "host" => Transport::Host,
        "staged" => Transport::Staged,
        "cuda-aware" => Transport::CudaAwareMpi,
        "nccl" => Transport::Nccl,
        other => panic!("unknown transport {other}"),
    }
}

/// Child: the checks above on backend `be` with transport `t` for collectives and messages
/// (NCCL collectives send their messages staged). Panics on a wrong value.
pub fn check<B: Backend>(be: &B, world: &mpi::topology::SimpleCommunicator, t: Transport) {
    let mut comm = MpiComm::split(world, 0).unwrap();
    let p2p = if t == Transport::Nccl {
        Transport::Staged
    } else {
        t
    };
    be.connect(&mut comm, Plan { coll: t, p2p }, Lane::Compute)
        .unwrap();
    // The data-parallel group's communicator, as the trainer makes it (NCCL on the
    // communication stream).
    let mut dpc = MpiComm::split(world, 0).unwrap();
    be.connect(&mut dpc, Plan { coll: t, p2p }, Lane::Comm)
        .unwrap();
    let (r, n) = (comm.rank(), comm.size());
    let len = 1000;
    let fill = |k: usize| -> Vec<f32> { (0..len).map(|i| ((k + 1) * (i + 1)) as f32).collect() };
    let tri = (n * (n + 1) / 2) as f32;
    let want = |regions: &[Region]| -> Vec<f32> {
        let mut w = fill(r);
        for g in regions {
            for i in g.range() {
                w[i] = (i + 1) as f32 * tri;
            }
        }
        w
    };
    let a = Region { off: 3, len: 250 };
    let b = Region { off: 600, len: 400 };

    let mut buf = be.upload(&fill(r)).unwrap();
    be.all_reduce_region(&comm, &mut buf, a).unwrap();
    assert_eq!(
        be.download(&buf).unwrap(),
        want(&[a]),
        "{t:?}: all_reduce_region"
    );

    let mut buf = be.upload(&fill(r)).unwrap();
    let sb = be.start_all_reduce(&dpc, &mut buf, b).unwrap();
    let sa = be.start_all_reduce(&dpc, &mut buf, a).unwrap();
    be.finish_all_reduce(&mut buf, a, sa).unwrap();
    be.finish_all_reduce(&mut buf, b, sb).unwrap();
    assert_eq!(be.download(&buf).unwrap(), want(&[a, b]), "{t:?}: buckets");

    let send = be.upload(&fill(r)).unwrap();
    let pending = be.send_buf(&comm, &send, (r + 1) % n, 5).unwrap();
    let mut got = be.zeros(1).unwrap();
    be.recv_buf(&comm, &mut got, len, (r + n - 1) % n, 5)
        .unwrap();
    pending.wait().unwrap();
    let left = (r + n - 1) % n;
    assert_eq!(
        be.download(&got).unwrap(),
        fill(left),
        "{t:?}: ring message"
    );
    println!("comm check passed: rank {r} of {n}, {t:?}");
}

/// Child: the raw-address MPI calls the CUDA-aware transport makes (`all_reduce_device`,
/// `isend_device`, `recv_device`), given host addresses — for MPI an
/// address is an address, so this checks counts, buffers, probing and completion on any MPI.
#[allow(dead_code)] // used by tests/comm.rs only
pub fn check_raw(world: &mpi::topology::SimpleCommunicator) {
    let comm = MpiComm::split(world, 0).unwrap();
    let (r, n) = (comm.rank(), comm.size());
    let len = 777;
    let fill = |k: usize| -> Vec<f32> { (0..len).map(|i| ((k + 1) * (i + 1)) as f32).collect() };
    let tri = (n * (n + 1) / 2) as f32;
    let sum: Vec<f32> = (0..len).map(|i| (i + 1) as f32 * tri).collect();
    let addr = |v: &[f32]| v.as_ptr() as u64;

    let input = fill(r);
    let mut out = vec![0.0f32; len];
    // SAFETY: both host buffers hold `len` floats and outlive the blocking call.
    unsafe { comm.all_reduce_device(addr(&input), out.as_mut_ptr() as u64, len) }.unwrap();
    assert_eq!(out, sum, "all_reduce_device");

    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    // SAFETY: `input` outlives the send, which is waited for below.
    let p = unsafe { comm.isend_device(addr(&input), len, right, 9, Box::new(())) }.unwrap();
    let mut got = vec![0.0f32; len];
    // SAFETY: `got` holds `len` floats.
    unsafe { comm.recv_device(got.as_mut_ptr() as u64, len, left, 9) }.unwrap();
    p.wait().unwrap();
    assert_eq!(got, fill(left), "isend_device / recv_device");
    // A message of the wrong length is an error (the message is consumed, the sender
    // completes), not a corrupted buffer or a panic; so on the host path.
    for host in [false, true] {
        let p = unsafe { comm.isend_device(addr(&input), len, right, 10, Box::new(())) }.unwrap();
        let mut short = vec![0.0f32; len - 1];
        let e = if host {
            comm.recv_f32(left, 10, &mut short)
        } else {
            // SAFETY: `short` holds `len - 1` floats.
            unsafe { comm.recv_device(short.as_mut_ptr() as u64, len - 1, left, 10) }
        };
        let e = format!("{:#}", e.unwrap_err());
        assert!(e.contains("has 777 floats, expected 776"), "{e}");
        assert!(short.iter().all(|&x| x == 0.0));
        p.wait().unwrap();
    }
    println!("comm check passed: rank {r} of {n}, raw addresses");
}
