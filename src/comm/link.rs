//! How the groups move backend buffers: the transport chosen once per run from
//! `comm.backend` and what the job's ranks found (README.md "GPUs": `comm.backend`).
//!
//! | transport        | collectives (tp, dp, emb)            | pipeline messages (pp)      |
//! |------------------|--------------------------------------|-----------------------------|
//! | `Host`           | MPI on the buffers (CPU backend)     | MPI on host copies          |
//! | `Staged`         | device → host copy, MPI, host → device | the same                  |
//! | `CudaAwareMpi`   | MPI on device pointers               | MPI on device pointers      |
//! | `Nccl`           | NCCL on the compute stream           | CUDA-aware MPI, else staged |
//!
//! Pipeline messages do not use NCCL yet: NCCL's send/recv have no tags and a stage's send
//! blocks its stream until the peer posts the receive, so 1F1B's crossing activation and
//! gradient messages would need paired send/recv groups (Megatron's `batch_isend_irecv`).
//! With ZeRO-1 the optimizer and its reduce-scatter run on the host whatever the transport.
//! The decision is a pure function ([`resolve`]) of the request and [`Facts`] agreed by all
//! ranks, so every rank picks the same transport.

use crate::config::CommBackend;
use anyhow::{bail, Result};

/// How one kind of traffic moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// MPI directly on host-memory buffers (the CPU backend).
    Host,
    /// Device buffers copied to host memory around each MPI call.
    Staged,
    /// MPI given device pointers (an MPI library built with CUDA support).
    CudaAwareMpi,
    /// NCCL, one communicator per group, on the backend's stream.
    Nccl,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Self::Host => "mpi (host memory)",
            Self::Staged => "mpi-staged",
            Self::CudaAwareMpi => "mpi-cuda-aware",
            Self::Nccl => "nccl",
        }
    }
}

/// The transports of one run: collectives, and pipeline point-to-point messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub coll: Transport,
    pub p2p: Transport,
}

/// What the job found, agreed over all ranks (the worst case of any rank).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The compute backend keeps buffers on a GPU.
    pub cuda: bool,
    /// Two ranks of the job use the same GPU: `(rank a, rank b)`.
    pub shared_gpu: Option<(usize, usize)>,
    /// Every rank's MPI library reports CUDA support (`MPIX_Query_cuda_support`).
    pub mpi_cuda_aware: bool,
    /// Every rank could load NCCL (`libnccl.so`, the name cudarc looks for).
    pub nccl: bool,
    /// Ranks in the job.
    pub world: usize,
}

/// The transports for `req` given `f`, and one line saying why (logged at start). Errors name
/// what prevents an explicit request.
pub fn resolve(req: CommBackend, f: &Facts) -> Result<(Plan, String)> {
    use Transport::*;
    let both = |t| Plan { coll: t, p2p: t };
    if !f.cuda {
        return match req {
            CommBackend::Auto => Ok((both(Host), "CPU backend: MPI on host memory".into())),
            CommBackend::MpiStaged => Ok((
                both(Staged),
                "requested; on the CPU backend every message is copied once more".into(),
            )),
            other => bail!(
                "comm.backend = \"{}\" needs train.backend = \"cuda\"",
                other.name()
            ),
        };
    }
    let p2p = if f.mpi_cuda_aware {
        CudaAwareMpi
    } else {
        Staged
    };
    let nccl_blocker = match (f.nccl, f.shared_gpu) {
        (false, _) => Some("NCCL (libnccl.so) could not be loaded on every rank".to_string()),
        (true, Some((a, b))) => Some(format!(
            "ranks {a} and {b} share one GPU and NCCL needs a GPU per rank"
        )),
        (true, None) => None,
    };
    let nccl_plan = Plan { coll: Nccl, p2p };
    if req == CommBackend::Auto && f.world <= 1 {
        // Every group has one rank: nothing moves, so no communicator is worth creating.
        return Ok((
            both(Staged),
            "auto: one rank, nothing to communicate".into(),
        ));
    }
    match req {
        CommBackend::MpiStaged => Ok((both(Staged), "requested".into())),
        CommBackend::MpiCudaAware if f.mpi_cuda_aware => {
            Ok((both(CudaAwareMpi), "requested".into()))
        }
        CommBackend::MpiCudaAware => bail!(
            "comm.backend = \"mpi-cuda-aware\": the MPI library does not report CUDA support \
             (MPIX_Query_cuda_support() = 0 on some rank); use \"mpi-staged\" or \"nccl\""
        ),
        CommBackend::Nccl => match nccl_blocker {
            None => Ok((nccl_plan, "requested".into())),
            Some(why) => bail!("comm.backend = \"nccl\": {why}; use \"mpi-staged\""),
        },
        CommBackend::Auto => Ok(match (nccl_blocker, f.mpi_cuda_aware) {
            (None, _) => (
                nccl_plan,
                "auto: every rank has its own GPU and NCCL loads".into(),
            ),
            (Some(why), true) => (
                both(CudaAwareMpi),
                format!("auto: {why}; MPI is CUDA-aware"),
            ),
            (Some(why), false) => (both(Staged), format!("auto: {why}; MPI is not CUDA-aware")),
        }),
    }
}

