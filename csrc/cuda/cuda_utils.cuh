// Small helpers shared by the dvtp CUDA kernels (csrc/cuda/*.cu).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <limits>

namespace dvtp {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
__host__ __device__ __forceinline__ T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// True for finite floats, by bits: independent of --use_fast_math.
__device__ __forceinline__ bool finite_bits(float x) {
  return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

__device__ __forceinline__ float neg_inf_f() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float pos_inf_f() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ float nan_f() { return __int_as_float(0x7fc00000); }

// NaN or +inf, by bits (exponent all ones and not -inf): independent of --use_fast_math.
__device__ __forceinline__ bool nan_or_pos_inf(float x) {
  const unsigned u = __float_as_uint(x);
  return (u & 0x7f800000u) == 0x7f800000u && u != 0xff800000u;
}

// ---- cp.async (sm_80+): global -> shared copies that bypass registers ----------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Before sm_80 (a build whose TORCH_CUDA_ARCH_LIST names 7.x) they degrade to plain
// synchronous copies, which the same __syncthreads() make visible.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define DVTP_HAS_CP_ASYNC 0
#else
#define DVTP_HAS_CP_ASYNC 1
#endif

// 16 bytes; both addresses 16-byte aligned.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) {
#if DVTP_HAS_CP_ASYNC
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem_dst)),
               "l"(gmem_src)
               : "memory");
#else
  *reinterpret_cast<uint4*>(smem_dst) = *reinterpret_cast<const uint4*>(gmem_src);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if DVTP_HAS_CP_ASYNC
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Wait until every cp.async of this thread has landed (visible to the block after a
// __syncthreads()).
__device__ __forceinline__ void cp_async_wait_all() {
#if DVTP_HAS_CP_ASYNC
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// ---- host-side contract checks ------------------------------------------------------
inline void check_index_vector(const at::Tensor& t, const char* name, int64_t B,
                               const at::Device& device) {
  TORCH_CHECK(t.device() == device, "dvtp: ", name, " must be on ", device, ", got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == at::kLong, "dvtp: ", name, " must be int64, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == B, "dvtp: ", name, " must have shape [", B,
              "], got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "dvtp: ", name, " must be contiguous");
}

// Largest dynamic shared memory a block may opt in to on the current device.
inline size_t max_dynamic_smem_optin() {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  return static_cast<size_t>(prop->sharedMemPerBlockOptin);
}

inline int num_sms() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// Opt a kernel in to `bytes` of dynamic shared memory (needed above 48 KiB).
template <typename Kernel>
inline void set_dynamic_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  }
}

}  // namespace cuda
}  // namespace dvtp
