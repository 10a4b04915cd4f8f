//! Dense matrix products on the GPU through cuBLASLt: the CUDA twin of
//! [`crate::backend::cpu::matmul::matmul`].
//!
//! # Row-major views on a column-major library
//!
//! Every matrix here is *row-major*, described by a [`GMat`]: a device buffer holding a
//! row-major `[srows, scols]` block whose rows are `rs` elements apart (`rs ≥ scols`, so a
//! column slice of a wider matrix, e.g. one head of a `[T, 3C]` QKV row, is a plain view),
//! optionally read transposed. cuBLASLt is column-major. The same bytes that hold a row-major
//! `[r, c]` matrix `X` with row stride `rs` are, read column-major, the `[c, r]` matrix `Xᵀ`
//! with leading dimension `ld = rs`. So the row-major product
//!
//! ```text
//! C[m, n] = A[m, k] · B[k, n]         (row-major, what callers mean)
//! ```
//!
//! is issued as the column-major product
//!
//! ```text
//! Cᵀ[n, m] = Bᵀ[n, k] · Aᵀ[k, m]      (column-major, what cuBLASLt computes)
//! ```
//!
//! i.e. the operands are swapped (cuBLASLt's "A" is our `b`, its "B" is our `a`), its
//! `(m, n, k)` is our `(n, m, k)`, `ldc = dst_rs`, and every operand's layout is
//! `[scols, srows]` with `ld = rs`. An operand that is a transposed view (`GMat::t`) just sets
//! `TRANSA`/`TRANSB` on its cuBLASLt side. Nothing is copied.
//!
//! # What cudarc 0.19 offers and why this module talks to `cublaslt::result` directly
//!
//! cudarc's safe `Matmul<T>` trait takes one element type for A, B and C and hard-codes the
//! compute type (`CUBLAS_COMPUTE_32F_FAST_TF32` for f32, i.e. TF32 always on;
//! `CUBLAS_COMPUTE_32F` for f16/bf16), its `CudaBlasLT::new` panics if the workspace cannot be
//! allocated, and its heuristic query assumes 256-byte aligned pointers (which strided views
//! break). This module builds the descriptors itself from `cudarc::cublaslt::result`, which
//! allows: f32 with exact fp32 compute or opt-in TF32; bf16/f16 inputs with f32 *or* bf16/f16
//! output (fp32 accumulation); the bias and GELU epilogues; strided batches; and true pointer
//! alignments passed to the heuristic.
//!
//! # GELU epilogues
//!
//! [`GeluAux`] fuses the MLP's activation into its GEMMs (as llm.c does on Hopper): the
//! forward `CUBLASLT_EPILOGUE_GELU_AUX(_BIAS)` writes `pre = a·b (+ bias)` to the auxiliary
//! buffer and `dst = gelu(pre)`; the backward `CUBLASLT_EPILOGUE_DGELU` reads `pre` and writes
//! `dst = (a·b) ⊙ gelu'(pre)`. cuBLASLt's GELU is the tanh approximation (GPT-2's `gelu_new`).
//! The auxiliary matrix has dst's logical shape `[m, n]`, rows `n` apart (cuBLASLt: `[n, m]`,
//! `ld = n`), and dst's element type.

use std::ffi::c_void;
use std::mem::size_of;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use cudarc::cublaslt::{result, sys};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};

/// Element types cuBLASLt reads and writes here. Allowed combinations (inputs → output):
/// f32 → f32, bf16 → bf16 | f32, f16 → f16 | f32; always with fp32 accumulation and f32
/// scale factors.
pub trait GemmScalar: DeviceRepr {
    /// cuBLASLt's name for the type.
    const DTYPE: sys::cudaDataType;
    /// For error messages.
    const NAME: &'static str;
}

impl GemmScalar for f32 {
    const DTYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_32F;
    const NAME: &'static str = "f32";
}
impl GemmScalar for half::bf16 {
    const DTYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_16BF;
    const NAME: &'static str = "bf16";
}
impl GemmScalar for half::f16 {
    const DTYPE: sys::cudaDataType = sys::cudaDataType::CUDA_R_16F;
    const NAME: &'static str = "f16";
}