/// Whether this process's MPI library reports CUDA support at run time. Open MPI exports
/// `MPIX_Query_cuda_support`; libraries without the symbol are taken as not CUDA-aware.
pub fn mpi_cuda_aware() -> bool {
    // SAFETY: dlsym with RTLD_DEFAULT only looks a symbol up in the loaded objects; the name is
    // a NUL-terminated literal.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"MPIX_Query_cuda_support".as_ptr()) };
    if sym.is_null() {
        return false;
    }
    // SAFETY: Open MPI declares `int MPIX_Query_cuda_support(void)`, callable after MPI_Init.
    let f: extern "C" fn() -> libc::c_int = unsafe { std::mem::transmute(sym) };
    f() == 1
}

/// Whether NCCL's library can be loaded (cudarc would panic on first use otherwise). cudarc
/// looks for `libnccl.so` (not the runtime name `libnccl.so.2`); when only the latter exists, a
/// warning says how to fix it.
pub fn nccl_loadable() -> bool {
    // SAFETY: only probes whether the shared library can be loaded.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        return true;
    }
    // SAFETY: dlopen of a literal library name; the handle is closed at once.
    let h = unsafe { libc::dlopen(c"libnccl.so.2".as_ptr(), libc::RTLD_LAZY) };
    if !h.is_null() {
        // SAFETY: `h` is the handle dlopen just returned.
        unsafe { libc::dlclose(h) };
        log::warn!(
            "libnccl.so.2 is present but libnccl.so is not: NCCL stays off; link libnccl.so -> libnccl.so.2 in a directory on LD_LIBRARY_PATH to use it"
        );
    }
    false
}

/// The first pair of ranks whose device ids are equal (None: every rank has its own device or
/// none). `ids[r]` is rank r's GPU UUID.
pub fn first_shared(ids: &[[u8; 16]]) -> Option<(usize, usize)> {
    for (b, id) in ids.iter().enumerate() {
        if let Some(a) = ids[..b].iter().position(|x| x == id) {
            return Some((a, b));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use Transport::*;

    fn gpu(nccl: bool, shared: bool, aware: bool) -> Facts {
        Facts {
            cuda: true,
            shared_gpu: shared.then_some((0, 1)),
            mpi_cuda_aware: aware,
            nccl,
            world: 2,
        }
    }

    #[test]
    fn auto_prefers_nccl_then_cuda_aware_then_staged() {
        let pick = |f: Facts| resolve(CommBackend::Auto, &f).unwrap().0;
        assert_eq!(
            pick(Facts::default()),
            Plan {
                coll: Host,
                p2p: Host
            }
        );
        assert_eq!(
            pick(gpu(true, false, false)),
            Plan {
                coll: Nccl,
                p2p: Staged
            }
        );
        assert_eq!(
            pick(gpu(true, false, true)),
            Plan {
                coll: Nccl,
                p2p: CudaAwareMpi
            }
        );
        let aware = Plan {
            coll: CudaAwareMpi,
            p2p: CudaAwareMpi,
        };
        assert_eq!(pick(gpu(true, true, true)), aware);
        assert_eq!(pick(gpu(false, false, true)), aware);
        let staged = Plan {
            coll: Staged,
            p2p: Staged,
        };
        assert_eq!(pick(gpu(true, true, false)), staged);
        assert_eq!(pick(gpu(false, false, false)), staged);
        let (_, why) = resolve(CommBackend::Auto, &gpu(true, true, false)).unwrap();
        assert!(why.contains("ranks 0 and 1 share one GPU"), "{why}");
        // One rank: no communicator at all, unless asked for.
        let one = Facts {
            world: 1,
            ..gpu(true, false, true)
        };
        assert_eq!(pick(one.clone()), staged);
        assert_eq!(resolve(CommBackend::Nccl, &one).unwrap().0.coll, Nccl);
    }

    #[test]
    fn explicit_requests_fail_with_the_reason() {
        let err = |r, f: Facts| format!("{:#}", resolve(r, &f).unwrap_err());
        let e = err(CommBackend::Nccl, gpu(true, true, true));
        assert!(
            e.contains("share one GPU") && e.contains("mpi-staged"),
            "{e}"
        );
        let e = err(CommBackend::Nccl, gpu(false, false, true));
        assert!(e.contains("libnccl"), "{e}");
        let e = err(CommBackend::MpiCudaAware, gpu(true, false, false));
        assert!(e.contains("MPIX_Query_cuda_support"), "{e}");
        let e = err(CommBackend::Nccl, Facts::default());
        assert!(e.contains("train.backend"), "{e}");
        let ok = |r, f: Facts| resolve(r, &f).unwrap().0;
        assert_eq!(
            ok(CommBackend::MpiStaged, gpu(true, false, true)).coll,
            Staged
        );
        assert_eq!(ok(CommBackend::MpiStaged, Facts::default()).coll, Staged);
        assert_eq!(
            ok(CommBackend::MpiCudaAware, gpu(false, true, true)).p2p,
            CudaAwareMpi
        );
    }

    #[test]
    fn shared_devices_are_found() {
        let a = [1u8; 16];
        let b = [2u8; 16];
        assert_eq!(first_shared(&[a, b]), None);
        assert_eq!(first_shared(&[a, b, b]), Some((1, 2)));
        assert_eq!(first_shared(&[]), None);
    }
}
