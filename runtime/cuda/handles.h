//===- handles.h - The cuDNN and cuBLAS handles of the context (private) --===//
//
// Separate from internal.h so that only the sources that call the libraries
// (context.cpp, conv.cpp, gemm.cpp) parse their headers.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_RUNTIME_CUDA_HANDLES_H
#define FCC_RUNTIME_CUDA_HANDLES_H

#include "internal.h"

#include <cublas_v2.h>
#include <cudnn.h>

namespace fcc::cuda {

// Valid between fcc_cuda_init and fcc_cuda_shutdown; both are bound to
// stream().
cudnnHandle_t cudnnHandle();
cublasHandle_t cublasHandle();

} // namespace fcc::cuda

#endif // FCC_RUNTIME_CUDA_HANDLES_H
