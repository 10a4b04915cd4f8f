//! Data-parallel gradient reduction in buckets, overlapped with backward (DDP style).
//!
//! The rank's flat gradient buffer `[P]` is cut into buckets, contiguous ranges that partition
//! it, so the bytes on the wire are those of one reduction of P floats:
//! - *tail* buckets cover `tail_start .. P` (the layers and `ln_f`). Their boundaries are layer
//!   boundaries; built from the end of the buffer (the last layers, whose gradients are final
//!   first), each holds whole layers until it reaches `parallel.bucket_mb`.
//! - one *head* bucket `0 .. tail_start` holds the embeddings, whose gradients are final only
//!   after the embedding backward and the tied-`wte` reduction over the embedding group.
//!
//! During the step's last backward the stage reports, after each layer, from which offset its
//! gradients are final ([`OnReady`](super::stage::OnReady)); every bucket inside that range is
//! started by the run's transport ([`BufComm::start_all_reduce`]: `MPI_Iallreduce` on a host
//! copy, CUDA-aware `MPI_Iallreduce` on device memory, or NCCL on the stream; with ZeRO-1
//! `MPI_Ireduce_scatter` of a host copy onto the dp shards), and MPI is driven (`MPI_Test`) so
//! reductions progress while the remaining layers compute. After backward the trainer starts
//! the head bucket and waits for all, and the sums replace the local gradients.
//!
//! Without overlap (`parallel.overlap_grad_reduce = false`) every bucket is started after
//! backward; with a bucket size of at least the buffer there is one bucket `0 .. P`: a single
//! blocking reduction. Every rank of the dp group has the same layout,
//! so all start the same buckets in the same order, as MPI requires of collectives.

use super::shard::StageLayout;
use crate::backend::prelude::*;
use crate::backend::{Region, Started};
use crate::comm::{AsyncComm, Pending};
use anyhow::Result;
use std::time::Instant;

/// The buckets of one stage, in the order they are started (from the end of the buffer
/// backwards). `bucket_elems` is the target size in floats. With `overlap` the embeddings are a
/// bucket of their own (started last); without, the embeddings are cut like the layers, so a
/// bucket size of at least P gives one reduction of the whole buffer.
pub fn buckets(layout: &StageLayout, bucket_elems: usize, overlap: bool) -> Vec<Region> {
    let tail = layout.tail_start();
    let mut cuts = layout.ready_points();
    if !overlap && tail > 0 {
        cuts.push(tail);
    }
    let mut out = Vec::new();
    let mut end = layout.total;
    for o in cuts {
        if end - o >= bucket_elems.max(1) {
            out.push(Region {
                off: o,
                len: end - o,
            });
            end = o;
        }
    }
    let stop = if overlap { tail } else { 0 };
    if end > stop {
        out.push(Region {
            off: stop,
            len: end - stop,
        });
        end = stop;
    }
    if end > 0 {
        out.push(Region { off: 0, len: end });
    }
    out
}

/// What the reduction produces.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Every rank gets the dp-sum of the whole buffer.
    AllReduce,
    /// ZeRO-1: dp rank r gets the dp-sum of elements `r·chunk .. (r+1)·chunk` (clipped to P),
    /// in a buffer of `chunk` floats (zero past P).
    ReduceScatter { chunk: usize },
}

/// The reductions of one step: started bucket by bucket, finished together.
pub struct DpReducer<'a> {
    comm: &'a dyn AsyncComm,
    buckets: Vec<Region>,
    target: Target,
    total: usize,
    /// Buckets `..next` have been started.
    next: usize,
    pending: Vec<(Region, Reduction)>,
}

/// One started bucket.
enum Reduction {
    /// `grads[r] ← Σ_dp grads[r]` by the group's transport.
    Sum(Started),
    /// ZeRO-1: MPI reduce-scatter of a host copy onto the dp shards.
    Shards(Pending),
}

impl<'a> DpReducer<'a> {
    pub fn new(
        comm: &'a dyn AsyncComm,
        buckets: Vec<Region>,
        target: Target,
        total: usize,
    ) -> Self {
        Self {
            comm,
            buckets,
            target,
            total,
            next: 0,
            pending: Vec::new(),
        }
    }

    /// Backward hook: gradients `from ..` are final. Starts every bucket inside that range (in
    /// order), then drives MPI's progress on all started ones.
    pub fn ready<B: Backend>(&mut self, be: &B, grads: &mut B::Buf, from: usize) -> Result<()> {
        while let Some(&r) = self.buckets.get(self.next) {
            if r.off < from || r.len == 0 {
                break;
            }
            self.start(be, grads, r)?;
        }
        let t0 = Instant::now();
        for (_, red) in &mut self.pending {
            if let Reduction::Sum(Started::Host(p)) | Reduction::Shards(p) = red {
                p.test()?;
            }
        }
        self.comm.stats().add(0, t0.elapsed().as_secs_f64());
        Ok(())
    }

    fn start<B: Backend>(&mut self, be: &B, grads: &mut B::Buf, r: Region) -> Result<()> {
        let red = match self.target {
            Target::AllReduce => Reduction::Sum(be.start_all_reduce(self.comm, grads, r)?),
            Target::ReduceScatter { chunk } => {
                let counts = shard_counts(r, chunk, self.total, self.comm.size());
                let host = be.download_region(grads, r)?;
                Reduction::Shards(self.comm.ireduce_scatter_f32(host, &counts)?)
            }
        };
        self.pending.push((r, red));
        self.next += 1;
        Ok(())
    }

