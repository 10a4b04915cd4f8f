//! Per-op time profile of a backend (`log.profile_ops`): where a training step's time goes, op
//! by op (`linear_forward`, `attention_backward`, `all_reduce_region`, …), for performance work.
//!
//! Each instrumented [`Backend`](super::Backend) method opens a [`Span`] on entry; the span
//! takes a mark from the backend's [`Clock`] and another when it is dropped. Marks are host
//! instants on the CPU and CUDA events on the GPU's compute stream, so a GPU op's time is the
//! time its kernels ran on the stream (from the end of the work before it to the end of its
//! own), not the time the host took to enqueue them. Only the outermost span counts: an op that
//! calls other ops (a default method built from others, a staged transfer) is timed once.
//! With the profile off (the default) a span is one relaxed atomic load.
//!
//! [`OpProfiler::take`] resolves the marks (synchronising with the device) into milliseconds
//! and calls per op and starts afresh; the trainer turns the profile on for each step only,
//! takes it at the step's end and writes it to the metrics file (`ops`), so validation and
//! saving are not in it.

use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Where marks come from: the host clock, or a device stream.
pub trait Clock {
    type Mark: Send;
    /// A mark at the current position (of the host's time, or of the stream's work).
    fn mark(&self) -> Result<Self::Mark>;
    /// Milliseconds from `a` to `b` (waits for both to be reached).
    fn ms(&self, a: &Self::Mark, b: &Self::Mark) -> Result<f64>;
}

/// The host's monotonic clock (the CPU backend, whose ops run synchronously).
pub struct HostClock;

impl Clock for HostClock {
    type Mark = std::time::Instant;
    fn mark(&self) -> Result<Self::Mark> {
        Ok(std::time::Instant::now())
    }
    fn ms(&self, a: &Self::Mark, b: &Self::Mark) -> Result<f64> {
        Ok(b.saturating_duration_since(*a).as_secs_f64() * 1e3)
    }
}

/// Time and calls of one op over a profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct OpStat {
    pub ms: f64,
    pub calls: u64,
}

/// Milliseconds and calls per op.
pub type Profile = BTreeMap<&'static str, OpStat>;

/// Recorded spans: (op, start mark, end mark).
type Spans<M> = Vec<(&'static str, M, M)>;

/// Spans of the ops run since the last [`OpProfiler::take`].
pub struct OpProfiler<M> {
    on: AtomicBool,
    /// Open spans; only a span opened at depth 0 records.
    depth: AtomicUsize,
    spans: Mutex<Spans<M>>,
}

impl<M> Default for OpProfiler<M> {
    fn default() -> Self {
        Self {
            on: AtomicBool::new(false),
            depth: AtomicUsize::new(0),
            spans: Mutex::new(Vec::new()),
        }
    }
}

impl<M: Send> OpProfiler<M> {
    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Opens the span of op `name`: timed if the profile is on and no other span is open.
    pub fn span<'a, C: Clock<Mark = M>>(&'a self, clock: &'a C, name: &'static str) -> Span<'a, C> {
        if !self.is_on() {
            return Span { inner: None };
        }
        let outer = self.depth.fetch_add(1, Ordering::Relaxed) == 0;
        // A clock that fails to mark only loses this span (the op itself still runs and reports
        // its own errors).
        let start = if outer { clock.mark().ok() } else { None };
        Span {
            inner: Some(SpanInner {
                prof: self,
                clock,
                name,
                start,
            }),
        }
    }

    /// Milliseconds and calls per op since the last take (waiting for the device), or None
    /// when the profile is off; clears the spans.
    pub fn take<C: Clock<Mark = M>>(&self, clock: &C) -> Result<Option<Profile>> {
        if !self.is_on() {
            return Ok(None);
        }
        let spans = std::mem::take(&mut *self.lock()?);
        let mut out = Profile::new();
        let mut lost = 0;
        for (name, a, b) in &spans {
            // A span whose marks cannot be resolved is lost, not the run (the ops themselves
            // report their own errors).
            let Ok(ms) = clock.ms(a, b) else {
                lost += 1;
                continue;
            };
            let s = out.entry(name).or_default();
            s.ms += ms;
            s.calls += 1;
        }
        if lost > 0 {
            log::warn!("op profile: {lost} span(s) could not be timed");
        }
        Ok(Some(out))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Spans<M>>> {
        self.spans
            .lock()
            .map_err(|_| anyhow::anyhow!("op profile: lock poisoned"))
    }
}

/// An open span ([`OpProfiler::span`]); records when dropped.
pub struct Span<'a, C: Clock> {
    inner: Option<SpanInner<'a, C>>,
}

struct SpanInner<'a, C: Clock> {
    prof: &'a OpProfiler<C::Mark>,
    clock: &'a C,
    name: &'static str,
    start: Option<C::Mark>,
}

impl<C: Clock> Drop for Span<'_, C> {
    fn drop(&mut self) {
        let Some(s) = self.inner.take() else { return };
        s.prof.depth.fetch_sub(1, Ordering::Relaxed);
        let Some(a) = s.start else { return };
        if let (Ok(b), Ok(mut v)) = (s.clock.mark(), s.prof.lock()) {
            v.push((s.name, a, b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock counting marks: mark k is k, so a span's "time" is the marks taken inside it.
    struct Counter(AtomicUsize);
    impl Clock for Counter {
        type Mark = usize;
        fn mark(&self) -> Result<usize> {
            Ok(self.0.fetch_add(1, Ordering::Relaxed))
        }
        fn ms(&self, a: &usize, b: &usize) -> Result<f64> {
            Ok((b - a) as f64)
        }
    }

    #[test]
    fn outermost_spans_count_and_off_records_nothing() {
        let c = Counter(AtomicUsize::new(0));
        let p = OpProfiler::default();
        drop(p.span(&c, "off"));
        assert_eq!(p.take(&c).unwrap(), None);
        p.set(true);
        {
            let _a = p.span(&c, "outer");
            let _b = p.span(&c, "inner");
        }
        drop(p.span(&c, "leaf"));
        drop(p.span(&c, "leaf"));
        let t = p.take(&c).unwrap().unwrap();
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), ["leaf", "outer"]);
        assert_eq!(t["outer"], OpStat { ms: 1.0, calls: 1 });
        assert_eq!(t["leaf"], OpStat { ms: 2.0, calls: 2 });
        assert!(p.take(&c).unwrap().unwrap().is_empty(), "take clears");
    }
}
