//! Vectorisation aids for the CPU kernels that are not GEMMs (LayerNorm, GELU, softmax, the
//! cross-entropy, AdamW, the gradient norm).
//!
//! - [`multiversion!`] compiles a kernel twice — as is (x86-64's baseline SSE2, 4 lanes) and for
//!   AVX2 (8 lanes) — and picks the AVX2 copy at run time where the CPU has it. The binary stays
//!   portable, and the two copies give bitwise the same results: Rust never contracts `a·b + c`
//!   into an FMA and never reorders float operations, so only the vector width differs.
//! - The reductions below keep [`LANES`] independent partial sums combined in a fixed order, so
//!   a row's sum is a vector loop instead of a chain of dependent adds (which ran at one add per
//!   4 cycles), and its value does not depend on the thread count or the CPU.

/// Partial sums per reduction: two AVX2 registers of f32.
pub const LANES: usize = 16;

/// Defines `fn name(args) -> ret { body }` compiled for the baseline and for AVX2, dispatching at
/// run time (`is_x86_feature_detected!` is a cached load). The body is inlined into both copies,
/// with everything it calls that is `#[inline]` (iterators, [`super::math`]).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Σ f(x), in [`LANES`] partial sums (then added left to right).
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut it = x.chunks_exact(LANES);
    for ch in &mut it {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(it.remainder()) {
        *a += f(v);
    }
    acc.iter().sum()
}

/// Σ x, in [`LANES`] partial sums.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    lane_sum(x, |v| v)
}

/// Σ a·b, in [`LANES`] partial sums.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let (mut ia, mut ib) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (ca, cb) in (&mut ia).zip(&mut ib) {
        for ((s, &x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x * y;
        }
    }
    for ((s, &x), &y) in acc.iter_mut().zip(ia.remainder()).zip(ib.remainder()) {
        *s += x * y;
    }
    acc.iter().sum()
}

/// Σ (x − c)², in [`LANES`] partial sums.
#[inline(always)]
pub fn sum_sq_dev(x: &[f32], c: f32) -> f32 {
    lane_sum(x, |v| (v - c) * (v - c))
}

/// max x, in [`LANES`] partial maxima (NaNs are skipped; they surface in whatever uses the
/// values next).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut it = x.chunks_exact(LANES);
    for ch in &mut it {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a = if v > *a { v } else { *a };
        }
    }
    for (a, &v) in acc.iter_mut().zip(it.remainder()) {
        *a = if v > *a { v } else { *a };
    }
    acc.iter()
        .fold(f32::NEG_INFINITY, |m, &a| if a > m { a } else { m })
}

/// Σ x² in f64, in 8 partial sums.
#[inline(always)]
pub fn sum_squares_f64(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut it = x.chunks_exact(8);
    for ch in &mut it {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += (v as f64) * (v as f64);
        }
    }
    for (a, &v) in acc.iter_mut().zip(it.remainder()) {
        *a += (v as f64) * (v as f64);
    }
    acc.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    multiversion! {
        /// A kernel through the macro, to check both copies give the same bits.
        fn row_stats(x: &[f32]) -> (f32, f32, f32) {
            (sum(x), max(x), dot(x, x))
        }
    }

    #[test]
    fn reductions_are_exact_enough_and_width_independent() {
        for n in [0usize, 1, 15, 16, 17, 100, 1000] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
                .collect();
            let want: f64 = x.iter().map(|&v| v as f64).sum();
            assert!((sum(&x) as f64 - want).abs() < 1e-4, "sum n={n}");
            let sq: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
            assert!((dot(&x, &x) as f64 - sq).abs() < 1e-4, "dot n={n}");
            assert!((sum_squares_f64(&x) - sq).abs() < 1e-9, "sumsq n={n}");
            let mu = want as f32 / n.max(1) as f32;
            let dev: f64 = x.iter().map(|&v| ((v - mu) as f64).powi(2)).sum();
            assert!((sum_sq_dev(&x, mu) as f64 - dev).abs() < 1e-4, "dev n={n}");
            let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), m, "max n={n}");
            // The dispatched copy and the inlined baseline body agree bit for bit.
            let (a, b, c) = row_stats(&x);
            assert_eq!(
                (a.to_bits(), b.to_bits(), c.to_bits()),
                (sum(&x).to_bits(), max(&x).to_bits(), dot(&x, &x).to_bits())
            );
        }
    }
}