/// A read-only row-major matrix view on the device.
///
/// Logical element `(i, j)`, `i < rows`, `j < cols`, is `buf[i * rs + j]` when
/// `transposed == false` and `buf[j * rs + i]` when `transposed == true` (the buffer then holds
/// the `[cols, rows]` transpose row-major). `rs` is the stored row stride and must be at least
/// the stored row length. The buffer is any cudarc device slice or view.
pub struct GMat<'a, T> {
    pub buf: &'a dyn DevicePtr<T>,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub transposed: bool,
}

// Manual impls: a derive would require `T: Copy`.
impl<T> Clone for GMat<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for GMat<'_, T> {}

impl<'a, T> GMat<'a, T> {
    /// A contiguous row-major `[rows, cols]` matrix.
    pub fn new(buf: &'a dyn DevicePtr<T>, rows: usize, cols: usize) -> Self {
        Self::strided(buf, rows, cols, cols)
    }
    /// A row-major `[rows, cols]` matrix whose rows are `rs` elements apart.
    pub fn strided(buf: &'a dyn DevicePtr<T>, rows: usize, cols: usize, rs: usize) -> Self {
        Self {
            buf,
            rows,
            cols,
            rs,
            transposed: false,
        }
    }
    /// The transpose, free (same buffer, read the other way).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            transposed: !self.transposed,
            ..self
        }
    }
    /// Shape of the stored (untransposed) row-major block: `(srows, scols)`.
    fn stored(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
    /// Elements spanned by one matrix, from its first to one past its last element.
    fn span(&self) -> usize {
        let (sr, sc) = self.stored();
        if sr == 0 || sc == 0 {
            0
        } else {
            (sr - 1) * self.rs + sc
        }
    }
    fn check(&self, what: &str, count: usize, stride: usize) -> Result<()> {
        let (sr, sc) = self.stored();
        ensure!(
            sr == 0 || sc == 0 || self.rs >= sc,
            "{what}: row stride {} is smaller than the stored row length {sc}",
            self.rs
        );
        let need = needed(self.span(), count, stride);
        ensure!(
            need <= self.buf.len(),
            "{what}: a {}x{} view (rs {}, transposed {}, batch {count} x stride {stride}) needs \
             {need} elements but the buffer has {}",
            self.rows,
            self.cols,
            self.rs,
            self.transposed,
            self.buf.len()
        );
        Ok(())
    }
}

/// Elements a batch of `count` matrices of `span` elements, `stride` apart, reaches.
fn needed(span: usize, count: usize, stride: usize) -> usize {
    if span == 0 || count == 0 {
        0
    } else {
        (count - 1) * stride + span
    }
}

/// A strided batch: matrix `i` of each operand starts `i * stride_*` elements after the first.
/// A stride of 0 broadcasts that operand (e.g. one weight for every batch element).
#[derive(Clone, Copy, Debug, Default)]
pub struct Batch {
    pub count: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

/// Options of [`Gemm::matmul`].
pub struct Opts<'a, C> {
    /// `true`: `dst += a·b`; `false`: `dst = a·b` (dst is not read).
    pub accumulate: bool,
    /// Strided batch; `None` is a single product.
    pub batch: Option<Batch>,
    /// Bias epilogue: `dst[i, j] (+)= … + bias[j]` (length n, broadcast over rows and batch
    /// elements, same element type as dst).
    pub bias: Option<&'a dyn DevicePtr<C>>,
    /// GELU epilogue (single, non-accumulating products only; see the module docs).
    pub gelu: Option<GeluAux<'a, C>>,
}

impl<C> Default for Opts<'_, C> {
    fn default() -> Self {
        Self {
            accumulate: false,
            batch: None,
            bias: None,
            gelu: None,
        }
    }
}

/// The auxiliary matrix of a GELU epilogue: `[m, n]` row-major, rows `n` apart, dst's type.
pub enum GeluAux<'a, C> {
    /// `pre ← a·b (+ bias)` is written here and `dst = gelu(pre)`.
    Forward(&'a mut dyn DevicePtrMut<C>),
    /// `pre` is read from here and `dst = (a·b) ⊙ gelu'(pre)` (no bias).
    Backward(&'a dyn DevicePtr<C>),
}

impl<C> GeluAux<'_, C> {
    fn len(&self) -> usize {
        match self {
            Self::Forward(p) => p.len(),
            Self::Backward(p) => p.len(),
        }
    }
}

/// cuBLASLt handle, its workspace and the stream every product is issued on.
pub struct Gemm {
    handle: LtHandle,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    tf32: bool,
}

