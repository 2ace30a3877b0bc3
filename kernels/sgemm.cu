// Warp-tiled FP32 GEMM: C[M,N] = A[M,K] * B[K,N], row-major, FP32 accumulation, any M, N, K >= 1.
//
// Tiling, outermost first (the tunable parameters arrive as -D defines from jitune):
// - a block computes a BM x BN tile of C, stepping through K in slices of BK staged in shared
//   memory: B as it is (Bs[k][n]) and, with ATRANS = 1, A transposed (As[k][m], rows padded by 4
//   floats against bank conflicts of the transposing stores), so both are read along their
//   contiguous axis; ATRANS = 0 keeps A as loaded (As[m][k], float4 stores): its fragments are
//   read one float at a time along M (ptxas may merge the reads of consecutive k of the unrolled
//   K loop into vector loads, at a cost in registers);
// - each of its (BM / WM) x (BN / WN) warps computes a WM x WN warp tile, in WMITER x WNITER
//   sub-tiles of WSUBM x WSUBN (WNITER is a parameter, WMITER follows from the others);
// - each lane computes a TM x TN fragment of every sub-tile, its operands read from shared memory
//   as float4 (TM and TN are multiples of 4; A's only with ATRANS) into registers,
//   WMITER * TM + WNITER * TN of them per k, for WM * WN / 32 accumulators.
// VEC = 1 loads global memory as float4 where the shape allows it (checked at run time: K % 4 == 0
// and a 16-byte aligned A for A, N % 4 == 0 and aligned B for B and C); otherwise, and always with
// VEC = 0, every element is loaded on its own. Both paths bounds-check and fill zeros outside the
// matrices, and the stores are bounds-checked.
// DBUF = 1 double-buffers the slices: two shared buffers, the next slice loaded from global memory
// into registers while this one is computed, then stored to the other buffer; one __syncthreads
// per slice. DBUF = 0 has one buffer and two __syncthreads per slice.
// Shared memory is dynamic (the spec's shared_mem expression): NBUF * BK * (BM + 4 * ATRANS + BN)
// floats.
// SPLIT_K > 1 splits K into that many parts, one per blockIdx.z (ceil(slices / SPLIT_K) slices
// each; a part past K reads zeros): grids with few tiles, such as decode rows, fill the SMs. The
// parts add their tiles into C with atomics, so jitune zero-fills C first (the spec's `zero`).
#ifndef SPLIT_K
#define SPLIT_K 1
#endif
#ifndef BM
#define BM 128
#endif
#ifndef BN
#define BN 128
#endif
#ifndef BK
#define BK 16
#endif
#ifndef WM
#define WM 64
#endif
#ifndef WN
#define WN 64
#endif
#ifndef TM
#define TM 8
#endif
#ifndef TN
#define TN 4
#endif
#ifndef WNITER
#define WNITER 2
#endif
#ifndef VEC
#define VEC 1
#endif
#ifndef DBUF
#define DBUF 1
#endif
#ifndef ATRANS
#define ATRANS 1
#endif

#define WSUBN (WN / WNITER)
#define LANES_N (WSUBN / TN)
#define LANES_M (32 / LANES_N)
#define WSUBM (LANES_M * TM)
#define WMITER (WM / WSUBM)
#define WARPS_N (BN / WN)
#define THREADS ((BM / WM) * WARPS_N * 32)
#if ATRANS
#define AS_LD (BM + 4)
#define AS_SIZE (BK * AS_LD)
#else
#define AS_SIZE (BM * BK)
#endif
#define STAGE (AS_SIZE + BK * BN)
#define A_VECS (BM * BK / 4)
#define B_VECS (BK * BN / 4)
#define A_LOADS ((A_VECS + THREADS - 1) / THREADS)
#define B_LOADS ((B_VECS + THREADS - 1) / THREADS)

#if (TM % 4) || (TN % 4) || (BK % 4) || (BM % WM) || (BN % WN) || (WN % (WNITER * TN))
#error "sgemm: TM, TN and BK must be multiples of 4 and the tiles must divide"
#endif
#if (32 % LANES_N) || (WM % WSUBM)
#error "sgemm: the warp tile does not split into 32 lanes of TM x TN"
#endif

