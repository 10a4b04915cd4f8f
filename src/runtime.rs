//! Process runtime: MPI initialisation, rank-prefixed logging, and the rule that a failure on
//! any rank ends the whole job — never a hang.
//!
//! * A panic on any rank logs and calls `MPI_Abort` (a panicking rank would otherwise unwind
//!   into `MPI_Finalize` while its peers wait in a collective forever).
//! * Errors found while setting up (config, grid, data, weights) go through [`Runtime::agree`]:
//!   every rank contributes its result to one all-reduce, the lowest failing rank prints the one
//!   message, and every rank exits non-zero.
//! * Errors after set-up are fatal through [`Runtime::fail`]: log, then `MPI_Abort` when
//!   the world has more than one rank — except [`Unanimous`] errors, which every rank meets at
//!   the same point: rank 0 prints, all exit 1.

use anyhow::Result;
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;
use std::io::Write;

/// This process's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256]; // HOST_NAME_MAX is 64 on Linux
                              // SAFETY: the buffer is valid for its length; gethostname NUL-terminates when it fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Exit code for every failure (bad input, runtime error).
pub const EXIT_FAILURE: i32 = 1;
/// Exit code of a run stopped by SIGUSR1 or SIGTERM after saving a checkpoint: the job script
/// requeues the job (`slurm/*.sbatch`). 75 is EX_TEMPFAIL ("try again later").
pub const EXIT_REQUEUE: i32 = 75;
/// Exit code of a rank that aborts the job after a panic.
pub const EXIT_PANIC: i32 = 101;

/// The MPI world of this process.
pub struct Runtime {
    // Field order matters: `world` must drop before `_universe` (which finalizes MPI).
    pub world: SimpleCommunicator,
    pub rank: usize,
    pub size: usize,
    /// Ranks of this job on this node (MPI shared-memory split) and this rank among them.
    pub local_size: usize,
    pub local_rank: usize,
    _universe: mpi::environment::Universe,
}

/// An error every rank already agreed on (printed once, by one rank).
#[derive(Debug)]
pub struct AgreedFailure;

impl std::fmt::Display for AgreedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "another rank failed")
    }
}
impl std::error::Error for AgreedFailure {}

/// An error every rank meets at the same point with the same message, because it follows from
/// values all ranks agreed on (a non-finite loss after the all-reduce): rank 0 prints it, and
/// every rank exits non-zero without `MPI_Abort`.
#[derive(Debug)]
pub struct Unanimous(pub String);

impl std::fmt::Display for Unanimous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Unanimous {}

impl Runtime {
    /// Initialise MPI (a run without mpirun is a 1-rank world), logging and the panic hook.
    pub fn init() -> Result<Self> {
        isolate_singleton();
        let universe =
            mpi::initialize().ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        init_logging(rank, size);
        install_panic_hook(rank, size);
        let node = world.split_shared(rank as i32);
        let (local_size, local_rank) = (node.size() as usize, node.rank() as usize);
        Ok(Self {
            world,
            rank,
            size,
            local_size,
            local_rank,
            _universe: universe,
        })
    }

    /// All ranks learn whether any rank failed. The lowest failing rank prints its error; every
    /// rank then returns [`AgreedFailure`], so all exit non-zero without `MPI_Abort`. Must be
    /// called by every rank at the same point.
    pub fn agree<T>(&self, res: Result<T>) -> Result<T> {
        let mine: i32 = if res.is_err() {
            self.rank as i32
        } else {
            i32::MAX
        };
        let mut first = i32::MAX;
        self.world
            .all_reduce_into(&mine, &mut first, SystemOperation::min());
        match res {
            Ok(v) if first == i32::MAX => Ok(v),
            Ok(_) => Err(AgreedFailure.into()),
            Err(e) => {
                if first == self.rank as i32 {
                    report(self.rank, self.size, &e);
                }
                Err(AgreedFailure.into())
            }
        }
    }

    /// Log a fatal error and end the job: every rank exits non-zero. Errors already agreed
    /// on exit without `MPI_Abort` (all ranks are here); others abort the whole job.
    pub fn fail(self, err: &anyhow::Error) -> ! {
        let agreed = err.downcast_ref::<AgreedFailure>().is_some();
        let unanimous = err.downcast_ref::<Unanimous>().is_some();
        if !agreed && (!unanimous || self.rank == 0) {
            report(self.rank, self.size, err);
        }
        let _ = std::io::stderr().flush();
        if self.size > 1 && !agreed && !unanimous {
            self.world.abort(EXIT_FAILURE);
        }
        drop(self); // MPI_Finalize
        std::process::exit(EXIT_FAILURE);
    }
}

/// A process started without a launcher (no mpirun/srun) becomes an MPI singleton, for which
/// Open MPI by default starts a helper daemon; on some machines that alone takes seconds (2.6 s
/// against 0.23 s on the CI machine). A 1-rank run needs no daemon (ferrotron never spawns
/// processes), so such a process asks for an isolated singleton — unless the user set
/// `OMPI_MCA_ess_singleton_isolated` themselves. Called before MPI starts and before any thread.
fn isolate_singleton() {
    const LAUNCHED: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"];
    const KEY: &str = "OMPI_MCA_ess_singleton_isolated";
    let launched = LAUNCHED.iter().any(|v| std::env::var_os(v).is_some());
    if !launched && std::env::var_os(KEY).is_none() {
        std::env::set_var(KEY, "1");
    }
}

/// Print `error: <message with its context chain>` once, prefixed with the rank in multi-rank
/// runs.
pub fn report(rank: usize, size: usize, err: &anyhow::Error) {
    let prefix = if size > 1 {
        format!("[rank {rank}] ")
    } else {
        String::new()
    };
    eprintln!("{prefix}error: {err:#}");
}

fn init_logging(rank: usize, size: usize) {
    let env = env_logger::Env::default().default_filter_or("info");
    let _ = env_logger::Builder::from_env(env)
        .format(move |buf, rec| {
            if size > 1 {
                writeln!(buf, "[rank {rank}] [{}] {}", rec.level(), rec.args())
            } else {
                writeln!(buf, "[{}] {}", rec.level(), rec.args())
            }
        })
        .try_init();
}

/// A panic on any rank logs and aborts every rank (never leaves peers waiting).
fn install_panic_hook(rank: usize, size: usize) {
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload_as_str().unwrap_or("(non-text panic payload)");
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("[rank {rank}] internal error (panic){at}: {msg}");
        let _ = std::io::stderr().flush();
        if size > 1 {
            SimpleCommunicator::world().abort(EXIT_PANIC);
        }
        std::process::exit(EXIT_PANIC);
    }));
}