// SAFETY: the cuBLASLt handle may be used from any thread; every launch goes to `self.stream`,
// so uses of the workspace are ordered by that stream.
unsafe impl Send for Gemm {}
unsafe impl Sync for Gemm {}

struct LtHandle(sys::cublasLtHandle_t);

impl Drop for LtHandle {
    fn drop(&mut self) {
        // SAFETY: created by `create_handle` and destroyed once, here.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

/// Whether libcublasLt can be loaded (cudarc panics on first use when it cannot).
pub fn cublaslt_present() -> bool {
    // SAFETY: only probes whether the shared library can be loaded.
    unsafe { sys::is_culib_present() }
}

impl Gemm {
    /// A cuBLASLt handle for `stream`, with a workspace of 32 MiB on Hopper and newer, 4 MiB
    /// otherwise (NVIDIA's recommendation). TF32 is off.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        if !cublaslt_present() {
            bail!("cuBLASLt library not found (libcublasLt.so could not be loaded)");
        }
        stream
            .context()
            .bind_to_thread()
            .context("binding the CUDA context for cuBLASLt")?;
        let handle = LtHandle(result::create_handle().context("cublasLtCreate")?);
        let major = stream
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .context("reading the compute capability")?;
        let size = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let workspace = stream
            .alloc_zeros::<u8>(size)
            .context("allocating the cuBLASLt workspace")?;
        Ok(Self {
            handle,
            workspace,
            stream,
            tf32: false,
        })
    }

    /// The stream products are issued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Use TF32 tensor cores for f32 inputs (`CUBLAS_COMPUTE_32F_FAST_TF32`: 10-bit mantissa
    /// products, fp32 accumulation). Off by default: f32 products are then exact fp32
    /// (`CUBLAS_COMPUTE_32F`). No effect on bf16/f16 inputs.
    pub fn set_tf32(&mut self, on: bool) {
        self.tf32 = on;
    }

    /// `dst[m, n] (+)= a[m, k] · b[k, n]` in f32 (row-major, `dst` rows `dst_rs` apart).
    pub fn matmul_f32(
        &self,
        dst: &mut impl DevicePtrMut<f32>,
        dst_rs: usize,
        a: GMat<'_, f32>,
        b: GMat<'_, f32>,
        accumulate: bool,
    ) -> Result<()> {
        let opts = Opts {
            accumulate,
            ..Opts::default()
        };
        self.matmul(dst, dst_rs, a, b, opts)
    }

    /// Strided batch in f32: for `i < batch.count`,
    /// `dst_i (+)= a_i · b_i` with `a_i` starting at `i * stride_a` in `a.buf` (likewise b,
    /// dst). E.g. attention scores `S[bh] = Q[bh] · K[bh]ᵀ` for Q, K `[B·NH, T, hd]`
    /// contiguous: `a = GMat::new(q, T, hd)`, `b = GMat::new(k, T, hd).t()`,
    /// strides `T·hd, T·hd, T·T`, `dst_rs = T`.
    pub fn matmul_batched_f32(
        &self,
        dst: &mut impl DevicePtrMut<f32>,
        dst_rs: usize,
        a: GMat<'_, f32>,
        b: GMat<'_, f32>,
        accumulate: bool,
        batch: Batch,
    ) -> Result<()> {
        let opts = Opts {
            accumulate,
            batch: Some(batch),
            ..Opts::default()
        };
        self.matmul(dst, dst_rs, a, b, opts)
    }

