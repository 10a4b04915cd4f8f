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
//! memory_gbs = 3000           # sustained memory bandwidth per device (STREAM triad), GB/s
//! [kernels]                   # optional: measured rates of the non-GEMM kernels
//! attention_tflops = 200      # causal attention forward + backward (default: gemm_tflops)
//! gelu_gbs = 2500             # GELU forward + backward (default: memory_gbs)
//! xent_gbs = 2500             # the LM head's softmax cross-entropy (default: memory_gbs)
//! [intra]                     # links within a node
//! bandwidth_gbs = 300         # per device, one direction, GB/s
//! latency_us = 3
//! allreduce_gbs = 350         # optional: all-reduce bus bandwidth (default: bandwidth_gbs)
//! overlap = 1                 # optional: fraction of a reduction that can hide behind
//!                             # compute (default 1; about 0 where the CPU moves the bytes)
//! [inter]                     # links across nodes
//! bandwidth_gbs = 50
//! latency_us = 6
//! ```
//!
//! A rate over "bytes" counts the bytes the planner's model of the kernel moves
//! (`plan::time`), so a measured rate folds in whatever else the kernel costs (on a CPU, the
//! `tanh` of GELU and the `exp` of the softmax). A bus bandwidth is the all-reduce's
//! 2(n−1)/n·bytes over its time, as nccl-tests reports it.

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
    pub memory_gbs: f64,
}

/// Measured rates of the kernels that are not matrix products (see the module comment).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernels {
    pub attention_tflops: Option<f64>,
    pub gelu_gbs: Option<f64>,
    pub xent_gbs: Option<f64>,
}

/// A link class: bandwidth per rank and one-message latency.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub bandwidth_gbs: f64,
    pub latency_us: f64,
    pub allreduce_gbs: Option<f64>,
    pub overlap: Option<f64>,
}

impl Link {
    /// Seconds to move `bytes` in `messages` messages.
    pub fn seconds(&self, bytes: f64, messages: f64) -> f64 {
        messages * self.latency_us * 1e-6 + bytes / (self.bandwidth_gbs * 1e9)
    }

    /// Seconds of a ring all-reduce of `bytes` over `n` ranks: 2(n−1) latencies and
    /// 2(n−1)/n·bytes at the bus bandwidth.
    pub fn all_reduce_seconds(&self, bytes: f64, n: usize) -> f64 {
        if n <= 1 {
            return 0.0;
        }
        let f = (n - 1) as f64 / n as f64;
        let bus = self.allreduce_gbs.unwrap_or(self.bandwidth_gbs);
        2.0 * (n - 1) as f64 * self.latency_us * 1e-6 + 2.0 * f * bytes / (bus * 1e9)
    }
}

/// A machine profile.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub machine: MachineSection,
    #[serde(default)]
    pub kernels: Kernels,
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
            ("machine.memory_gbs", s.memory_gbs),
            ("intra.bandwidth_gbs", self.intra.bandwidth_gbs),
            ("inter.bandwidth_gbs", self.inter.bandwidth_gbs),
        ];
        for (k, v) in nums {
            if !(v.is_finite() && v > 0.0) {
                bail!("{k} = {v} must be a positive number");
            }
        }
        let optional = [
            ("kernels.attention_tflops", self.kernels.attention_tflops),
            ("kernels.gelu_gbs", self.kernels.gelu_gbs),
            ("kernels.xent_gbs", self.kernels.xent_gbs),
            ("intra.allreduce_gbs", self.intra.allreduce_gbs),
            ("inter.allreduce_gbs", self.inter.allreduce_gbs),
        ];
        for (k, v) in optional {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
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
        for (k, v) in [
            ("intra.overlap", self.intra.overlap),
            ("inter.overlap", self.inter.overlap),
        ] {
            if let Some(v) = v.filter(|v| !(0.0..=1.0).contains(v)) {
                bail!("{k} = {v} must be between 0 and 1");
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
