//! Host-side tables the kernels read: the chunks of the multi-tensor AdamW and the local rows
//! of a vocabulary shard. Pure functions, tested here and by `tests/kernel_emu.rs`.

use crate::backend::Region;
use anyhow::{ensure, Result};

/// Most elements one block of `adamw_multi` updates.
pub const ADAM_CHUNK: usize = 32 * 1024;

/// The chunk table of `adamw_multi`: pairs (first element, length << 1 | decay), each chunk at
/// most [`ADAM_CHUNK`] elements, covering `ranges` (which must lie inside `[0, n)`).
pub fn adam_chunks(ranges: &[(Region, bool)], n: usize) -> Result<Vec<i64>> {
    let mut t = Vec::new();
    for &(r, decay) in ranges {
        ensure!(
            r.off + r.len <= n,
            "AdamW region {r:?} outside a buffer of {n}"
        );
        let mut o = r.off;
        while o < r.off + r.len {
            let len = ADAM_CHUNK.min(r.off + r.len - o);
            t.push(i64::try_from(o)?);
            t.push(i64::try_from(len)? << 1 | i64::from(decay));
            o += len;
        }
    }
    Ok(t)
}

/// Token ids as local rows of the vocabulary shard `v0 .. v0 + rows` (-1 for other shards'
/// tokens): the `row` input of `vp_embedding_forward`.
pub fn shard_rows(tok: &[u32], v0: usize, rows: usize) -> Vec<i32> {
    tok.iter()
        .map(|&id| match (id as usize).checked_sub(v0) {
            Some(r) if r < rows => r as i32,
            _ => -1,
        })
        .collect()
}

/// Local ids for the grouped embedding backward of a shard: other shards' tokens get `rows`,
/// an id past the shard, whose segment the caller drops.
pub fn shard_ids(tok: &[u32], v0: usize, rows: usize) -> Vec<u32> {
    shard_rows(tok, v0, rows)
        .into_iter()
        .map(|r| if r < 0 { rows as u32 } else { r as u32 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunk table covers every region exactly once, in chunks of at most ADAM_CHUNK
    /// elements, with the region's decay flag; a region past the buffer is an error.
    #[test]
    fn adam_chunks_tile_the_regions() {
        let ranges = [
            (Region { off: 0, len: 5 }, false),
            (
                Region {
                    off: 5,
                    len: 2 * ADAM_CHUNK + 7,
                },
                true,
            ),
            (
                Region {
                    off: 2 * ADAM_CHUNK + 20,
                    len: ADAM_CHUNK,
                },
                false,
            ),
        ];
        let n = 3 * ADAM_CHUNK + 20;
        let t = adam_chunks(&ranges, n).unwrap();
        let mut hit = vec![0u8; n];
        let mut decayed = vec![false; n];
        for c in t.chunks(2) {
            let (off, len, d) = (c[0] as usize, (c[1] >> 1) as usize, c[1] & 1 == 1);
            assert!(len > 0 && len <= ADAM_CHUNK);
            for i in off..off + len {
                hit[i] += 1;
                decayed[i] = d;
            }
        }
        for (r, d) in ranges {
            for i in r.range() {
                assert_eq!((hit[i], decayed[i]), (1, d), "element {i}");
            }
        }
        assert_eq!(
            hit.iter().map(|&h| h as usize).sum::<usize>(),
            5 + 3 * ADAM_CHUNK + 7
        );
        assert_eq!(t.len() / 2, 1 + 3 + 1);
        assert!(adam_chunks(&ranges, n - 1).is_err());
    }

    #[test]
    fn shard_rows_map_ids_into_the_shard() {
        let tok = [0u32, 63, 64, 100, 127, 128, 149];
        assert_eq!(shard_rows(&tok, 64, 64), vec![-1, -1, 0, 36, 63, -1, -1]);
        assert_eq!(shard_ids(&tok, 64, 64), vec![64, 64, 0, 36, 63, 64, 64]);
        assert_eq!(
            shard_rows(&tok, 0, 200),
            vec![0, 63, 64, 100, 127, 128, 149]
        );
    }
}