    /// The general product `dst[m, n] (+)= a[m, k] · b[k, n] (+ bias[n])`, optionally over a
    /// strided batch, inputs of type `A`, output of type `C` (see [`GemmScalar`] for the
    /// allowed pairs), fp32 accumulation. Row-major, `dst` rows `dst_rs` apart.
    /// With `accumulate` and a bias, `dst = dst + a·b + bias`.
    pub fn matmul<A: GemmScalar, C: GemmScalar>(
        &self,
        dst: &mut impl DevicePtrMut<C>,
        dst_rs: usize,
        a: GMat<'_, A>,
        b: GMat<'_, A>,
        mut opts: Opts<'_, C>,
    ) -> Result<()> {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let count = opts.batch.map(|bt| bt.count);
        let shape = || {
            format!(
                "gemm {}x{}x{} ({}→{}, a{} b{}, batch {:?})",
                m,
                k,
                n,
                A::NAME,
                C::NAME,
                if a.transposed { "ᵀ" } else { "" },
                if b.transposed { "ᵀ" } else { "" },
                count
            )
        };
        ensure!(
            b.rows == k,
            "{}: inner dimensions differ (a is {m}x{k}, b is {}x{n})",
            shape(),
            b.rows
        );
        let input_is_f32 = A::DTYPE == sys::cudaDataType::CUDA_R_32F;
        ensure!(
            C::DTYPE == A::DTYPE || C::DTYPE == sys::cudaDataType::CUDA_R_32F,
            "{}: unsupported type pair (inputs {} must give {} or f32)",
            shape(),
            A::NAME,
            A::NAME
        );
        let batch = opts.batch.unwrap_or(Batch {
            count: 1,
            ..Batch::default()
        });
        if batch.count == 0 || m == 0 || n == 0 {
            return Ok(());
        }
        a.check("gemm lhs", batch.count, batch.stride_a)
            .with_context(shape)?;
        b.check("gemm rhs", batch.count, batch.stride_b)
            .with_context(shape)?;
        ensure!(
            dst_rs >= n,
            "{}: dst row stride {dst_rs} < n = {n}",
            shape()
        );
        let dst_need = needed((m - 1) * dst_rs + n, batch.count, batch.stride_c);
        ensure!(
            dst_need <= dst.len(),
            "{}: dst needs {dst_need} elements, has {}",
            shape(),
            dst.len()
        );
        if let Some(bias) = opts.bias {
            ensure!(
                bias.len() >= n,
                "{}: bias has {} elements, needs {n}",
                shape(),
                bias.len()
            );
        }
        if let Some(g) = &opts.gelu {
            Self::check_gelu(g, m, n, &opts).with_context(shape)?;
        }
        if k == 0 {
            ensure!(
                opts.gelu.is_none(),
                "{}: a GELU epilogue with k = 0",
                shape()
            );
            return self
                .zero_or_bias(dst, dst_rs, m, n, batch, &opts)
                .with_context(shape);
        }
        let compute = if input_is_f32 && self.tf32 {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        // SAFETY: every view was checked to lie inside its buffer above; dst is uniquely
        // borrowed; the guards returned by device_ptr live until the launch is queued.
        unsafe { self.launch(dst, dst_rs, a, b, &mut opts, batch, compute) }.with_context(shape)
    }

    /// What the GELU epilogues take here: one product that overwrites dst, an auxiliary
    /// matrix of `m·n` elements, no bias in the backward.
    fn check_gelu<C>(g: &GeluAux<'_, C>, m: usize, n: usize, opts: &Opts<'_, C>) -> Result<()> {
        ensure!(
            !opts.accumulate && opts.batch.is_none_or(|b| b.count <= 1),
            "GELU epilogues take single products that overwrite dst"
        );
        ensure!(
            g.len() >= m * n,
            "GELU auxiliary matrix has {} elements, needs {}",
            g.len(),
            m * n
        );
        if let GeluAux::Backward(_) = g {
            ensure!(opts.bias.is_none(), "the DGELU epilogue takes no bias");
        }
        Ok(())
    }

    /// k = 0: the product is zero, so dst becomes 0 (+ bias) or stays (+ bias).
    fn zero_or_bias<C: GemmScalar>(
        &self,
        dst: &mut impl DevicePtrMut<C>,
        dst_rs: usize,
        m: usize,
        n: usize,
        batch: Batch,
        opts: &Opts<'_, C>,
    ) -> Result<()> {
        ensure!(opts.bias.is_none(), "a bias with k = 0 is not supported");
        if opts.accumulate {
            return Ok(());
        }
        let (ptr, _guard) = dst.device_ptr_mut(&self.stream);
        let es = size_of::<C>();
        for i in 0..batch.count {
            let base = ptr + (i * batch.stride_c * es) as u64;
            // SAFETY: rows i*stride_c + r*dst_rs .. +n lie inside dst (checked by the caller).
            unsafe {
                cudarc::driver::sys::cuMemsetD2D8Async(
                    base,
                    dst_rs * es,
                    0,
                    n * es,
                    m,
                    self.stream.cu_stream(),
                )
                .result()
                .context("cuMemsetD2D8Async")?;
            }
        }
        Ok(())
    }

    /// Builds the descriptors and queues `cublasLtMatmul`.
    ///
    /// # Safety
    /// The views and dst must have been checked against their buffers.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch<A: GemmScalar, C: GemmScalar>(
        &self,
        dst: &mut impl DevicePtrMut<C>,
        dst_rs: usize,
        a: GMat<'_, A>,
        b: GMat<'_, A>,
        opts: &mut Opts<'_, C>,
        batch: Batch,
        compute: sys::cublasComputeType_t,
    ) -> Result<()> {
        let m = a.rows;
        let n = b.cols;
        // cuBLASLt operand "A" is our b, "B" is our a (see the module docs).
        let lay_a = Layout::for_view::<A>(&b, batch.count, batch.stride_b)?;
        let lay_b = Layout::for_view::<A>(&a, batch.count, batch.stride_a)?;
        let lay_c = Layout::new(C::DTYPE, n, m, dst_rs)?;
        if batch.count > 1 {
            lay_c.set_batch(batch.count, batch.stride_c)?;
        }

        let desc = Desc::new(compute)?;
        desc.set_u32(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            b.transposed as u32,
        )?;
        desc.set_u32(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
            a.transposed as u32,
        )?;

        let stream = &self.stream;
        let (pa, _ga) = a.buf.device_ptr(stream);
        let (pb, _gb) = b.buf.device_ptr(stream);
        let bias = opts.bias.map(|x| x.device_ptr(stream));
        let (pc, _gc) = dst.device_ptr_mut(stream);
        let (pw, _gw) = self.workspace.device_ptr(stream);

        use sys::cublasLtEpilogue_t as E;
        use sys::cublasLtMatmulDescAttributes_t as D;
        if let Some((pbias, _)) = &bias {
            desc.set(D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, pbias)?;
        }
        let (aux, epilogue) = match opts.gelu.as_mut() {
            None => (None, bias.is_some().then_some(E::CUBLASLT_EPILOGUE_BIAS)),
            Some(GeluAux::Forward(pre)) => (
                Some(pre.device_ptr_mut(stream)),
                Some(if bias.is_some() {
                    E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                } else {
                    E::CUBLASLT_EPILOGUE_GELU_AUX
                }),
            ),
            Some(GeluAux::Backward(pre)) => (
                Some(pre.device_ptr(stream)),
                Some(E::CUBLASLT_EPILOGUE_DGELU),
            ),
        };
        if let Some((paux, _)) = &aux {
            desc.set(D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, paux)?;
            desc.set(D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &(n as i64))?;
        }
        if let Some(e) = epilogue {
            desc.set(D::CUBLASLT_MATMUL_DESC_EPILOGUE, &e)?;
        }

        let pref = Pref::new()?;
        pref.set(
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &self.workspace.len(),
        )?;
        // What the heuristic may assume about each operand's address, leading dimension and
        // batch stride (the default assumption, 256 bytes, breaks strided views).
        let (sa, sb, sc) = if batch.count > 1 {
            (batch.stride_a, batch.stride_b, batch.stride_c)
        } else {
            (0, 0, 0)
        };
        let (ea, ec) = (size_of::<A>() as u64, size_of::<C>() as u64);
        let al_a = alignment(pb | (b.rs as u64 * ea) | (sb as u64 * ea));
        let al_b = alignment(pa | (a.rs as u64 * ea) | (sa as u64 * ea));
        let al_c = alignment(pc | (dst_rs as u64 * ec) | (sc as u64 * ec));
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        for (attr, al) in [
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_a),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_b),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_c),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_c),
        ] {
            pref.set(attr, &al)?;
        }

        let heuristic = result::get_matmul_algo_heuristic(
            self.handle.0,
            desc.0,
            lay_a.0,
            lay_b.0,
            lay_c.0,
            lay_c.0,
            pref.0,
        )
        .context("no cuBLASLt algorithm for this product (cublasLtMatmulAlgoGetHeuristic)")?;

        let alpha = 1.0f32;
        let beta = if opts.accumulate { 1.0f32 } else { 0.0 };
        result::matmul(
            self.handle.0,
            desc.0,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            pb as *const c_void,
            lay_a.0,
            pa as *const c_void,
            lay_b.0,
            pc as *const c_void,
            lay_c.0,
            pc as *mut c_void,
            lay_c.0,
            &heuristic.algo,
            pw as *mut c_void,
            self.workspace.len(),
            stream.cu_stream() as sys::cudaStream_t,
        )
        .context("cublasLtMatmul")?;
        Ok(())
    }
}

