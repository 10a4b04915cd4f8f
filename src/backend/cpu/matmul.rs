//! Dense f32 matrix products on the CPU: a [`Gemm`] provider, either the built-in `gemm` crate
//! (blocked, SIMD, rayon) or a system CBLAS library loaded at run time ([`super::blas`]).
//!
//! All matrices are described by a [`Mat`] view: a slice plus (rows, cols, row stride, column
//! stride), so transposes and strided sub-matrices (e.g. one attention head inside a `[T, 3C]`
//! QKV row) cost nothing. Results are bitwise deterministic for a fixed thread count: `gemm`
//! splits work over output blocks, never over the reduction dimension.

use super::blas::Blas;
use gemm::Parallelism;

/// A read-only strided matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// A row-major matrix whose rows are `rs` apart (a column slice of a wider matrix).
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }
    /// The transpose, free.
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
    /// Rows `r0..r1` of the view.
    fn sub_rows(self, r0: usize, r1: usize) -> Self {
        Self {
            data: &self.data[(r0 * self.rs).min(self.data.len())..],
            rows: r1 - r0,
            ..self
        }
    }
    /// Columns `c0..c1` of the view.
    fn sub_cols(self, c0: usize, c1: usize) -> Self {
        Self {
            data: &self.data[(c0 * self.cs).min(self.data.len())..],
            cols: c1 - c0,
            ..self
        }
    }
    fn check(&self, what: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "{what}: view exceeds its buffer");
        }
    }
}

pub use crate::config::GemmChoice;

/// The GEMM provider of one CPU backend: the built-in kernels or a loaded BLAS library, and
/// the rayon workers a product may use. Cheap to clone (the library is shared).
#[derive(Clone, Debug)]
pub struct Gemm {
    blas: Option<std::sync::Arc<Blas>>,
    threads: usize,
    /// Why `auto` fell back to the built-in kernels, for the caller to log once.
    pub fallback: Option<String>,
}

impl Gemm {
    /// The built-in `gemm` crate on `threads` rayon workers.
    pub fn builtin(threads: usize) -> Self {
        Self {
            blas: None,
            threads: threads.max(1),
            fallback: None,
        }
    }

    /// Resolves `choice` (None: `$FERROTRON_CPU_GEMM`, else auto). The library is
    /// `$FERROTRON_BLAS` when set — a path, or `builtin`/`none` for no library — else the first
    /// of [`super::blas::search_list`] that loads. A library named in `FERROTRON_BLAS` that does
    /// not load is an error even under auto; auto without any library is the built-in one, and
    /// says so in [`Gemm::fallback`].
    pub fn resolve(choice: Option<GemmChoice>, threads: usize) -> anyhow::Result<Self> {
        use anyhow::Context;
        let choice = match choice {
            Some(c) => c,
            None => match std::env::var("FERROTRON_CPU_GEMM") {
                Ok(v) if !v.trim().is_empty() => v.parse().context("FERROTRON_CPU_GEMM")?,
                _ => GemmChoice::Auto,
            },
        };
        if choice == GemmChoice::Builtin {
            return Ok(Self::builtin(threads));
        }
        let named = std::env::var("FERROTRON_BLAS")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let blas = match named.as_deref().map(str::trim) {
            Some("builtin" | "none") => None,
            Some(path) => Some(Blas::load(std::path::Path::new(path)).context("FERROTRON_BLAS")?),
            None => Blas::find(),
        };
        match (choice, blas) {
            (_, Some(b)) => Ok(Self::with_blas(b, threads)),
            (GemmChoice::Blas, None) => anyhow::bail!(
                "cpu_gemm = \"blas\" but no BLAS library loads: set FERROTRON_BLAS=/path/to/libX.so \
                 or install one of {} (Debian: libopenblas0-pthread or libblis4-pthread)",
                super::blas::search_list().join(", ")
            ),
            (_, None) => Ok(Self {
                fallback: Some(format!(
                    "cpu_gemm auto: no BLAS library loads (tried {}); using the built-in gemm crate",
                    super::blas::search_list().join(", ")
                )),
                ..Self::builtin(threads)
            }),
        }
    }

