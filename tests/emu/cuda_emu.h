// A CUDA execution model on CPU threads, for running our kernels' source under g++ in tests
// (tests/kernel_emu.rs): every block of a launch runs in turn, its threads as std::threads.
// - __shared__ arrays become function statics (one block runs at a time, so a block owns them).
// - __syncthreads() is a barrier over the block's threads.
// - __shfl_xor_sync exchanges through a block-wide table between two barriers. This is exact
//   for kernels whose threads all reach every shuffle (ours do: masking happens after them);
//   a kernel that shuffles under divergent control flow would deadlock here, not pass.
// Semantics only (no timing); with -fsanitize=address out-of-bounds accesses are reported.
#pragma once
#include <barrier>
#include <cmath>
#include <cstring>
#include <algorithm>
#include <functional>
#include <thread>
#include <type_traits>
#include <vector>

struct emu_dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local emu_dim3 threadIdx, blockIdx;
inline emu_dim3 blockDim, gridDim;
inline std::barrier<>* emu_bar = nullptr;
inline std::vector<float> emu_shfl;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define FERROTRON_EMU 1
using std::max;
using std::min;

inline void __syncthreads() { emu_bar->arrive_and_wait(); }

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}
inline float __int_as_float(unsigned i) { return __int_as_float((int)i); }

// __syncwarp(): a block-wide barrier here (our kernels call it warp-uniformly, every warp the
// same number of times).
inline void __syncwarp() { emu_bar->arrive_and_wait(); }

// bf16 as the hardware rounds it (nearest, ties to even).
struct __nv_bfloat16 {
    unsigned short bits;
};
inline __nv_bfloat16 __float2bfloat16(float f) {
    unsigned u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(unsigned short)((u >> 16) | 0x40)};  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(unsigned short)(u >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 b) {
    unsigned u = (unsigned)b.bits << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// WMMA 16x16x16: a fragment's layout across the warp is the hardware's secret, so here every
// lane holds the whole tile (row-major, as values: bf16 operands widened exactly, fp32
// accumulators), computes every product itself, and only lane 0 stores — the same results a
// kernel that touches fragments only through these calls sees on a GPU.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    static constexpr int num_elements = 256;
    float x[256];
};
template <class Use, class T, class L>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, float v) {
    for (float& e : f.x) e = v;
}
inline float emu_widen(const __nv_bfloat16& b) { return __bfloat162float(b); }
inline float emu_widen(const float& f) { return f; }
// Operands: element (r, c) of the 16x16 tile at p[r * ldm + c] (row_major) or p[c * ldm + r].
template <class Use, class T, class L, class P>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const P* p, unsigned ldm) {
    constexpr bool row = std::is_same_v<L, row_major>;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) f.x[r * 16 + c] = emu_widen(row ? p[r * ldm + c] : p[c * ldm + r]);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float, void>& f, const float* p,
                             unsigned ldm, layout_t l) {
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) f.x[r * 16 + c] = l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float, void>& f,
                              unsigned ldm, layout_t l) {
    if (threadIdx.x % 32 != 0) return;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * 16 + c];
}
// d = a . b + c, fp32 products and sums (bf16 products are exact in fp32).
template <class T, class LA, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float, void>& d,
                     const fragment<matrix_a, 16, 16, 16, T, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float, void>& c) {
    float out[256];
    for (int r = 0; r < 16; r++)
        for (int n = 0; n < 16; n++) {
            float acc = c.x[r * 16 + n];
            for (int k = 0; k < 16; k++) acc += a.x[r * 16 + k] * b.x[k * 16 + n];
            out[r * 16 + n] = acc;
        }
    std::memcpy(d.x, out, sizeof out);
}
}  // namespace wmma
}  // namespace nvcuda

inline float __shfl_xor_sync(unsigned, float x, int o) {
    emu_shfl[threadIdx.x] = x;
    emu_bar->arrive_and_wait();
    float y = emu_shfl[threadIdx.x ^ (unsigned)o];
    emu_bar->arrive_and_wait();
    return y;
}

// Runs kernel body `f` on grid (gx, gy) of blocks of `bx` threads.
inline void emu_launch(unsigned gx, unsigned gy, unsigned bx, const std::function<void()>& f) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, 1, 1};
    emu_shfl.assign(bx, 0.0f);
    for (unsigned by = 0; by < gy; by++) {
        for (unsigned b = 0; b < gx; b++) {
            std::barrier<> bar((std::ptrdiff_t)bx);
            emu_bar = &bar;
            std::vector<std::thread> ts;
            ts.reserve(bx);
            for (unsigned t = 0; t < bx; t++) {
                ts.emplace_back([&, t] {
                    threadIdx = {t, 0, 0};
                    blockIdx = {b, by, 0};
                    f();
                });
            }
            for (auto& t : ts) t.join();
        }
    }
}
