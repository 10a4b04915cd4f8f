//! Run-time compilation of `kernels/*.cu` with NVRTC, with a PTX cache on disk.
//!
//! The sources are embedded in the binary ([`KERNELS`]); [`compile`] turns one into PTX for a
//! GPU architecture (`"sm_90"`, …) and caches the PTX under
//! `$FERROTRON_KERNEL_CACHE` (default `~/.cache/ferrotron/kernels`) as
//! `<name>-<arch>-<hash of source, options and NVRTC version>.ptx`. Compiler warnings are
//! errors. NVRTC itself is loaded dynamically: a machine without `libnvrtc.so` gets the error
//! "NVRTC library not found" (see `scripts/install-nvrtc.sh`), never a panic.

use anyhow::{bail, Context, Result};
use cudarc::nvrtc::{result as nvrtc_result, sys as nvrtc_sys, Ptx};
use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};

/// One kernel file: its name (the file stem) and its CUDA C++ source.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    pub name: &'static str,
    pub src: &'static str,
}

macro_rules! kernel {
    ($name:literal) => {
        KernelSource {
            name: $name,
            src: include_str!(concat!("../../../kernels/", $name, ".cu")),
        }
    };
}

/// Every kernel file, compiled as one NVRTC program each.
pub const KERNELS: &[KernelSource] = &[
    kernel!("embedding"),
    kernel!("layernorm"),
    kernel!("gelu"),
    kernel!("attention"),
    kernel!("crossentropy"),
    kernel!("adamw"),
    kernel!("reduce"),
    kernel!("cast"),
    kernel!("flash_attention"),
    kernel!("flash_attention_tc"),
    kernel!("vocab_parallel"),
    kernel!("decode"),
];

/// Every kernel function, by file (the file stem of `kernels/<file>.cu`).
#[rustfmt::skip]
pub const FUNCTIONS: &[(&str, &[&str])] = &[
    ("embedding", &["embedding_forward", "embedding_backward_wpe", "embedding_backward_wte"]),
    ("layernorm", &["layernorm_forward", "layernorm_backward"]),
    ("gelu", &["gelu_forward", "gelu_backward"]),
    ("attention", &["attn_split_qkv", "attn_merge_heads", "attn_split_heads", "attn_merge_dqkv",
                    "causal_softmax_forward", "causal_softmax_backward"]),
    ("crossentropy", &["softmax_xent"]),
    ("adamw", &["adamw", "adamw_multi"]),
    ("reduce", &["sum_squares_partial", "sum_squares_final", "scale", "add_inplace",
                 "bias_grad_partial", "column_reduce"]),
    ("cast", &["f32_to_bf16", "bf16_to_f32"]),
    ("vocab_parallel", &["vp_embedding_forward", "vp_xent_partial", "vp_xent_grad"]),
    ("decode", &["attn_kv_append", "attn_cached"]),
    ("flash_attention", &["flash_attn_forward", "flash_attn_backward_dot",
                          "flash_attn_backward_dq", "flash_attn_backward_dkv"]),
    // bf16 WMMA: sm_80 and newer only (not loaded on older GPUs; see `flash::supports_tc`).
    ("flash_attention_tc", &["flash_tc_forward", "flash_tc_backward_dq", "flash_tc_backward_dkv"]),
];

/// Errors unless NVRTC's shared library can be loaded (checked before any NVRTC call, because
/// cudarc panics when the library is missing).
pub fn ensure_nvrtc() -> Result<()> {
    // SAFETY: only tries to load the shared library.
    if unsafe { nvrtc_sys::is_culib_present() } {
        Ok(())
    } else {
        bail!(
            "NVRTC library not found (libnvrtc.so is not on the library path; \
             run scripts/install-nvrtc.sh and add its lib dir to LD_LIBRARY_PATH)"
        )
    }
}

/// NVRTC's version (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    ensure_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; the call writes two ints.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| anyhow::anyhow!("nvrtcVersion failed: {e:?}"))?;
    Ok((major, minor))
}

/// The CUDA version of the installed driver (`cuDriverGetVersion`: 1000·major + 10·minor) as
/// (major, minor).
pub fn driver_version() -> Result<(i32, i32)> {
    let mut v = 0;
    // SAFETY: the caller has loaded libcuda (a context exists); the call writes one int.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(|e| anyhow::anyhow!("cuDriverGetVersion failed: {e:?}"))?;
    Ok((v / 1000, (v % 1000) / 10))
}