    /// Starts the buckets not yet started, waits for all and returns the result: with
    /// [`Target::AllReduce`] the sums are written into `grads` (None is returned); with
    /// [`Target::ReduceScatter`] this rank's summed shard.
    pub fn finish<B: Backend>(mut self, be: &B, grads: &mut B::Buf) -> Result<Option<Vec<f32>>> {
        while let Some(&r) = self.buckets.get(self.next) {
            self.start(be, grads, r)?;
        }
        let t0 = Instant::now();
        let rank = self.comm.rank();
        let mut shard = match self.target {
            Target::AllReduce => None,
            Target::ReduceScatter { chunk } => Some(vec![0.0f32; chunk]),
        };
        for (r, red) in std::mem::take(&mut self.pending) {
            match (red, &mut shard, self.target) {
                (Reduction::Sum(st), None, _) => be.finish_all_reduce(grads, r, st)?,
                (Reduction::Shards(p), Some(s), Target::ReduceScatter { chunk }) => {
                    let mut sum = p.wait()?;
                    let mine = shard_range(rank, chunk, self.total);
                    let lo = r.off.max(mine.start);
                    let hi = (r.off + r.len).min(mine.end);
                    if lo < hi {
                        sum.truncate(hi - lo);
                        s[lo - mine.start..hi - mine.start].copy_from_slice(&sum);
                    }
                }
                _ => unreachable!("a bucket's reduction matches the target"),
            }
        }
        self.comm.stats().add(0, t0.elapsed().as_secs_f64());
        Ok(shard)
    }
}

/// Elements of the flat buffer owned by dp rank `r` under ZeRO-1.
fn shard_range(r: usize, chunk: usize, total: usize) -> std::ops::Range<usize> {
    (r * chunk).min(total)..((r + 1) * chunk).min(total)
}

/// How many elements of bucket `b` fall into each rank's shard (the blocks of a reduce-scatter;
/// shards are contiguous and in rank order, so the bucket is their concatenation).
fn shard_counts(b: Region, chunk: usize, total: usize, dp: usize) -> Vec<usize> {
    (0..dp)
        .map(|r| {
            let s = shard_range(r, chunk, total);
            let (lo, hi) = (b.off.max(s.start), (b.off + b.len).min(s.end));
            hi.saturating_sub(lo)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gpt2::{Gpt2Config, ParamLayout};

    fn cfg() -> Gpt2Config {
        Gpt2Config {
            vocab_size: 100,
            padded_vocab: 128,
            n_positions: 16,
            n_embd: 8,
            n_layer: 6,
            n_head: 2,
        }
    }

    /// Buckets partition the buffer, start with the tail from its end, break only at layer
    /// boundaries, and end with the embeddings; for every stage shape and bucket size.
    #[test]
    fn buckets_partition_the_buffer_at_layer_boundaries() {
        let c = cfg().with_tp_padding(2);
        let g = ParamLayout::new(&c);
        for (tp, pp) in [(1, 1), (2, 1), (1, 2), (2, 3)] {
            for s in 0..pp {
                let ly = StageLayout::new(&c, &g, tp, 0, pp, s).unwrap();
                let points = ly.ready_points();
                for elems in [1, 100, 1000, 10_000, usize::MAX / 2] {
                    let b = buckets(&ly, elems, true);
                    let mut end = ly.total;
                    for r in &b {
                        assert_eq!(r.off + r.len, end, "contiguous from the end");
                        assert!(r.len > 0);
                        assert!(r.off == 0 || points.contains(&r.off) || r.off == ly.tail_start());
                        end = r.off;
                    }
                    assert_eq!(end, 0, "covers the whole buffer");
                    let head = b.iter().filter(|r| r.off < ly.tail_start()).count();
                    assert_eq!(head, usize::from(ly.tail_start() > 0));
                    if elems == 1 {
                        let tail = b.len() - head;
                        assert_eq!(tail, points.len(), "one bucket per layer");
                    }
                }
                let one = buckets(&ly, ly.total, false);
                assert_eq!(
                    one,
                    vec![Region {
                        off: 0,
                        len: ly.total
                    }]
                );
                let b = buckets(&ly, 1, false);
                assert_eq!(b.len(), points.len() + usize::from(ly.tail_start() > 0));
                assert_eq!(b.iter().map(|r| r.len).sum::<usize>(), ly.total);
                assert_eq!(
                    one,
                    vec![Region {
                        off: 0,
                        len: ly.total
                    }]
                );
            }
        }
    }

    #[test]
    fn shard_counts_split_a_bucket_over_ranks() {
        // P = 10, dp = 3, chunk = 4: shards [0,4) [4,8) [8,10).
        let b = Region { off: 3, len: 6 }; // [3, 9)
        assert_eq!(shard_counts(b, 4, 10, 3), vec![1, 4, 1]);
        let b = Region { off: 0, len: 10 };
        assert_eq!(shard_counts(b, 4, 10, 3), vec![4, 4, 2]);
    }
}