    /// A loaded library on `threads` rayon workers.
    pub fn with_blas(blas: Blas, threads: usize) -> Self {
        Self {
            blas: Some(std::sync::Arc::new(blas)),
            threads: threads.max(1),
            fallback: None,
        }
    }

    /// The same provider for products run inside a rayon worker (one thread each).
    pub fn serial(&self) -> Self {
        Self {
            blas: self.blas.clone(),
            threads: 1,
            fallback: None,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The provider's name as `bench-gemm` reports it ("builtin", or the library's own).
    pub fn provider_name(&self) -> String {
        match &self.blas {
            None => "builtin".into(),
            Some(b) => b.name.clone(),
        }
    }

    /// True when a system BLAS library does the products.
    pub fn is_blas(&self) -> bool {
        self.blas.is_some()
    }

    /// One line for the log: which library, from where, and its threading.
    pub fn describe(&self) -> String {
        match &self.blas {
            None => format!("built-in gemm crate, {} rayon threads", self.threads),
            Some(b) => format!(
                "{} from {}, {} rayon threads, BLAS at {}",
                b.name,
                b.path.display(),
                self.threads,
                b.threading
            ),
        }
    }

    /// `dst[m, n] (+)= a[m, k] · b[k, n]`, dst row-major with row stride `dst_rs`.
    /// `accumulate = true` adds into dst, else overwrites it. With a BLAS library and several
    /// threads, the output is cut into `threads` blocks along its longer side and each rayon
    /// worker runs one single-threaded BLAS product: no reduction is split, so the result is
    /// bitwise the same for a fixed thread count and library.
    pub fn matmul(&self, dst: &mut [f32], dst_rs: usize, a: Mat, b: Mat, accumulate: bool) {
        let Some(blas) = &self.blas else {
            return matmul(dst, dst_rs, a, b, accumulate, self.threads);
        };
        let (m, k, n) = (a.rows, a.cols, b.cols);
        assert_eq!(b.rows, k, "matmul: inner dimensions differ");
        a.check("matmul lhs");
        b.check("matmul rhs");
        if m == 0 || n == 0 || k == 0 {
            return matmul(dst, dst_rs, a, b, accumulate, 1);
        }
        assert!((m - 1) * dst_rs + n <= dst.len(), "matmul: dst too small");
        let parts = if m * n * k < 64 * 64 * 64 {
            1
        } else {
            self.threads
        };
        let blocks = split_output(m, n, parts);
        let base = dst.as_mut_ptr() as usize;
        let run = |&(r0, r1, c0, c1): &(usize, usize, usize, usize)| {
            let (sa, sb) = (a.sub_rows(r0, r1), b.sub_cols(c0, c1));
            let out = (base as *mut f32).wrapping_add(r0 * dst_rs + c0);
            // SAFETY: the blocks are disjoint rectangles of dst, inside it (checked above),
            // and dst is uniquely borrowed for the duration of this call.
            unsafe { blas.sgemm(out, dst_rs, sa, sb, accumulate) }
        };
        let all_done = if blocks.len() == 1 {
            run(&blocks[0])
        } else {
            use rayon::prelude::*;
            blocks
                .par_iter()
                .map(run)
                .collect::<Vec<_>>()
                .iter()
                .all(|&d| d)
        };
        if !all_done {
            // A view without a unit stride: no BLAS layout, the built-in kernel does it.
            matmul(dst, dst_rs, a, b, accumulate, self.threads);
        }
    }
}

/// `parts` disjoint (row0, row1, col0, col1) blocks covering an `m × n` output, cut along the
/// longer side at multiples of 16.
fn split_output(m: usize, n: usize, parts: usize) -> Vec<(usize, usize, usize, usize)> {
    let long = m.max(n);
    let parts = parts.clamp(1, long.div_ceil(16).max(1));
    let step = long.div_ceil(parts).div_ceil(16) * 16;
    (0..long)
        .step_by(step.max(1))
        .map(|s| {
            let e = (s + step).min(long);
            if m >= n {
                (s, e, 0, n)
            } else {
                (0, m, s, e)
            }
        })
        .collect()
}

/// Threading for one product: serial for small problems, `threads` rayon workers otherwise.
fn parallelism(m: usize, n: usize, k: usize, threads: usize) -> Parallelism {
    if threads <= 1 || m * n * k < 64 * 64 * 64 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// `dst[m, n] (+)= a[m, k] · b[k, n]`, dst row-major with row stride `dst_rs`.
/// `accumulate = true` adds into dst, else overwrites it.
pub fn matmul(dst: &mut [f32], dst_rs: usize, a: Mat, b: Mat, accumulate: bool, threads: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions differ");
    a.check("matmul lhs");
    b.check("matmul rhs");
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * dst_rs + n <= dst.len(), "matmul: dst too small");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * dst_rs..i * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: every index touched is inside the slices (checked above); dst is uniquely
    // borrowed and does not alias a or b (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(m, n, k, threads),
        );
    }
}

