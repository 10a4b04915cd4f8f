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
using std::max;
using std::min;

inline void __syncthreads() { emu_bar->arrive_and_wait(); }

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}
inline float __int_as_float(unsigned i) { return __int_as_float((int)i); }

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
