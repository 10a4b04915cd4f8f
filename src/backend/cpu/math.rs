//! Branch-free elementwise math that the compiler vectorises (glibc's `expf`/`tanhf` are scalar
//! calls and dominated the non-GEMM time of a training step).
//!
//! `exp(x)`: x = n·ln2 + r with n = round(x·log2 e), |r| ≤ ln2/2, exp(r) by its degree-6 Taylor
//! polynomial (truncation error r⁷/7! ≤ 1.3e-7 relative), 2ⁿ assembled in the exponent bits.
//! Inputs are clamped to [-87, 88], so the result is always a normal finite f32.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5·2²³: adding and subtracting it rounds an f32 of magnitude < 2²² to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// e^x with ≤ ~2e-7 relative error on [-87, 88].
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// tanh(u) = 1 − 2 / (e^{2u} + 1), with the fast [`exp`].
#[inline(always)]
pub fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * u) + 1.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_and_tanh_are_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            worst = worst.max(((super::exp(x) as f64 - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "exp rel error {worst}");
        let mut worst = 0.0f64;
        let mut u = -20.0f32;
        while u < 20.0 {
            worst = worst.max((super::tanh(u) as f64 - (u as f64).tanh()).abs());
            u += 0.001;
        }
        assert!(worst < 3e-7, "tanh abs error {worst}");
    }
}