extern "C" __global__ void __launch_bounds__(THREADS)
sgemm(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K)
{
    extern __shared__ float4 smem4[];
    float* const smem = reinterpret_cast<float*>(smem4);

    const int tid = threadIdx.x;
    const int block_row = blockIdx.y * BM;
    const int block_col = blockIdx.x * BN;
    const bool vec_a = VEC && (K % 4 == 0) && ((reinterpret_cast<size_t>(A) & 15) == 0);
    const bool vec_b = VEC && (N % 4 == 0) && ((reinterpret_cast<size_t>(B) & 15) == 0);
    const bool vec_c = VEC && (N % 4 == 0) && ((reinterpret_cast<size_t>(C) & 15) == 0);

    // The slice k0 .. k0 + BK of A and B in registers: each thread holds A_LOADS and B_LOADS
    // groups of 4 consecutive elements along the contiguous axis (K for A, N for B).
    float4 ra[A_LOADS];
    float4 rb[B_LOADS];

    auto load = [&](int k0) {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int idx = tid + i * THREADS;
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (A_VECS % THREADS == 0 || idx < A_VECS) {
                const int gr = block_row + idx / (BK / 4);
                const int gc = k0 + (idx % (BK / 4)) * 4;
                if (gr < M && gc < K) {
                    const float* p = A + (size_t)gr * K + gc;
                    if (vec_a) {
                        v = *reinterpret_cast<const float4*>(p);
                    } else {
                        v.x = p[0];
                        if (gc + 1 < K) v.y = p[1];
                        if (gc + 2 < K) v.z = p[2];
                        if (gc + 3 < K) v.w = p[3];
                    }
                }
            }
            ra[i] = v;
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int idx = tid + i * THREADS;
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (B_VECS % THREADS == 0 || idx < B_VECS) {
                const int gr = k0 + idx / (BN / 4);
                const int gc = block_col + (idx % (BN / 4)) * 4;
                if (gr < K && gc < N) {
                    const float* p = B + (size_t)gr * N + gc;
                    if (vec_b) {
                        v = *reinterpret_cast<const float4*>(p);
                    } else {
                        v.x = p[0];
                        if (gc + 1 < N) v.y = p[1];
                        if (gc + 2 < N) v.z = p[2];
                        if (gc + 3 < N) v.w = p[3];
                    }
                }
            }
            rb[i] = v;
        }
    };

    // Registers to shared buffer `buf`: A transposed (or, without ATRANS, as float4), B as float4.
    auto store = [&](int buf) {
        float* const as = smem + buf * STAGE;
        float* const bs = as + AS_SIZE;
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int idx = tid + i * THREADS;
            if (A_VECS % THREADS == 0 || idx < A_VECS) {
                const int r = idx / (BK / 4);
                const int c = (idx % (BK / 4)) * 4;
#if ATRANS
                as[(c + 0) * AS_LD + r] = ra[i].x;
                as[(c + 1) * AS_LD + r] = ra[i].y;
                as[(c + 2) * AS_LD + r] = ra[i].z;
                as[(c + 3) * AS_LD + r] = ra[i].w;
#else
                *reinterpret_cast<float4*>(&as[r * BK + c]) = ra[i];
#endif
            }
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int idx = tid + i * THREADS;
            if (B_VECS % THREADS == 0 || idx < B_VECS) {
                const int r = idx / (BN / 4);
                const int c = (idx % (BN / 4)) * 4;
                *reinterpret_cast<float4*>(&bs[r * BN + c]) = rb[i];
            }
        }
    };

    const int warp = tid / 32;
    const int lane = tid % 32;
    const int warp_row = warp / WARPS_N;
    const int warp_col = warp % WARPS_N;
    const int lane_row = lane / LANES_N;
    const int lane_col = lane % LANES_N;

    float acc[WMITER * TM][WNITER * TN];
#pragma unroll
    for (int i = 0; i < WMITER * TM; ++i)
