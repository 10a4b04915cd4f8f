//! Multi-rank behaviour under a real `mpirun`: a failure on any rank ends the whole job with a
//! non-zero exit code — never a hang (each run is wrapped in a timeout; exit 124 = hang).

mod common;
use common::*;

fn mpi_available() -> bool {
    std::process::Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok()
}

#[test]
fn wrong_world_size_fails_every_rank_with_one_message() {
    assert!(
        mpi_available(),
        "mpirun not found: run scripts/install-deps.sh"
    );
    let dir = scratch("mpi-grid");
    let cfg = tiny_config(&dir, "");
    let o = mpirun(
        2,
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            "parallel.dp=1",
        ],
        &[],
        &dir,
    );
    o.assert_clean_failure("world size 2 does not match");
    assert_eq!(
        o.all().matches("world size 2 does not match").count(),
        1,
        "one message:\n{}",
        o.all()
    );
}

#[test]
fn panic_on_one_rank_aborts_the_job() {
    assert!(
        mpi_available(),
        "mpirun not found: run scripts/install-deps.sh"
    );
    let dir = scratch("mpi-panic");
    let cfg = tiny_config(&dir, "");
    let o = mpirun(
        2,
        &["train", "--config", cfg.to_str().unwrap()],
        &[("FERROTRON_TEST_FAIL", "panic:1")],
        &dir,
    );
    assert_ne!(
        o.code,
        124,
        "job hung after a panic on rank 1:\n{}",
        o.all()
    );
    assert_ne!(o.code, 0, "job must fail:\n{}", o.all());
    assert!(
        o.all().contains("deliberate test panic on rank 1"),
        "{}",
        o.all()
    );
}

#[test]
fn error_on_one_rank_aborts_the_job() {
    assert!(
        mpi_available(),
        "mpirun not found: run scripts/install-deps.sh"
    );
    let dir = scratch("mpi-error");
    let cfg = tiny_config(&dir, "");
    let o = mpirun(
        3,
        &["train", "--config", cfg.to_str().unwrap()],
        &[("FERROTRON_TEST_FAIL", "error:2")],
        &dir,
    );
    assert_ne!(
        o.code,
        124,
        "job hung after an error on rank 2:\n{}",
        o.all()
    );
    assert_ne!(o.code, 0);
    assert!(
        o.all()
            .contains("[rank 2] error: deliberate test failure on rank 2"),
        "{}",
        o.all()
    );
}
