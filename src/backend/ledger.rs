//! Memory accounting: what a backend has allocated, by category, and its peak.
//!
//! The backend charges every buffer it hands out (`zeros`, `upload`, `upload_vec`, received
//! messages) to the category the caller named last with [`Ledger::set_category`], and credits
//! it back when the buffer is dropped. The peak of the total is kept with the per-category split
//! at that moment. `ferrotron plan` predicts the same figures from its own arithmetic
//! (`plan::memory`); tests compare the two.

use serde::Serialize;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Mutex;

/// What a buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemCategory {
    Params,
    Grads,
    /// AdamW's m and v (sharded under ZeRO-1).
    Optimizer,
    /// Saved for backward: one set per micro-batch in flight on the stage.
    Activations,
    /// The LM head's logits chunk and its cross-entropy scratch.
    Logits,
    /// Buffers of pipeline messages and collectives.
    Comm,
    /// Other scratch reused by every micro-batch.
    Workspace,
}

impl MemCategory {
    pub const ALL: [MemCategory; 7] = [
        MemCategory::Params,
        MemCategory::Grads,
        MemCategory::Optimizer,
        MemCategory::Activations,
        MemCategory::Logits,
        MemCategory::Comm,
        MemCategory::Workspace,
    ];
    pub fn name(self) -> &'static str {
        match self {
            MemCategory::Params => "params",
            MemCategory::Grads => "grads",
            MemCategory::Optimizer => "optimizer",
            MemCategory::Activations => "activations",
            MemCategory::Logits => "logits",
            MemCategory::Comm => "comm",
            MemCategory::Workspace => "workspace",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
    fn from_index(i: u8) -> Self {
        Self::ALL[i as usize % Self::ALL.len()]
    }
}

/// Bytes by category, and their total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemBytes(pub [i64; 7]);

impl MemBytes {
    pub fn get(&self, c: MemCategory) -> i64 {
        self.0[c.index()]
    }
    pub fn add(&mut self, c: MemCategory, bytes: i64) {
        self.0[c.index()] += bytes;
    }
    pub fn total(&self) -> i64 {
        self.0.iter().sum()
    }
    /// `{"params": …, …, "total": …}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for c in MemCategory::ALL {
            m.insert(c.name().into(), self.get(c).into());
        }
        m.insert("total".into(), self.total().into());
        serde_json::Value::Object(m)
    }
}

/// Live and peak bytes of one backend.
#[derive(Debug, Default)]
pub struct Ledger {
    live: [AtomicI64; 7],
    category: AtomicU8,
    /// The split at the highest total seen.
    peak: Mutex<MemBytes>,
}

impl Ledger {
    /// Charges the next allocations to `c`; returns the category it replaces.
    pub fn set_category(&self, c: MemCategory) -> MemCategory {
        MemCategory::from_index(self.category.swap(c as u8, Ordering::Relaxed))
    }
    pub fn category(&self) -> MemCategory {
        MemCategory::from_index(self.category.load(Ordering::Relaxed))
    }
    /// Records an allocation of `bytes` to `c`.
    pub fn alloc(&self, c: MemCategory, bytes: usize) {
        self.live[c.index()].fetch_add(bytes as i64, Ordering::Relaxed);
        let now = self.live();
        let mut peak = self.peak.lock().unwrap_or_else(|e| e.into_inner());
        if now.total() > peak.total() {
            *peak = now;
        }
    }
    /// Records that `bytes` charged to `c` were freed.
    pub fn free(&self, c: MemCategory, bytes: usize) {
        self.live[c.index()].fetch_sub(bytes as i64, Ordering::Relaxed);
    }
    /// Bytes allocated now, by category.
    pub fn live(&self) -> MemBytes {
        MemBytes(std::array::from_fn(|i| {
            self.live[i].load(Ordering::Relaxed)
        }))
    }
    /// The split at the highest total so far.
    pub fn peak(&self) -> MemBytes {
        *self.peak.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_keeps_the_split_at_the_highest_total() {
        let l = Ledger::default();
        l.alloc(MemCategory::Params, 100);
        l.alloc(MemCategory::Comm, 50);
        l.free(MemCategory::Comm, 50);
        l.alloc(MemCategory::Grads, 20);
        let p = l.peak();
        assert_eq!((p.get(MemCategory::Comm), p.total()), (50, 150));
        assert_eq!(l.live().total(), 120);
        assert_eq!(l.set_category(MemCategory::Grads), MemCategory::Params);
        assert_eq!(l.category(), MemCategory::Grads);
    }
}
