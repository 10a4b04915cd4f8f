//! Learning-rate schedule: linear warmup, then cosine decay to a floor (llm.c's schedule).
//!
//! For 0-based step s: `s < W`: `lr·(s+1)/W`; else with `r = (s−W)/max(1, S−W)`:
//! `min_lr + ½(1 + cos(π·r))·(lr − min_lr)`.

#[derive(Debug, Clone, Copy)]
pub struct LrSchedule {
    pub lr: f32,
    pub min_lr: f32,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LrSchedule {
    /// The learning rate at 0-based step `s`.
    pub fn at(&self, s: usize) -> f32 {
        if s < self.warmup_steps {
            return self.lr * (s + 1) as f32 / self.warmup_steps as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let r = ((s - self.warmup_steps) as f64 / span as f64).min(1.0);
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * r).cos());
        (self.min_lr as f64 + coeff * (self.lr - self.min_lr) as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = LrSchedule {
            lr: 1.0,
            min_lr: 0.1,
            warmup_steps: 2,
            total_steps: 5,
        };
        assert_eq!(s.at(0), 0.5);
        assert_eq!(s.at(1), 1.0);
        assert_eq!(s.at(2), 1.0);
        assert!(
            (s.at(3) - (0.1 + 0.5 * (1.0 + (std::f64::consts::PI / 3.0).cos()) as f32 * 0.9)).abs()
                < 1e-6
        );
        assert!(s.at(4) < s.at(3) && s.at(4) > 0.1);
    }
}
