//! The backend communication methods (`Backend::all_reduce_region`, `start_all_reduce` /
//! `finish_all_reduce`, `send_buf` / `recv_buf`) on the CPU backend under a real `mpirun`, for
//! the host and the staged transports, on 1 and 3 ranks, and the raw-address MPI calls of the
//! CUDA-aware transport on host addresses (see `common/comm_check.rs`).

#[path = "common/comm_check.rs"]
mod comm_check;
mod common;
use comm_check::CHILD;
use common::*;

#[test]
fn backend_comm_on_cpu() {
    if let Ok(t) = std::env::var(CHILD) {
        let universe = mpi::initialize().expect("MPI init");
        if t == "raw" {
            comm_check::check_raw(&universe.world());
            return;
        }
        let be = ferrotron::backend::cpu::Cpu::new(1);
        comm_check::check(&be, &universe.world(), comm_check::transport(&t));
        return;
    }
    let dir = scratch("comm");
    for t in ["host", "staged", "raw"] {
        for np in [1, 3] {
            let out = comm_check::spawn("backend_comm_on_cpu", np, t, &dir);
            out.assert_ok();
            let passed = out.all().matches("comm check passed").count();
            assert_eq!(passed, np, "{t} on {np} ranks:\n{}", out.all());
        }
    }
}