/// Why the driver may refuse our PTX, if it may: the driver compiles PTX at load time and
/// takes only PTX of its own CUDA release or older, while NVRTC writes the PTX version of its
/// release. None when NVRTC is not newer than the driver.
pub fn ptx_mismatch(nvrtc: (i32, i32), driver: (i32, i32)) -> Option<String> {
    (nvrtc > driver).then(|| {
        format!(
            "NVRTC {}.{} writes PTX newer than this driver (CUDA {}.{}) can load; put the \
             libnvrtc of CUDA {}.{} or older first on LD_LIBRARY_PATH, or update the driver",
            nvrtc.0, nvrtc.1, driver.0, driver.1, driver.0, driver.1
        )
    })
}

/// Compiles kernel file `file` (through the cache) for `arch` and loads its functions `names`
/// into `ctx`; `mismatch` explains a load the driver refuses ([`ptx_mismatch`]).
pub fn load_file(
    ctx: &std::sync::Arc<cudarc::driver::CudaContext>,
    file: &str,
    names: &[&'static str],
    arch: &str,
    include: &[PathBuf],
    mismatch: Option<&str>,
) -> Result<Vec<(&'static str, cudarc::driver::CudaFunction)>> {
    let src = KERNELS
        .iter()
        .find(|k| k.name == file)
        .with_context(|| format!("kernel file {file}.cu not embedded"))?;
    let ptx = compile(src, arch, include)?;
    let module = ctx.load_module(ptx).with_context(|| {
        let why = mismatch.unwrap_or("the driver rejected it");
        format!("loading the PTX of {file}.cu ({why})")
    })?;
    let f = |name: &'static str| {
        let f = module.load_function(name);
        Ok((
            name,
            f.with_context(|| format!("kernel {name} in {file}.cu"))?,
        ))
    };
    names.iter().map(|&name| f(name)).collect()
}

/// Logs NVRTC's and the driver's CUDA versions before compiling for `arch`, warning when the
/// driver may refuse the PTX; returns that warning ([`ptx_mismatch`]).
pub fn log_versions(arch: &str, include: &Path) -> Result<Option<String>> {
    let (nv, drv) = (nvrtc_version()?, driver_version()?);
    log::info!(
        "NVRTC {}.{} (driver CUDA {}.{}): compiling kernels for {arch}, CUDA headers from {}",
        nv.0,
        nv.1,
        drv.0,
        drv.1,
        include.display()
    );
    let mismatch = ptx_mismatch(nv, drv);
    if let Some(m) = &mismatch {
        log::warn!("{m}");
    }
    Ok(mismatch)
}

/// Directories searched for `cuda_bf16.h`, in order: `$FERROTRON_CUDA_INCLUDE` (a
/// `:`-separated list; when set, nothing else is searched), `$CUDA_HOME/include`,
/// `$CUDA_PATH/include`, `/usr/local/cuda/include`, then the pip wheel layouts
/// `<root>/nvidia/{cu13,cu12,…}/include` under the repository's `.cache/nvrtc` (made by
/// `scripts/install-nvrtc.sh`), `$VIRTUAL_ENV`, `/opt/torch/.venv` and the system Python
/// package directories.
pub fn include_candidates() -> Vec<PathBuf> {
    if let Some(v) = std::env::var_os("FERROTRON_CUDA_INCLUDE").filter(|v| !v.is_empty()) {
        return std::env::split_paths(&v).collect();
    }
    let mut out = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            out.push(PathBuf::from(v).join("include"));
        }
    }
    out.push(PathBuf::from("/usr/local/cuda/include"));
    let mut roots = vec![
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/nvrtc"),
        PathBuf::from(".cache/nvrtc"),
    ];
    let mut lib_dirs = vec![
        PathBuf::from("/opt/torch/.venv/lib"),
        PathBuf::from("/usr/local/lib"),
        PathBuf::from("/usr/lib"),
    ];
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        lib_dirs.insert(0, PathBuf::from(v).join("lib"));
    }
    for lib in lib_dirs {
        for py in sorted_subdirs(&lib, |n| n.starts_with("python3")) {
            roots.push(py.join("site-packages"));
            roots.push(py.join("dist-packages"));
        }
    }
    for root in roots {
        // Newest CUDA first: cu13 before cu12, then the CUDA 12 per-package layout.
        let mut dirs = sorted_subdirs(&root.join("nvidia"), |_| true);
        dirs.sort_by_key(|d| {
            let n = d
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_owned();
            let is_cu = n.starts_with("cu") && n[2..].chars().all(|c| c.is_ascii_digit());
            (!is_cu, std::cmp::Reverse(n))
        });
        out.extend(dirs.into_iter().map(|d| d.join("include")));
    }
    out
}

