//! Global gradient-norm clipping (as `torch.nn.utils.clip_grad_norm_`).

pub use crate::backend::cpu::kernels::optim::{scale, sum_squares};

/// Clip coefficient for a global norm: `min(1, max_norm / (norm + 1e-6))`; 1 when disabled.
pub fn clip_coef(norm: f64, max_norm: f32) -> f32 {
    if max_norm <= 0.0 {
        return 1.0;
    }
    (max_norm as f64 / (norm + 1e-6)).min(1.0) as f32
}
