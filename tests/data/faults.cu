// Fault injection for isolated tuning (tests/gpu_faults.rs): y[i] = 2 x[i] + 1, with configs
// that go wrong on purpose. FAULT selects how:
//   0  none (the good configs: B threads per block, ITEMS elements per thread)
//   1  writes through a null pointer (CUDA_ERROR_ILLEGAL_ADDRESS: the context is lost)
//   2  asks for 300 KB of dynamic shared memory (more than any GPU has: a launch error)
//   3  spins for 30 s of wall-clock time before doing the work (a hang, as far as tuning cares)
//   4  writes NaN (a wrong result)
//   5  executes a trap instruction (CUDA_ERROR_LAUNCH_FAILED: the context is lost)

extern "C" __global__ void faults(const float* __restrict__ x, float* __restrict__ y, int n) {
    long long base = ((long long)blockIdx.x * B + threadIdx.x) * ITEMS;
#if FAULT == 3
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < 30ull * 1000 * 1000 * 1000);
#endif
#if FAULT == 5
    if (base == 0) __trap();
#endif
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        long long i = base + k;
        if (i < n) {
            float v = 2.0f * x[i] + 1.0f;
#if FAULT == 1
            ((volatile float*)0)[i + 64] = v;
#elif FAULT == 4
            y[i] = __int_as_float(0x7fc00000);
#else
            y[i] = v;
#endif
        }
    }
}