/// Subdirectories of `dir` whose names pass `keep`, sorted by name (empty if unreadable).
fn sorted_subdirs(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter(|e| e.file_name().to_str().is_some_and(&keep))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// The first directory holding `crt/mma.h` (what `mma.h` includes for the tensor-core kernels'
/// WMMA; pip ships it apart from `cuda_bf16.h`, in nvidia-cuda-crt), if any.
pub fn find_mma_include() -> Option<PathBuf> {
    include_candidates()
        .into_iter()
        .find(|d| d.join("crt/mma.h").is_file())
}

/// The first include directory holding `cuda_bf16.h` (see [`include_candidates`]).
pub fn find_cuda_include() -> Result<PathBuf> {
    let cands = include_candidates();
    cands
        .iter()
        .find(|d| d.join("cuda_bf16.h").is_file())
        .cloned()
        .with_context(|| {
            format!(
                "cuda_bf16.h not found (needed by NVRTC); set FERROTRON_CUDA_INCLUDE or \
                 CUDA_HOME, or run scripts/install-nvrtc.sh. Searched: {cands:?}"
            )
        })
}

/// NVRTC options for `arch` (e.g. `"sm_90"`): C++17, no fast math, the include dirs.
fn options(arch: &str, include_dirs: &[PathBuf]) -> Vec<String> {
    let mut o = vec![
        "-std=c++17".to_owned(),
        format!("--gpu-architecture={arch}"),
    ];
    o.extend(
        include_dirs
            .iter()
            .map(|d| format!("--include-path={}", d.display())),
    );
    o
}

/// Compiles one kernel file to PTX text, without the cache. Fails on compile errors and on
/// any warning in NVRTC's log (the log is in the error message).
pub fn compile_uncached(
    src: &KernelSource,
    arch: &str,
    include_dirs: &[PathBuf],
) -> Result<String> {
    compile_logged(src, arch, include_dirs, &[]).map(|(ptx, _)| ptx)
}

/// [`compile_uncached`] with ptxas's report (`--ptxas-options=-v`): the PTX and the registers
/// per thread of each kernel (kernel name, registers).
pub fn compile_with_registers(
    src: &KernelSource,
    arch: &str,
    include_dirs: &[PathBuf],
) -> Result<(String, Vec<(String, u32)>)> {
    let (ptx, log) = compile_logged(src, arch, include_dirs, &["--ptxas-options=-v"])?;
    Ok((ptx, parse_registers(&log)))
}

/// (kernel, registers) pairs of a ptxas `-v` log: "Compiling entry function 'k' for 'sm_90'"
/// followed by "Used N registers, …".
fn parse_registers(log: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut name = None;
    for line in log.lines() {
        if let Some(rest) = line.split("entry function '").nth(1) {
            name = rest.split('\'').next().map(str::to_owned);
        } else if let Some(rest) = line.split("Used ").nth(1) {
            let regs = rest.split(' ').next().and_then(|n| n.parse().ok());
            if let (Some(k), Some(r)) = (name.take(), regs) {
                out.push((k, r));
            }
        }
    }
    out
}

/// [`compile_uncached`] with `extra` options; returns the PTX and NVRTC's log.
fn compile_logged(
    src: &KernelSource,
    arch: &str,
    include_dirs: &[PathBuf],
    extra: &[&str],
) -> Result<(String, String)> {
    ensure_nvrtc()?;
    let mut opts = options(arch, include_dirs);
    opts.extend(extra.iter().map(|o| o.to_string()));
    let code = CString::new(src.src).with_context(|| format!("{}.cu contains a NUL", src.name))?;
    let name = CString::new(format!("{}.cu", src.name)).context("kernel name")?;
    let prog = nvrtc_result::create_program(&code, Some(&name))
        .map_err(|e| anyhow::anyhow!("nvrtcCreateProgram({}.cu): {e:?}", src.name))?;
    // SAFETY: `prog` is a valid program until destroyed below; the log and PTX buffers are
    // NUL-terminated by NVRTC.
    let (compiled, log, ptx) = unsafe {
        let compiled = nvrtc_result::compile_program(prog, &opts);
        let log = nvrtc_result::get_program_log(prog)
            .map(|l| c_chars_to_string(&l))
            .unwrap_or_default();
        let ptx = match compiled {
            Ok(()) => Some(nvrtc_result::get_ptx(prog).map(|p| c_chars_to_string(&p))),
            Err(_) => None,
        };
        let _ = nvrtc_result::destroy_program(prog);
        (compiled, log, ptx)
    };
    let log = log.trim();
    if let Err(e) = compiled {
        bail!(
            "NVRTC failed to compile {}.cu for {arch} ({e:?}), options {opts:?}:\n{log}",
            src.name
        );
    }
    // ptxas's `-v` report is information, not a warning ("ptxas info    : …").
    let warns = log.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("warning") && !l.starts_with("ptxas info")
    });
    if warns {
        bail!(
            "NVRTC warnings (treated as errors) compiling {}.cu for {arch}:\n{log}",
            src.name
        );
    }
    let ptx = ptx
        .context("no PTX")?
        .map_err(|e| anyhow::anyhow!("nvrtcGetPTX({}.cu): {e:?}", src.name))?;
    Ok((ptx, log.to_owned()))
}