/// Largest power of two (≤ 256) dividing `x` (an address OR-ed with byte strides), in bytes.
fn alignment(ptr: u64) -> u32 {
    if ptr == 0 {
        256
    } else {
        1u32 << ptr.trailing_zeros().min(8)
    }
}

/// RAII cuBLASLt matrix layout (column-major `rows × cols`, leading dimension `ld`).
struct Layout(sys::cublasLtMatrixLayout_t);

impl Layout {
    fn new(dtype: sys::cudaDataType, rows: usize, cols: usize, ld: usize) -> Result<Self> {
        let h = result::create_matrix_layout(dtype, rows as u64, cols as u64, ld as i64)
            .context("cublasLtMatrixLayoutCreate")?;
        Ok(Self(h))
    }
    /// The column-major layout of a row-major view: its stored `[srows, scols]` block with row
    /// stride `rs` is column-major `[scols, srows]` with `ld = rs`.
    fn for_view<T: GemmScalar>(v: &GMat<'_, T>, count: usize, stride: usize) -> Result<Self> {
        let (sr, sc) = v.stored();
        let l = Self::new(T::DTYPE, sc, sr, v.rs)?;
        if count > 1 {
            l.set_batch(count, stride)?;
        }
        Ok(l)
    }
    fn set_batch(&self, count: usize, stride: usize) -> Result<()> {
        let count = i32::try_from(count).context("batch count exceeds i32")?;
        let stride = stride as i64;
        use sys::cublasLtMatrixLayoutAttribute_t as L;
        // SAFETY: the handle is live; the buffers are the documented attribute types.
        unsafe {
            result::set_matrix_layout_attribute(
                self.0,
                L::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                &count as *const i32 as *const c_void,
                size_of::<i32>(),
            )
            .context("setting the batch count")?;
            result::set_matrix_layout_attribute(
                self.0,
                L::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                &stride as *const i64 as *const c_void,
                size_of::<i64>(),
            )
            .context("setting the batch stride")?;
        }
        Ok(())
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        let _ = unsafe { result::destroy_matrix_layout(self.0) };
    }
}