/// Rows per chunk of the deterministic column-sum reduction.
const SUM_CHUNK: usize = 64;

/// `acc[j] += Σ_i x[i, j]` over a row-major `[n, c]` matrix (bias gradients).
/// Chunked partial sums combined in a fixed order: the result does not depend on the
/// number of threads.
pub fn add_column_sums(acc: &mut [f32], x: &[f32], n: usize, c: usize) {
    use rayon::prelude::*;
    assert_eq!(acc.len(), c);
    assert!(x.len() >= n * c);
    let partials: Vec<Vec<f32>> = x[..n * c]
        .par_chunks(SUM_CHUNK * c)
        .map(|rows| {
            let mut p = vec![0.0f32; c];
            for row in rows.chunks_exact(c) {
                for (pj, &v) in p.iter_mut().zip(row) {
                    *pj += v;
                }
            }
            p
        })
        .collect();
    for p in partials {
        for (a, v) in acc.iter_mut().zip(p) {
            *a += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: Mat, b: Mat) -> Vec<f32> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut s = 0.0f64;
                for p in 0..a.cols {
                    s += a.data[i * a.rs + p * a.cs] as f64 * b.data[p * b.rs + j * b.cs] as f64;
                }
                out[i * b.cols + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn matches_naive_with_transposes() {
        let (m, k, n) = (37, 53, 29);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
            .collect();
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        for (am, name) in [(Mat::new(&a, m, k), "a"), (Mat::new(&at, k, m).t(), "a^T")] {
            let want = naive(am, Mat::new(&b, k, n));
            let mut got = vec![1.0; m * n];
            matmul(&mut got, n, am, Mat::new(&b, k, n), false, 2);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "{name}: {g} vs {w}");
            }
            matmul(&mut got, n, am, Mat::new(&b, k, n), true, 2);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - 2.0 * w).abs() < 2e-4, "{name} accumulate");
            }
        }
    }

    /// Every library of the search list that loads on this machine. The setup command installs
    /// OpenBLAS and BLIS, so finding none is a failure here, not a skip.
    fn libraries() -> Vec<Blas> {
        let found: Vec<Blas> = crate::backend::cpu::blas::search_list()
            .iter()
            .filter_map(|n| Blas::load(std::path::Path::new(n)).ok())
            .collect();
        assert!(
            !found.is_empty(),
            "no BLAS library loads (tried {:?}): run scripts/install-deps.sh",
            crate::backend::cpu::blas::search_list()
        );
        found
    }

    fn wave(n: usize, salt: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.5) - 1.0)
            .collect()
    }

    /// Every product shape the model uses — plain, either operand transposed, both, a head's
    /// strided column block of a `[T, 3C]` matrix, a destination with a wider row stride,
    /// overwrite and accumulate, small and split-over-threads sizes, a tall and a wide output —
    /// gives the built-in kernel's result through each BLAS library within f32 rounding.
    #[test]
    fn blas_matches_builtin_on_every_variant() {
        for lib in libraries() {
            let name = lib.name.clone();
            let blas = Gemm::with_blas(lib, 2);
            for &(m, k, n) in &[
                (37, 53, 29),
                (130, 70, 90),
                (5, 64, 300),
                (300, 40, 3),
                (1, 77, 1),
            ] {
                // Each operand stored as [rows, cols] with row stride cols (+7 when strided,
                // starting 2 floats in, like a head's block of a QKV row).
                let store = |r: usize, c: usize, strided: bool, salt: usize| {
                    let (ld, off) = if strided { (c + 7, 2) } else { (c, 0) };
                    (wave(off + r * ld, salt), ld, off)
                };
                for ta in [false, true] {
                    for tb in [false, true] {
                        for strided in [false, true] {
                            let (ar, ac) = if ta { (k, m) } else { (m, k) };
                            let (br, bc) = if tb { (n, k) } else { (k, n) };
                            let (a, lda, oa) = store(ar, ac, strided, 1);
                            let (b, ldb, ob) = store(br, bc, strided, 2);
                            let am = Mat::strided(&a[oa..], ar, ac, lda);
                            let bm = Mat::strided(&b[ob..], br, bc, ldb);
                            let am = if ta { am.t() } else { am };
                            let bm = if tb { bm.t() } else { bm };
                            for dst_rs in [n, n + 5] {
                                for acc in [false, true] {
                                    let init = wave(m * dst_rs, 3);
                                    let (mut want, mut got) = (init.clone(), init.clone());
                                    matmul(&mut want, dst_rs, am, bm, acc, 1);
                                    blas.matmul(&mut got, dst_rs, am, bm, acc);
                                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                                        let tol = 1e-5 * (k as f32).sqrt() * (1.0 + w.abs());
                                        assert!(
                                            (g - w).abs() <= tol,
                                            "{name}: m{m} k{k} n{n} ta{ta} tb{tb} strided{strided} \
                                             rs{dst_rs} acc{acc} [{i}]: {g} vs {w}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// With a fixed thread count, a BLAS product is bitwise repeatable, and the serial
    /// provider (one block) and the split one agree within rounding.
    #[test]
    fn blas_is_repeatable() {
        for lib in libraries() {
            let g = Gemm::with_blas(lib, 3);
            let (m, k, n) = (257, 300, 190);
            let (a, b) = (wave(m * k, 4), wave(k * n, 5));
            let run = |g: &Gemm| {
                let mut d = vec![0.0; m * n];
                g.matmul(&mut d, n, Mat::new(&a, m, k), Mat::new(&b, k, n), false);
                d
            };
            let first = run(&g);
            assert!(run(&g)
                .iter()
                .zip(&first)
                .all(|(x, y)| x.to_bits() == y.to_bits()));
            let serial = run(&g.serial());
            assert!(serial.iter().zip(&first).all(|(x, y)| (x - y).abs() < 1e-4));
        }
    }

    #[test]
    fn output_blocks_cover_it_once() {
        for (m, n, parts) in [(1000, 10, 3), (5, 4000, 2), (17, 3, 8), (64, 64, 1)] {
            let mut hit = vec![0u8; m * n];
            for (r0, r1, c0, c1) in split_output(m, n, parts) {
                for i in r0..r1 {
                    for j in c0..c1 {
                        hit[i * n + j] += 1;
                    }
                }
            }
            assert!(hit.iter().all(|&h| h == 1), "{m}x{n} in {parts}");
        }
    }

    #[test]
    fn choice_parses() {
        assert_eq!("blas".parse::<GemmChoice>().unwrap(), GemmChoice::Blas);
        assert!("mkl".parse::<GemmChoice>().is_err());
    }

    #[test]
    fn column_sums() {
        let (n, c) = (200, 3);
        let x: Vec<f32> = (0..n * c).map(|i| (i % c) as f32 + 1.0).collect();
        let mut acc = vec![1.0; c];
        add_column_sums(&mut acc, &x, n, c);
        assert_eq!(acc, vec![201.0, 401.0, 601.0]);
    }
}
