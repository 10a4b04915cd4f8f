//! Compute backends. `cpu` is the f32 reference (and fast); `cuda` checks for a device.

pub mod cpu;
pub mod cuda;
