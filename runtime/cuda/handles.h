//===- handles.h - The cuDNN and cuBLAS(Lt) handles of the context --------===//
//
// Private. Separate from internal.h so that only the sources that call the
// libraries (context.cpp, conv.cpp, gemm.cpp) parse their headers.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_RUNTIME_CUDA_HANDLES_H
#define FCC_RUNTIME_CUDA_HANDLES_H

#include "internal.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cudnn.h>

namespace fcc::cuda {

// Valid between fcc_cuda_init and fcc_cuda_shutdown. cudnnHandle() is that
// of stream() (the main or the side stream's own handle); the cuBLAS handle
// is bound to the main stream (fcc_cuda_gemm refuses the side stream).
cudnnHandle_t cudnnHandle();
cublasHandle_t cublasHandle();
// The cuBLASLt handle (fcc_cuda_gemm); cuBLASLt takes the stream per call.
cublasLtHandle_t cublasLtHandle();

// The cuBLAS workspace (allocated by fcc_cuda_init and never moved, so
// captured graphs stay valid), set on cublasHandle() and passed to every
// cublasLtMatmul: one buffer for both, as all their calls are ordered on
// stream().
void *cublasWorkspace();
size_t cublasWorkspaceSize();

// Destroys gemm.cpp's cached cuBLASLt descriptors and algorithm choices
// (host memory only); called where the handles are destroyed.
void releaseGemmPlans();

} // namespace fcc::cuda

#endif // FCC_RUNTIME_CUDA_HANDLES_H
