//! A system CBLAS library (MKL, OpenBLAS, BLIS, AOCL, Arm PL, FlexiBLAS, …) loaded at run time,
//! the way cudarc loads CUDA: nothing is linked at build time, so the binary runs on machines
//! without any BLAS, and a site's tuned library is used where one is installed.
//!
//! Only `cblas_sgemm` is needed. The library is asked to run single-threaded (its own thread
//! setter, where it has one): the CPU backend owns the cores through rayon and hands each
//! worker a disjoint block of the output (see [`super::matmul::Gemm`]), so the BLAS library's
//! threads never compete with rayon's, and the result does not depend on the library's
//! threading.

use super::matmul::Mat;
use anyhow::{bail, Context, Result};
use std::ffi::{c_char, c_int, CStr};
use std::path::{Path, PathBuf};

/// `cblas_sgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type SgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);
type SetThreadsFn = unsafe extern "C" fn(c_int);
type SetThreadsRefFn = unsafe extern "C" fn(*const c_int);
type GetConfigFn = unsafe extern "C" fn() -> *const c_char;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// Libraries `auto` looks for, by family. The generic `libblas.so.3` is left out on purpose:
/// on Debian it may be the unoptimised reference BLAS.
const MKL: &[&str] = &["libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so"];
const OPENBLAS: &[&str] = &["libopenblas.so.0", "libopenblas.so"];
const BLIS: &[&str] = &[
    "libblis-mt.so.4",
    "libblis.so.4",
    "libblis-mt.so",
    "libblis.so",
];
const OTHERS: &[&str] = &["libflexiblas.so.3", "libarmpl_lp64.so"];

/// The search order of `auto`: on Intel CPUs MKL first; elsewhere OpenBLAS, then BLIS (AMD's
/// AOCL is a BLIS), then MKL — MKL's kernels for non-Intel CPUs are slower (measured on an AMD
/// EPYC: 149 GFLOP/s on the LM-head product against OpenBLAS's 189, `ferrotron bench-gemm`).
pub fn default_search() -> Vec<&'static str> {
    let intel = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.contains("GenuineIntel"))
        .unwrap_or(false);
    let families: [&[&str]; 4] = if intel {
        [MKL, OPENBLAS, BLIS, OTHERS]
    } else {
        [OPENBLAS, BLIS, MKL, OTHERS]
    };
    families.concat()
}

/// A loaded CBLAS library. `sgemm` stays valid while `_lib` is alive (they live together).
pub struct Blas {
    sgemm: SgemmFn,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// What the library says it is (OpenBLAS's configuration string, MKL, BLIS, …).
    pub name: String,
    /// How its own threading was set: "1 thread (openblas_set_num_threads)", or that it has
    /// no setter (then it is called from inside rayon workers anyway, one block each).
    pub threading: String,
    _lib: libloading::Library,
}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blas({}, {})", self.name, self.path.display())
    }
}

impl Blas {
    /// Loads `path` (a file path, or a bare soname resolved by the dynamic loader) and checks
    /// that it exports `cblas_sgemm` and computes a small product correctly.
    pub fn load(path: &Path) -> Result<Blas> {
        // SAFETY: loading a shared library runs its initialisers; BLAS libraries are ordinary
        // C libraries whose initialisers only set up their own state.
        let lib = unsafe { libloading::Library::new(path) }
            .with_context(|| format!("cannot load the BLAS library {}", path.display()))?;
        // SAFETY: the symbol is declared with the CBLAS signature by every CBLAS library.
        let sgemm: SgemmFn = unsafe { lib.get::<SgemmFn>(b"cblas_sgemm\0") }
            .map(|s| *s)
            .with_context(|| {
                format!(
                    "{} is not a CBLAS library: it has no cblas_sgemm",
                    path.display()
                )
            })?;
        let name = describe(&lib, path);
        let threading = single_thread(&lib);
        let blas = Blas {
            sgemm,
            path: path.to_path_buf(),
            name,
            threading,
            _lib: lib,
        };
        blas.self_test()
            .with_context(|| format!("the BLAS library {} is broken", path.display()))?;
        Ok(blas)
    }

    /// The first library of the search list that loads, or None. The list is
    /// `$FERROTRON_BLAS_SEARCH` (names or paths separated by `:`) when set, else
    /// [`default_search`].
    pub fn find() -> Option<Blas> {
        search_list()
            .iter()
            .find_map(|name| Blas::load(Path::new(name)).ok())
    }

    /// `dst[m, n] = a[m, k] · b[k, n] (+ dst if accumulate)`, dst row-major with row stride
    /// `dst_rs`. Each operand needs one unit stride (a row-major matrix or the transpose of
    /// one); returns false (and does nothing) otherwise, so the caller can fall back.
    ///
    /// # Safety
    /// `dst` must point to a buffer holding element `(m-1)·dst_rs + n - 1` that no one else
    /// reads or writes during the call; `a` and `b` are checked views.
    pub unsafe fn sgemm(
        &self,
        dst: *mut f32,
        dst_rs: usize,
        a: Mat,
        b: Mat,
        accumulate: bool,
    ) -> bool {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let (Some((ta, lda)), Some((tb, ldb))) = (layout(&a), layout(&b)) else {
            return false;
        };
        let fits = |v: usize| v <= c_int::MAX as usize;
        if ![m, n, k, lda, ldb, dst_rs].into_iter().all(fits) {
            return false;
        }
        let beta = if accumulate { 1.0 } else { 0.0 };
        (self.sgemm)(
            ROW_MAJOR,
            ta,
            tb,
            m as c_int,
            n as c_int,
            k as c_int,
            1.0,
            a.data.as_ptr(),
            lda as c_int,
            b.data.as_ptr(),
            ldb as c_int,
            beta,
            dst,
            dst_rs.max(1) as c_int,
        );
        true
    }

