//! The DP × TP × PP grid as pure rank arithmetic (no MPI): coordinates of a rank, and the
//! members of each communication group. Fully unit-tested.
//!
//! Rank order, TP fastest: `rank = tp + TP·(dp + DP·pp)`. TP peers are consecutive ranks (one
//! node, fast links); PP crosses nodes last.

use anyhow::{bail, Result};

/// Grid sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub dp: usize,
    pub tp: usize,
    pub pp: usize,
}

/// A rank's position in the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coords {
    pub dp: usize,
    pub tp: usize,
    pub pp: usize,
}

impl Grid {
    /// The grid for `world` ranks: `dp` inferred as world / (tp·pp) when not given. Errors name
    /// the mismatch.
    pub fn new(world: usize, dp: Option<usize>, tp: usize, pp: usize) -> Result<Self> {
        if tp == 0 || pp == 0 || dp == Some(0) {
            bail!("parallel.dp, parallel.tp and parallel.pp must be > 0");
        }
        let dp = match dp {
            Some(d) => d,
            None if world.is_multiple_of(tp * pp) => world / (tp * pp),
            None => bail!(
                "world size {world} is not divisible by parallel.tp × parallel.pp = {tp} × {pp}"
            ),
        };
        if dp * tp * pp != world {
            bail!(
                "world size {world} does not match the grid parallel.dp × parallel.tp × parallel.pp = {dp} × {tp} × {pp} = {}",
                dp * tp * pp
            );
        }
        Ok(Self { dp, tp, pp })
    }

    pub fn world(&self) -> usize {
        self.dp * self.tp * self.pp
    }

    pub fn coords(&self, rank: usize) -> Coords {
        Coords {
            tp: rank % self.tp,
            dp: (rank / self.tp) % self.dp,
            pp: rank / (self.tp * self.dp),
        }
    }

    pub fn rank(&self, c: Coords) -> usize {
        c.tp + self.tp * (c.dp + self.dp * c.pp)
    }

    /// Ranks with the same (dp, pp) as `rank`, in tp order.
    pub fn tp_group(&self, rank: usize) -> Vec<usize> {
        let c = self.coords(rank);
        (0..self.tp)
            .map(|tp| self.rank(Coords { tp, ..c }))
            .collect()
    }

    /// Ranks with the same (tp, pp) as `rank`, in dp order.
    pub fn dp_group(&self, rank: usize) -> Vec<usize> {
        let c = self.coords(rank);
        (0..self.dp)
            .map(|dp| self.rank(Coords { dp, ..c }))
            .collect()
    }

    /// Ranks with the same (tp, dp) as `rank`, in pipeline-stage order.
    pub fn pp_group(&self, rank: usize) -> Vec<usize> {
        let c = self.coords(rank);
        (0..self.pp)
            .map(|pp| self.rank(Coords { pp, ..c }))
            .collect()
    }

    /// First and last stage with the same (tp, dp) — they share the tied `wte`. One rank when
    /// pp = 1.
    pub fn embedding_group(&self, rank: usize) -> Vec<usize> {
        let c = self.coords(rank);
        let mut g = vec![self.rank(Coords { pp: 0, ..c })];
        if self.pp > 1 {
            g.push(self.rank(Coords {
                pp: self.pp - 1,
                ..c
            }));
        }
        g
    }

    /// All ranks with the same dp as `rank` (one model replica), in rank order.
    pub fn model_parallel_group(&self, rank: usize) -> Vec<usize> {
        let c = self.coords(rank);
        let mut g: Vec<usize> = (0..self.pp)
            .flat_map(|pp| (0..self.tp).map(move |tp| (tp, pp)))
            .map(|(tp, pp)| self.rank(Coords { tp, pp, dp: c.dp }))
            .collect();
        g.sort_unstable();
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grids() -> Vec<Grid> {
        let mut v = Vec::new();
        for dp in 1..=4 {
            for tp in 1..=4 {
                for pp in 1..=4 {
                    v.push(Grid { dp, tp, pp });
                }
            }
        }
        v
    }

    #[test]
    fn coords_round_trip_and_tp_is_fastest() {
        for g in grids() {
            for r in 0..g.world() {
                assert_eq!(g.rank(g.coords(r)), r);
            }
            if g.tp > 1 {
                assert_eq!(g.coords(1).tp, 1, "consecutive ranks are TP peers");
            }
        }
        let g = Grid {
            dp: 2,
            tp: 2,
            pp: 2,
        };
        assert_eq!(
            g.coords(5),
            Coords {
                tp: 1,
                dp: 0,
                pp: 1
            }
        );
        assert_eq!(g.tp_group(5), vec![4, 5]);
        assert_eq!(g.dp_group(5), vec![5, 7]);
        assert_eq!(g.pp_group(5), vec![1, 5]);
        assert_eq!(g.embedding_group(3), vec![3, 7]);
        assert_eq!(g.model_parallel_group(6), vec![2, 3, 6, 7]);
    }

    #[test]
    fn groups_partition_the_world() {
        for g in grids() {
            type GroupFn = fn(&Grid, usize) -> Vec<usize>;
            let fns: [(GroupFn, usize); 4] = [
                (Grid::tp_group, g.tp),
                (Grid::dp_group, g.dp),
                (Grid::pp_group, g.pp),
                (Grid::model_parallel_group, g.tp * g.pp),
            ];
            for (f, size) in fns {
                for r in 0..g.world() {
                    let members = f(&g, r);
                    assert_eq!(members.len(), size);
                    assert!(members.contains(&r));
                    for &m in &members {
                        assert_eq!(f(&g, m), members, "group membership must be symmetric");
                    }
                }
            }
        }
    }

    #[test]
    fn grid_errors_name_the_mismatch() {
        assert_eq!(
            Grid::new(8, None, 2, 2).unwrap(),
            Grid {
                dp: 2,
                tp: 2,
                pp: 2
            }
        );
        let e = Grid::new(6, Some(2), 2, 2).unwrap_err().to_string();
        assert!(e.contains("world size 6") && e.contains("= 8"), "{e}");
        let e = Grid::new(6, None, 4, 1).unwrap_err().to_string();
        assert!(e.contains("not divisible"), "{e}");
    }
}
