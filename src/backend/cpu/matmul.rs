//! Dense f32 matrix products on the CPU through the `gemm` crate (blocked, SIMD, rayon).
//!
//! All matrices are described by a [`Mat`] view: a slice plus (rows, cols, row stride, column
//! stride), so transposes and strided sub-matrices (e.g. one attention head inside a `[T, 3C]`
//! QKV row) cost nothing. Results are bitwise deterministic for a fixed thread count: `gemm`
//! splits work over output blocks, never over the reduction dimension.

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
    fn check(&self, what: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "{what}: view exceeds its buffer");
        }
    }
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

    #[test]
    fn column_sums() {
        let (n, c) = (200, 3);
        let x: Vec<f32> = (0..n * c).map(|i| (i % c) as f32 + 1.0).collect();
        let mut acc = vec![1.0; c];
        add_column_sums(&mut acc, &x, n, c);
        assert_eq!(acc, vec![201.0, 401.0, 601.0]);
    }
}
