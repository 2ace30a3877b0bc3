// Sum of n floats, as NSLICES (= 1024) partial sums: partials[g] = sum of x[g * S, min((g + 1) * S, n))
// with S = 4 * ceil(n / (4 * NSLICES)); the caller adds the 1024 partials (on the host, or in a
// second tiny launch), and slices past the end of x give 0.
//
// Why partials and not one float: the engine poisons every output with NaN bytes before each
// correctness check and a kernel is one entry point, so the usual single-launch designs (atomicAdd
// into a pre-zeroed output, or a "last block finishes" atomic counter) cannot start from a known
// state. With a slicing that is FIXED (independent of the config), every config writes every
// element of the same 1024-float output, and configs differ only in how a slice is reduced. S is
// a multiple of 4, so every slice starts 16-byte aligned and float4 loads stay aligned; only the
// last slice may have a ragged (< VEC) tail, summed with scalar loads. 1024 slices keep 132 SMs
// busy (about 8 blocks of one slice each per SM) while the host's share stays 4 KiB.
//
// Parameters (-D defines from jitune):
//   TPS     threads per slice (power of two, 8..1024; 8 and 16 share a warp between slices)
//   SPB     slices per block (block = TPS * SPB threads, grid = NSLICES / SPB blocks)
//   VEC     load width (1, 2, 4 floats; wide loads need an aligned x, checked at run time)
//   UNROLL  independent accumulators / loads in flight per thread per loop step
#ifndef TPS
#define TPS 256
#endif
#ifndef SPB
#define SPB 1
#endif
#ifndef VEC
#define VEC 4
#endif
#ifndef UNROLL
#define UNROLL 4
#endif

#define NSLICES 1024
#define THREADS (TPS * SPB)
// Warps per slice (1 when a slice is a warp or part of one).
#define WPS ((TPS + 31) / 32)
#define SHFL_WIDTH (TPS < 32 ? TPS : 32)

template <int V> __device__ __forceinline__ void load_v(const float* __restrict__ p, float* v);
template <> __device__ __forceinline__ void load_v<1>(const float* __restrict__ p, float* v)
{
    v[0] = p[0];
}
template <> __device__ __forceinline__ void load_v<2>(const float* __restrict__ p, float* v)
{
    const float2 t = *reinterpret_cast<const float2*>(p);
    v[0] = t.x;
    v[1] = t.y;
}
template <> __device__ __forceinline__ void load_v<4>(const float* __restrict__ p, float* v)
{
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x;
    v[1] = t.y;
    v[2] = t.z;
    v[3] = t.w;
}


// Thread `lane` of a slice sums vectors lane, lane + TPS, ... of xs[0, nv * V).
template <int V>
__device__ __forceinline__ float slice_sum(const float* __restrict__ xs, long long nv, int lane)
{
    float acc[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
        acc[u] = 0.0f;
    for (long long base = lane; base < nv; base += (long long)TPS * UNROLL) {
        float v[UNROLL][V];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const long long i = base + (long long)u * TPS;
            if (i < nv)
                load_v<V>(xs + i * V, v[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const long long i = base + (long long)u * TPS;
            if (i < nv) {
#pragma unroll
                for (int k = 0; k < V; ++k)
                    acc[u] += v[u][k];
            }
        }
    }
    float s = 0.0f;
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
        s += acc[u];
    return s;
}

extern "C" __global__ void __launch_bounds__(THREADS)
reduction(const float* __restrict__ x, float* __restrict__ partials, int n)
{
    __shared__ float red[SPB][WPS];
    const int lane = threadIdx.x % TPS;
    const int r = threadIdx.x / TPS;
    const int slice = blockIdx.x * SPB + r;
    const long long total = n > 0 ? (long long)n : 0;
    const long long chunk = (total + 4LL * NSLICES - 1) / (4LL * NSLICES) * 4;
    long long start = (long long)slice * chunk;
    long long len = total - start;
    if (len > chunk)
        len = chunk;
    if (len < 0 || slice >= NSLICES)
        len = 0;
    if (len == 0)
        start = 0;
    const float* __restrict__ xs = x + start;
    float s;
    // Uniform across the grid (one branch for every thread of a block).
    if (VEC > 1 && ((unsigned long long)x % (VEC * sizeof(float))) == 0) {
        const long long nv = len / VEC;
        s = slice_sum<VEC>(xs, nv, lane);
        // The ragged tail (< VEC elements, last slice only).
        for (long long j = nv * VEC + lane; j < len; j += TPS)
            s += xs[j];
    } else {
        s = slice_sum<1>(xs, len, lane);
    }
#pragma unroll
    for (int o = SHFL_WIDTH / 2; o > 0; o >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, o);
#if TPS > 32
    const int warp = lane >> 5;
    if ((threadIdx.x & 31) == 0)
        red[r][warp] = s;
    __syncthreads();
    if (lane == 0) {
        s = red[r][0];
#pragma unroll
        for (int w = 1; w < WPS; ++w)
            s += red[r][w];
    }
#endif
    if (lane == 0 && slice < NSLICES)
        partials[slice] = s;
}