fn c_chars_to_string(buf: &[c_char]) -> String {
    // SAFETY: c_char and u8 have the same size and alignment.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len()) };
    match CStr::from_bytes_until_nul(bytes) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The PTX cache directory: `$FERROTRON_KERNEL_CACHE`, else `$XDG_CACHE_HOME/ferrotron/kernels`,
/// else `~/.cache/ferrotron/kernels` (None if no home is known).
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = var("FERROTRON_KERNEL_CACHE") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("ferrotron/kernels"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".cache/ferrotron/kernels"))
}

/// 64-bit FNV-1a (stable across builds, unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(&[0xffu8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Compiles `src` for `arch` (e.g. `"sm_90"`), reusing the cached PTX when the source, the
/// options and the NVRTC version are unchanged. Cache read/write problems only log a warning.
pub fn compile(src: &KernelSource, arch: &str, include_dirs: &[PathBuf]) -> Result<Ptx> {
    ensure_nvrtc()?;
    let (major, minor) = nvrtc_version()?;
    let opts = options(arch, include_dirs).join(" ");
    let version = format!("nvrtc {major}.{minor}");
    let key = fnv1a(&[src.src.as_bytes(), opts.as_bytes(), version.as_bytes()]);
    let path = cache_dir().map(|d| d.join(format!("{}-{arch}-{key:016x}.ptx", src.name)));
    if let Some(p) = &path {
        if let Ok(text) = std::fs::read_to_string(p) {
            if text.contains(".entry") {
                log::debug!("kernel {}: cached PTX {}", src.name, p.display());
                return Ok(Ptx::from_src(text));
            }
        }
    }
    let text = compile_uncached(src, arch, include_dirs)?;
    if let Some(p) = &path {
        if let Err(e) = write_atomically(p, &text) {
            log::warn!("could not cache PTX at {}: {e:#}", p.display());
        }
    }
    Ok(Ptx::from_src(text))
}

/// Writes `text` to a temporary file beside `path`, then renames it into place.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension(format!("ptx.tmp{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_file_is_listed() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("kernels dir")
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter_map(|n| n.strip_suffix(".cu").map(str::to_owned))
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = KERNELS.iter().map(|k| k.name.to_owned()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
    }

    #[test]
    fn ptx_newer_than_the_driver_is_named() {
        assert_eq!(ptx_mismatch((12, 8), (12, 8)), None);
        assert_eq!(ptx_mismatch((12, 4), (13, 0)), None);
        let m = ptx_mismatch((13, 2), (12, 8)).unwrap();
        assert!(
            m.contains("NVRTC 13.2") && m.contains("CUDA 12.8 or older"),
            "{m}"
        );
        assert!(ptx_mismatch((12, 9), (12, 8)).is_some());
    }

    #[test]
    fn ptxas_register_report_is_parsed() {
        let log = "ptxas info    : 0 bytes gmem\n\
                   ptxas info    : Compiling entry function 'a_k' for 'sm_90'\n\
                   ptxas info    : Function properties for a_k\n\
                   ptxas info    : Used 127 registers, used 1 barriers, 33024 bytes smem\n\
                   ptxas info    : Compiling entry function 'b' for 'sm_90'\n\
                   ptxas info    : Used 8 registers\n";
        assert_eq!(
            parse_registers(log),
            vec![("a_k".to_owned(), 127), ("b".to_owned(), 8)]
        );
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(fnv1a(&[b"a"]), fnv1a(&[b"a"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }
}
