// AdamW, torch.optim.AdamW's single-tensor order (CPU twin: src/optim/adamw.rs):
//   p <- p * wd_factor                          (wd_factor = 1 - lr*wd, or 1 without decay)
//   m <- m + (g - m) (1 - beta1);  v <- v beta2 + (1 - beta2) g^2
//   p <- p - step_size * m / (sqrt(v) / bc2_sqrt + eps)   (step_size = lr / (1 - beta1^t),
//                                                           bc2_sqrt = sqrt(1 - beta2^t))
// One thread per element (grid-stride), fp32 master weights and state.

// The update of element i (shared by `adamw` and `adamw_multi`).
__device__ __forceinline__ void adamw_element(float* p, const float* g, float* m, float* v,
                                              long long i, float beta1, float beta2, float eps,
                                              float wd_factor, float step_size,
                                              float bc2_sqrt) {
    float gi = g[i];
    float pi = p[i] * wd_factor;
    float mi = m[i];
    mi += (gi - mi) * (1.0f - beta1);
    float vi = v[i] * beta2 + (1.0f - beta2) * gi * gi;
    float denom = sqrtf(vi) / bc2_sqrt + eps;
    pi -= step_size * mi / denom;
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
}

extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, long n, float lr,
                                 float beta1, float beta2, float eps, float wd_factor,
                                 float step_size, float bc2_sqrt) {
    (void)lr;  // folded into wd_factor and step_size by the host; kept for the signature
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        adamw_element(p, g, m, v, i, beta1, beta2, eps, wd_factor, step_size, bc2_sqrt);
    }
}

// Multi-tensor AdamW: every tensor of the flat parameter buffer in one launch (the update of
// each element is `adamw`'s). The host cuts the tensors into chunks of at most `chunk_elems`
// elements; block b updates chunk b, described by table[2b] = first element and
// table[2b+1] = (length << 1) | decay. Tensors with decay use `wd_factor`, the others 1.
extern "C" __global__ void adamw_multi(float* p, const float* g, float* m, float* v,
                                       const long long* table, float beta1, float beta2,
                                       float eps, float wd_factor, float step_size,
                                       float bc2_sqrt) {
    long long off = table[2 * blockIdx.x];
    long long len_decay = table[2 * blockIdx.x + 1];
    long long len = len_decay >> 1;
    float wdf = (len_decay & 1) ? wd_factor : 1.0f;
    for (long long j = threadIdx.x; j < len; j += blockDim.x) {
        adamw_element(p, g, m, v, off + j, beta1, beta2, eps, wdf, step_size, bc2_sqrt);
    }
}
