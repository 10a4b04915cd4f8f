//! llm.c token shard files.
//!
//! Format (all little-endian), identical to the `.bin` files written by
//! llm.c's `dev/data/*.py` scripts and read by its `dataloader.h`:
//!
//! | offset (bytes) | content                                            |
//! |----------------|----------------------------------------------------|
//! | 0              | `i32` magic = [`SHARD_MAGIC`] (20240520)           |
//! | 4              | `i32` version = [`SHARD_VERSION`] (1)              |
//! | 8              | `i32` N = number of tokens in the body             |
//! | 12 .. 1024     | remaining 253 `i32` header slots, written as zero  |
//! | 1024 ..        | N `u16` token ids                                  |
//!
//! The file size is therefore exactly `4 * HEADER_INTS + 2 * N` bytes.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

/// Magic number in `header[0]` of an llm.c token shard.
pub const SHARD_MAGIC: i32 = 20240520;
/// Format version in `header[1]`; llm.c version 1 stores `u16` tokens.
pub const SHARD_VERSION: i32 = 1;
/// Number of `i32` slots in the header (1024 bytes).
pub const HEADER_INTS: usize = 256;
/// Header size in bytes.
pub const HEADER_BYTES: usize = HEADER_INTS * 4;

/// `<path>.tmp`: the temporary name used while a shard is being written.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Build the 1024-byte header for a shard of `num_tokens` tokens.
fn encode_header(num_tokens: usize) -> Result<Vec<u8>> {
    let n = i32::try_from(num_tokens).with_context(|| {
        format!("{num_tokens} tokens do not fit in the i32 token count of an llm.c shard")
    })?;
    let mut header = [0i32; HEADER_INTS];
    header[0] = SHARD_MAGIC;
    header[1] = SHARD_VERSION;
    header[2] = n;
    Ok(header.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Write `tokens` as an llm.c shard at `path`.
///
/// The data goes to `<path>.tmp` first, is fsynced, and is then renamed over
/// `path`, so readers never observe a partially written shard.
pub fn write_shard(path: &Path, tokens: &[u16]) -> Result<()> {
    let header =
        encode_header(tokens.len()).with_context(|| format!("writing shard {}", path.display()))?;
    let tmp = tmp_path(path);
    let file =
        File::create(&tmp).with_context(|| format!("creating shard file {}", tmp.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&header)
        .with_context(|| format!("writing shard header to {}", tmp.display()))?;
    // Convert in chunks so large shards never need a second full-size copy.
    let mut buf = Vec::with_capacity(2 * 65536);
    for chunk in tokens.chunks(65536) {
        buf.clear();
        buf.extend(chunk.iter().flat_map(|t| t.to_le_bytes()));
        w.write_all(&buf)
            .with_context(|| format!("writing shard tokens to {}", tmp.display()))?;
    }
    let file = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("flushing shard {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("fsyncing shard {}", tmp.display()))?;
    drop(file);
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Read a whole llm.c shard and return its tokens.
///
/// Every error names `path`: missing/unreadable file, file shorter than the
/// header, bad magic, unsupported version, negative token count, or a body
/// whose size is not exactly `2 * N` bytes (truncated or trailing bytes).
pub fn read_shard(path: &Path) -> Result<Vec<u16>> {
    let bytes =
        fs::read(path).with_context(|| format!("reading token shard {}", path.display()))?;
    decode_shard(&bytes).with_context(|| format!("invalid token shard {}", path.display()))
}

/// The token count of a shard, from its header, checked against the file's length (reads
/// only the header).
pub fn read_header_tokens(path: &Path) -> Result<usize> {
    use std::io::Read;
    let mut f =
        File::open(path).with_context(|| format!("opening token shard {}", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading token shard {}", path.display()))?
        .len() as usize;
    let mut head = vec![0u8; HEADER_BYTES.min(len)];
    f.read_exact(&mut head)
        .with_context(|| format!("reading token shard {}", path.display()))?;
    check_layout(&head, len).with_context(|| format!("invalid token shard {}", path.display()))
}

/// Parse the bytes of a complete shard file.
pub fn decode_shard(bytes: &[u8]) -> Result<Vec<u16>> {
    let n = check_layout(bytes, bytes.len())?;
    Ok(bytes[HEADER_BYTES..HEADER_BYTES + 2 * n]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// Checks a shard's header (the first bytes of `head`) against the file's length `file_len`
/// and returns its token count N: the file must be at least the header, with magic
/// [`SHARD_MAGIC`], version [`SHARD_VERSION`], N ≥ 0 and exactly `2 * N` body bytes.
fn check_layout(head: &[u8], file_len: usize) -> Result<usize> {
    ensure!(
        file_len >= HEADER_BYTES && head.len() >= HEADER_BYTES,
        "file has {file_len} bytes, shorter than the {HEADER_BYTES}-byte header"
    );
    let int_at = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&head[4 * i..4 * i + 4]);
        i32::from_le_bytes(b)
    };
    let magic = int_at(0);
    if magic != SHARD_MAGIC {
        bail!("bad magic {magic}, expected {SHARD_MAGIC} (llm.c token shard)");
    }
    let version = int_at(1);
    if version != SHARD_VERSION {
        bail!("unsupported version {version}, expected {SHARD_VERSION} (u16 tokens)");
    }
    let n = int_at(2);
    ensure!(n >= 0, "header has a negative token count {n}");
    let n = n as usize;
    let body = file_len - HEADER_BYTES;
    if body < 2 * n {
        bail!("truncated: header says {n} tokens but body has {body} bytes");
    }
    if body > 2 * n {
        bail!(
            "trailing bytes: header says {n} tokens ({} bytes) but body has {body} bytes",
            2 * n
        );
    }
    Ok(n)
}

/// A token shard mapped into memory: its tokens are read from the page cache when touched
/// (shared by every process of a node that maps the same file), never copied as a whole.
#[derive(Debug)]
pub struct MappedShard {
    pub path: PathBuf,
    map: memmap2::Mmap,
    len: usize,
}

impl MappedShard {
    /// Maps `path` after checking its header against its length (no token is read). Shard
    /// files must not change while mapped: ferrotron writes shards under a temporary name and
    /// renames them, so a rewritten shard is a new file and the mapping keeps the old one.
    pub fn open(path: &Path) -> Result<Self> {
        ensure!(
            cfg!(target_endian = "little"),
            "memory-mapped shards need a little-endian host"
        );
        let file =
            File::open(path).with_context(|| format!("opening token shard {}", path.display()))?;
        // SAFETY: the mapping is read-only and shards are immutable once written (see above);
        // a file truncated under us by another program would fault, not corrupt memory.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("mapping token shard {}", path.display()))?;
        let len = check_layout(&map, map.len())
            .with_context(|| format!("invalid token shard {}", path.display()))?;
        let body = &map[HEADER_BYTES..HEADER_BYTES + 2 * len];
        ensure!(
            bytemuck::try_cast_slice::<u8, u16>(body).is_ok(),
            "token shard {}: mapped body is not 2-byte aligned",
            path.display()
        );
        Ok(Self {
            path: path.to_path_buf(),
            map,
            len,
        })
    }

    /// The shard's tokens (little-endian `u16`, 2-byte aligned after the 1024-byte header,
    /// checked in [`MappedShard::open`]).
    pub fn tokens(&self) -> &[u16] {
        let body = &self.map[HEADER_BYTES..HEADER_BYTES + 2 * self.len];
        bytemuck::try_cast_slice(body).unwrap_or(&[])
    }

    /// Number of tokens N.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the shard holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ferrotron-shard-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trip() {
        let dir = temp_dir("rt");
        let path = dir.join("a.bin");
        let tokens: Vec<u16> = (0..100_000u32).map(|i| (i * 7 % 65536) as u16).collect();
        write_shard(&path, &tokens).unwrap();
        assert!(!tmp_path(&path).exists());
        let len = fs::metadata(&path).unwrap().len() as usize;
        assert_eq!(len, HEADER_BYTES + 2 * tokens.len());
        assert_eq!(read_shard(&path).unwrap(), tokens);
        write_shard(&path, &[]).unwrap();
        assert!(read_shard(&path).unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    /// Bytes exactly as llm.c's C code produces them on a little-endian host:
    /// `int header[256] = {0}; header[0..3] = ...; fwrite(header, sizeof(int), 256, f);
    /// fwrite(tokens, sizeof(uint16_t), n, f);`
    #[test]
    fn reads_llmc_layout() {
        let dir = temp_dir("llmc");
        let path = dir.join("llmc.bin");
        let tokens: [u16; 5] = [50256, 15496, 995, 0, 65535];
        let mut bytes = Vec::new();
        for i in 0..256 {
            let v: i32 = match i {
                0 => 20240520,
                1 => 1,
                2 => tokens.len() as i32,
                _ => 0,
            };
            for k in 0..4 {
                bytes.push(((v >> (8 * k)) & 0xff) as u8);
            }
        }
        for t in tokens {
            bytes.push((t & 0xff) as u8);
            bytes.push((t >> 8) as u8);
        }
        // 20240520 = 0x0134D888, little-endian.
        assert_eq!(&bytes[0..4], &[0x88, 0xd8, 0x34, 0x01]);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_shard(&path).unwrap(), tokens);
        // Our writer produces the identical bytes.
        let ours = dir.join("ours.bin");
        write_shard(&ours, &tokens).unwrap();
        assert_eq!(fs::read(&ours).unwrap(), bytes);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_problem_and_file() {
        let dir = temp_dir("err");
        let path = dir.join("x.bin");
        write_shard(&path, &[1, 2, 3, 4]).unwrap();
        let good = fs::read(&path).unwrap();

        let mut bad = good.clone();
        bad[0] = 0;
        fs::write(&path, &bad).unwrap();
        let msg = format!("{:#}", read_shard(&path).unwrap_err());
        assert!(msg.contains("bad magic"), "{msg}");
        assert!(msg.contains("expected 20240520"), "{msg}");
        assert!(msg.contains("x.bin"), "{msg}");

        let mut bad = good.clone();
        bad[4] = 2;
        fs::write(&path, &bad).unwrap();
        let msg = format!("{:#}", read_shard(&path).unwrap_err());
        assert!(msg.contains("unsupported version 2"), "{msg}");

        fs::write(&path, &good[..good.len() - 3]).unwrap();
        let msg = format!("{:#}", read_shard(&path).unwrap_err());
        assert!(
            msg.contains("truncated: header says 4 tokens but body has 5 bytes"),
            "{msg}"
        );
        assert!(msg.contains("x.bin"), "{msg}");

        let mut bad = good.clone();
        bad.push(0);
        fs::write(&path, &bad).unwrap();
        let msg = format!("{:#}", read_shard(&path).unwrap_err());
        assert!(msg.contains("trailing bytes"), "{msg}");

        fs::write(&path, &good[..100]).unwrap();
        let msg = format!("{:#}", read_shard(&path).unwrap_err());
        assert!(msg.contains("shorter than the 1024-byte header"), "{msg}");

        let missing = dir.join("missing.bin");
        let msg = format!("{:#}", read_shard(&missing).unwrap_err());
        assert!(msg.contains("missing.bin"), "{msg}");
        fs::remove_dir_all(dir).unwrap();
    }
}