/// RAII matmul descriptor (f32 scale type).
struct Desc(sys::cublasLtMatmulDesc_t);

impl Desc {
    fn new(compute: sys::cublasComputeType_t) -> Result<Self> {
        let h = result::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F)
            .context("cublasLtMatmulDescCreate")?;
        Ok(Self(h))
    }
    fn set_u32(&self, attr: sys::cublasLtMatmulDescAttributes_t, v: u32) -> Result<()> {
        self.set(attr, &v)
    }
    /// Sets an attribute from a value of its documented C type (`T` must be that type).
    fn set<T>(&self, attr: sys::cublasLtMatmulDescAttributes_t, v: &T) -> Result<()> {
        // SAFETY: the handle is live; `v` is read for size_of::<T>() bytes.
        unsafe {
            result::set_matmul_desc_attribute(
                self.0,
                attr,
                v as *const T as *const c_void,
                size_of::<T>(),
            )
        }
        .with_context(|| format!("cublasLtMatmulDescSetAttribute({attr:?})"))
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        let _ = unsafe { result::destroy_matmul_desc(self.0) };
    }
}

/// RAII heuristic-preference descriptor.
struct Pref(sys::cublasLtMatmulPreference_t);

impl Pref {
    fn new() -> Result<Self> {
        Ok(Self(
            result::create_matmul_pref().context("cublasLtMatmulPreferenceCreate")?,
        ))
    }
    fn set<T>(&self, attr: sys::cublasLtMatmulPreferenceAttributes_t, v: &T) -> Result<()> {
        // SAFETY: the handle is live; `v` is read for size_of::<T>() bytes.
        unsafe {
            result::set_matmul_pref_attribute(
                self.0,
                attr,
                v as *const T as *const c_void,
                size_of::<T>(),
            )
        }
        .with_context(|| format!("cublasLtMatmulPreferenceSetAttribute({attr:?})"))
    }
}

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        let _ = unsafe { result::destroy_matmul_pref(self.0) };
    }
}