    /// A 3×4·4×2 product (plain and transposed, overwrite and accumulate) against the exact
    /// answer: catches a library that loads but computes nonsense (wrong ABI, ILP64).
    fn self_test(&self) -> Result<()> {
        let a: Vec<f32> = (0..12).map(|i| i as f32 - 5.0).collect(); // [3, 4]
        let b: Vec<f32> = (0..8).map(|i| (i % 3) as f32 + 0.5).collect(); // [4, 2]
        let bt: Vec<f32> = (0..8).map(|i| b[(i % 4) * 2 + i / 4]).collect(); // [2, 4]
        let mut want = [0f32; 6];
        for i in 0..3 {
            for j in 0..2 {
                want[i * 2 + j] = (0..4).map(|p| a[i * 4 + p] * b[p * 2 + j]).sum();
            }
        }
        for (bm, what) in [(Mat::new(&b, 4, 2), "b"), (Mat::new(&bt, 2, 4).t(), "bᵀ")] {
            let mut got = [7f32; 6];
            // SAFETY: got holds 3×2 floats with row stride 2.
            let ok = unsafe { self.sgemm(got.as_mut_ptr(), 2, Mat::new(&a, 3, 4), bm, false) };
            if !ok || got != want {
                bail!("cblas_sgemm(a, {what}) gave {got:?}, expected {want:?}");
            }
            // SAFETY: as above.
            unsafe { self.sgemm(got.as_mut_ptr(), 2, Mat::new(&a, 3, 4), bm, true) };
            if got.iter().zip(&want).any(|(g, w)| *g != 2.0 * w) {
                bail!("cblas_sgemm(a, {what}) does not accumulate (beta = 1)");
            }
        }
        Ok(())
    }
}

/// The names `auto` tries, in order: `$FERROTRON_BLAS_SEARCH` split at `:`, else
/// [`default_search`].
pub fn search_list() -> Vec<String> {
    match std::env::var("FERROTRON_BLAS_SEARCH") {
        Ok(v) => v
            .split(':')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        Err(_) => default_search().into_iter().map(String::from).collect(),
    }
}

/// CBLAS (transpose flag, leading dimension) of a view in row-major order, if it has one.
fn layout(m: &Mat) -> Option<(c_int, usize)> {
    if m.cs == 1 || m.cols == 1 {
        Some((NO_TRANS, m.rs.max(m.cols).max(1)))
    } else if m.rs == 1 || m.rows == 1 {
        Some((TRANS, m.cs.max(m.rows).max(1)))
    } else {
        None
    }
}

/// The library's own description: OpenBLAS's configuration string, else its family by the
/// symbols it exports, with the file it came from.
fn describe(lib: &libloading::Library, path: &Path) -> String {
    // SAFETY: openblas_get_config returns a static NUL-terminated string.
    if let Ok(f) = unsafe { lib.get::<GetConfigFn>(b"openblas_get_config\0") } {
        let p = unsafe { f() };
        if !p.is_null() {
            // SAFETY: non-null, NUL-terminated, static.
            let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
            return format!("OpenBLAS ({})", s.trim());
        }
    }
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
    let file = file.unwrap_or_default();
    // SAFETY: MKL_Get_Version_String(char *buf, int len) writes at most len bytes.
    if let Ok(f) =
        unsafe { lib.get::<unsafe extern "C" fn(*mut c_char, c_int)>(b"MKL_Get_Version_String\0") }
    {
        let mut buf = [0 as c_char; 256];
        unsafe { f(buf.as_mut_ptr(), buf.len() as c_int - 1) };
        // SAFETY: NUL-terminated within the zeroed buffer (one byte kept free).
        let v = unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        return format!("Intel MKL ({}, {file})", v.trim());
    }
    // SAFETY: bli_info_get_version_str returns a static NUL-terminated string.
    if let Ok(f) = unsafe { lib.get::<GetConfigFn>(b"bli_info_get_version_str\0") } {
        let p = unsafe { f() };
        if !p.is_null() {
            let v = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
            return format!("BLIS {} ({file})", v.trim());
        }
    }
    let has = |sym: &[u8]| unsafe { lib.get::<*const ()>(sym) }.is_ok();
    let family = if has(b"MKL_Set_Num_Threads\0") {
        "Intel MKL"
    } else if has(b"bli_info_get_version_str\0") {
        "BLIS"
    } else if has(b"flexiblas_set_num_threads\0") {
        "FlexiBLAS"
    } else if has(b"armpl_version\0") {
        "Arm PL"
    } else {
        "CBLAS"
    };
    format!("{family} ({file})")
}

/// Asks the library for one thread through whichever setter it exports; says which.
fn single_thread(lib: &libloading::Library) -> String {
    for sym in [
        "openblas_set_num_threads",
        "bli_thread_set_num_threads",
        "flexiblas_set_num_threads",
        "MKL_Set_Num_Threads",
    ] {
        let cname = format!("{sym}\0");
        // SAFETY: each of these takes one C int.
        if let Ok(f) = unsafe { lib.get::<SetThreadsFn>(cname.as_bytes()) } {
            unsafe { f(1) };
            return format!("1 thread per call ({sym}), rayon splits the output");
        }
    }
    // MKL's Fortran-style setter takes a pointer.
    if let Ok(f) = unsafe { lib.get::<SetThreadsRefFn>(b"mkl_set_num_threads_\0") } {
        let one: c_int = 1;
        unsafe { f(&one) };
        return "1 thread per call (mkl_set_num_threads_), rayon splits the output".into();
    }
    "no thread setter found (set OMP_NUM_THREADS=1 for it); rayon splits the output".into()
}