#pragma unroll
        for (int j = 0; j < WNITER * TN; ++j)
            acc[i][j] = 0.0f;

    auto compute = [&](int buf) {
#if ATRANS
        const float* const as = smem + buf * STAGE + warp_row * WM + lane_row * TM;
#else
        const float* const as = smem + buf * STAGE + (warp_row * WM + lane_row * TM) * BK;
#endif
        const float* const bs = smem + buf * STAGE + AS_SIZE + warp_col * WN + lane_col * TN;
        float rm[WMITER * TM];
        float rn[WNITER * TN];
#pragma unroll
        for (int k = 0; k < BK; ++k) {
#pragma unroll
            for (int wm = 0; wm < WMITER; ++wm)
#pragma unroll
                for (int i = 0; i < TM; i += 4) {
#if ATRANS
                    const float4 v = *reinterpret_cast<const float4*>(&as[k * AS_LD + wm * WSUBM + i]);
                    rm[wm * TM + i + 0] = v.x;
                    rm[wm * TM + i + 1] = v.y;
                    rm[wm * TM + i + 2] = v.z;
                    rm[wm * TM + i + 3] = v.w;
#else
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        rm[wm * TM + i + e] = as[(wm * WSUBM + i + e) * BK + k];
#endif
                }
#pragma unroll
            for (int wn = 0; wn < WNITER; ++wn)
#pragma unroll
                for (int j = 0; j < TN; j += 4) {
                    const float4 v = *reinterpret_cast<const float4*>(&bs[k * BN + wn * WSUBN + j]);
                    rn[wn * TN + j + 0] = v.x;
                    rn[wn * TN + j + 1] = v.y;
                    rn[wn * TN + j + 2] = v.z;
                    rn[wn * TN + j + 3] = v.w;
                }
#pragma unroll
            for (int i = 0; i < WMITER * TM; ++i)
#pragma unroll
                for (int j = 0; j < WNITER * TN; ++j)
                    acc[i][j] = fmaf(rm[i], rn[j], acc[i][j]);
        }
    };

    // This block's K part: slices first .. first + slices - 1 (all of K without split-K).
    const int all_slices = (K + BK - 1) / BK;
    const int per_part = (all_slices + SPLIT_K - 1) / SPLIT_K;
    const int first = blockIdx.z * per_part;
    const int slices = min(per_part, all_slices - first);
    load(first * BK);
    store(0);
    __syncthreads();
#if DBUF
    for (int s = 0; s < slices; ++s) {
        const int buf = s & 1;
        const bool more = s + 1 < slices;
        if (more)
            load((first + s + 1) * BK);
        compute(buf);
        if (more)
            store(buf ^ 1);
        __syncthreads();
    }
#else
    for (int s = 0; s < slices; ++s) {
        compute(0);
        __syncthreads();
        if (s + 1 < slices) {
            load((first + s + 1) * BK);
            store(0);
            __syncthreads();
        }
    }
#endif

    // Bounds-checked stores: float4 when N allows it, else element by element.
#pragma unroll
    for (int wm = 0; wm < WMITER; ++wm)
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int r = block_row + warp_row * WM + wm * WSUBM + lane_row * TM + i;
            if (r >= M)
                continue;
            float* const crow = C + (size_t)r * N;
#pragma unroll
            for (int wn = 0; wn < WNITER; ++wn)
#pragma unroll
                for (int j = 0; j < TN; j += 4) {
                    const int c = block_col + warp_col * WN + wn * WSUBN + lane_col * TN + j;
                    const int ai = wm * TM + i;
                    const int aj = wn * TN + j;
                    if (SPLIT_K > 1) {
                        // A partial sum over this K part: add into the zero-filled C.
#pragma unroll
                        for (int e = 0; e < 4; ++e)
                            if (c + e < N)
                                atomicAdd(crow + c + e, acc[ai][aj + e]);
                    } else if (vec_c) {
                        if (c < N)
                            *reinterpret_cast<float4*>(crow + c) =
                                make_float4(acc[ai][aj], acc[ai][aj + 1], acc[ai][aj + 2], acc[ai][aj + 3]);
                    } else {
#pragma unroll
                        for (int e = 0; e < 4; ++e)
                            if (c + e < N)
                                crow[c + e] = acc[ai][aj + e];
                    }
                }
        }
}
