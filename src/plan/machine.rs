//! Machine profiles (`inputs/machines/*.toml`): what `ferrotron plan` needs to know about the
//! nodes a job runs on. Every value carries its source in the file's comments.
//!
//! ```toml
//! [machine]
//! name = "…"
//! devices_per_node = 8        # ranks per node (GPUs, or CPU ranks)
//! memory_gib = 80             # per device (per rank on a CPU node)
//! gemm_tflops = 600           # sustained GEMM rate per device at the model's shapes
//! peak_tflops = 989           # the peak MFU is measured against
//! [intra]                     # links within a node
//! bandwidth_gbs = 300         # per device, one direction, GB/s
//! latency_us = 3
//! [inter]                     # links across nodes
//! bandwidth_gbs = 50
//! latency_us = 6
//! ```

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// One node type.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSection {
    pub name: String,
    pub devices_per_node: usize,
    pub memory_gib: f64,
    pub gemm_tflops: f64,
    pub peak_tflops: f64,
}

/// A link class: bandwidth per rank and one-message latency.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub bandwidth_gbs: f64,
    pub latency_us: f64,
}

impl Link {
    /// Seconds to move `bytes` in `messages` messages.
    pub fn seconds(&self, bytes: f64, messages: f64) -> f64 {
        messages * self.latency_us * 1e-6 + bytes / (self.bandwidth_gbs * 1e9)
    }
}

/// A machine profile.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub machine: MachineSection,
    pub intra: Link,
    pub inter: Link,
}

impl Machine {
    /// Reads and checks `path`: every number positive and finite.
    pub fn load(path: &Path) -> Result<Machine> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the machine profile {}", path.display()))?;
        let m: Machine =
            toml::from_str(&text).with_context(|| format!("machine profile {}", path.display()))?;
        m.check()
            .with_context(|| format!("machine profile {}", path.display()))?;
        Ok(m)
    }

    fn check(&self) -> Result<()> {
        let s = &self.machine;
        let nums = [
            ("machine.memory_gib", s.memory_gib),
            ("machine.gemm_tflops", s.gemm_tflops),
            ("machine.peak_tflops", s.peak_tflops),
            ("intra.bandwidth_gbs", self.intra.bandwidth_gbs),
            ("inter.bandwidth_gbs", self.inter.bandwidth_gbs),
        ];
        for (k, v) in nums {
            if !(v.is_finite() && v > 0.0) {
                bail!("{k} = {v} must be a positive number");
            }
        }
        for (k, v) in [
            ("intra.latency_us", self.intra.latency_us),
            ("inter.latency_us", self.inter.latency_us),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("{k} = {v} must be ≥ 0");
            }
        }
        if s.devices_per_node == 0 {
            bail!("machine.devices_per_node must be ≥ 1");
        }
        Ok(())
    }

    /// Bytes of memory per rank.
    pub fn memory_bytes(&self) -> f64 {
        self.machine.memory_gib * (1u64 << 30) as f64
    }
}
