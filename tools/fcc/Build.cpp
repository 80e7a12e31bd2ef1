//===- Build.cpp - Compile generated trainer source into an executable ----===//
//
// The generated translation unit is host C++ that calls the runtime kernels;
// it is compiled with the system C++ compiler (CXX overrides it) and linked
// with the trainer main, the kernels and their libraries (oneDNN, OpenBLAS,
// zlib, OpenMP). Paths come from the build (BuildConfig.h); the environment
// variable FCC_RUNTIME_LIB_DIR / FCC_RUNTIME_INCLUDE_DIR override them.
//
//===----------------------------------------------------------------------===//
#include "tools/fcc/Build.h"
#include "tools/fcc/BuildConfig.h"

#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Program.h"

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>

using namespace fcc;

static llvm::Error fail(const std::string &msg) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), msg);
}

static std::string env(const char *name, const char *fallback) {
  const char *v = std::getenv(name);
  return v && *v ? v : fallback;
}

static std::string nvccPath() {
  std::string configured = std::string(FCC_CUDA_TOOLKIT_ROOT) + "/bin/nvcc";
  std::string nvcc = env("NVCC", "");
  if (!nvcc.empty())
    return nvcc;
  if (llvm::sys::fs::can_execute(configured))
    return configured;
  auto found = llvm::sys::findProgramByName("nvcc");
  return found ? *found : "";
}

bool fcc::cudaTargetAvailable(std::string *why) {
  if (!FCC_HAVE_CUDA) {
    if (why)
      *why = "this fcc was built without the CUDA runtime (no CUDA toolkit "
             "with cuDNN and cuBLAS at build time)";
    return false;
  }
  if (nvccPath().empty()) {
    if (why)
      *why = "nvcc is not found (set NVCC or put it on PATH)";
    return false;
  }
  return true;
}

bool fcc::gpuArchFlags(const std::string &archs,
                       std::vector<std::string> &flags) {
  llvm::SmallVector<llvm::StringRef> parts;
  llvm::StringRef(archs).split(parts, ',', -1, false);
  if (parts.empty())
    return false;
  for (llvm::StringRef a : parts) {
    a = a.trim();
    unsigned sm = 0;
    if (!a.consume_front("sm_") || a.getAsInteger(10, sm) || sm < 75)
      return false;
    flags.push_back("-gencode=arch=compute_" + std::to_string(sm) +
                    ",code=sm_" + std::to_string(sm));
  }
  return true;
}

llvm::Error fcc::buildTrainer(const GeneratedProgram &program,
                              const BuildOptions &o) {
  const bool cuda = o.target == "cuda";
  // Source directory: --keep-source, or a fresh temporary one.
  llvm::SmallString<256> dir;
  bool temporary = o.keepSource.empty();
  if (temporary) {
    if (auto ec = llvm::sys::fs::createUniqueDirectory("fcc-trainer", dir))
      return fail("cannot create a temporary directory: " + ec.message());
  } else {
    dir = o.keepSource;
    if (auto ec = llvm::sys::fs::create_directories(dir))
      return fail("--keep-source: cannot create '" + o.keepSource +
                  "': " + ec.message());
  }
  llvm::sys::fs::make_absolute(dir);
  auto write = [&](const std::string &name, const char *data,
                   size_t size) -> llvm::Error {
    llvm::SmallString<256> path(dir);
    llvm::sys::path::append(path, name);
    std::ofstream out(std::string(path), std::ios::binary);
    out.write(data, size);
    if (!out)
      return fail("cannot write '" + std::string(path) + "'");
    return llvm::Error::success();
  };
  const std::string sourceName = cuda ? "trainer.cu" : "trainer.cpp";
  // The weights blob is embedded with the assembler's .incbin, by absolute
  // path so that neither the working directory nor assembler flags matter.
  std::string text = program.source;
  for (const char *name : {"weights.bin", "model.onnx"}) {
    const std::string rel = ".incbin \\\"" + std::string(name) + "\\\"";
    llvm::SmallString<256> blob(dir);
    llvm::sys::path::append(blob, name);
    const std::string abs = ".incbin \\\"" + std::string(blob) + "\\\"";
    for (size_t at = text.find(rel); at != std::string::npos;
         at = text.find(rel, at + abs.size()))
      text.replace(at, rel.size(), abs);
  }
  if (auto err = write(sourceName, text.data(), text.size()))
    return err;
  if (!program.weights.empty())
    if (auto err = write("weights.bin", program.weights.data(),
                         program.weights.size()))
      return err;
  if (!program.model.empty())
    if (auto err = write("model.onnx", program.model.data(),
                         program.model.size()))
      return err;

  std::string inc = env("FCC_RUNTIME_INCLUDE_DIR", FCC_RUNTIME_INCLUDE_DIR);
  std::string lib = env("FCC_RUNTIME_LIB_DIR", FCC_RUNTIME_LIB_DIR);
  std::vector<std::string> libs =
      cuda ? std::vector<std::string>{"libfcc_trainer_main_cuda.a",
                                      "libfcc_trainer_cuda.a",
                                      "libfcc_trainer.a",
                                      "libfcc_runtime_comm_cuda.a",
                                      "libfcc_runtime_comm.a",
                                      "libfcc_runtime_cuda.a",
                                      "libfcc_runtime_cpu.a"}
           : std::vector<std::string>{"libfcc_trainer_main.a",
                                      "libfcc_trainer.a",
                                      "libfcc_runtime_comm.a",
                                      "libfcc_runtime_cpu.a"};
  for (const std::string &name : libs) {
    llvm::SmallString<256> p(lib);
    llvm::sys::path::append(p, name);
    if (!llvm::sys::fs::exists(p))
      return fail("the runtime library '" + std::string(p) +
                  "' is missing (build fcc's runtime, or set "
                  "FCC_RUNTIME_LIB_DIR)");
  }
  llvm::SmallString<256> source(dir);
  llvm::sys::path::append(source, sourceName);

  std::string compiler;
  std::vector<std::string> args;
  if (cuda) {
    std::string why;
    if (!cudaTargetAvailable(&why))
      return fail("--target cuda: " + why);
    compiler = nvccPath();
    std::vector<std::string> arch;
    if (!gpuArchFlags(o.gpuArch, arch))
      return fail("--gpu-arch: '" + o.gpuArch +
                  "' is not a list like sm_80,sm_90 (sm_75 or newer)");
    std::string cudnnDir =
        llvm::sys::path::parent_path(FCC_CUDNN_LIBRARY).str();
    std::string cudaLib = std::string(FCC_CUDA_TOOLKIT_ROOT) + "/lib64";
    args = {compiler, "-std=c++17", "-O2", "-Xcompiler=-fopenmp",
            "-I" + inc};
    args.insert(args.end(), arch.begin(), arch.end());
    args.insert(args.end(), {std::string(source), "-o", o.output});
    for (const std::string &name : libs)
      args.push_back(lib + "/" + name);
    // Shared cuDNN/cuBLAS/NCCL found next to the trainer (lib/), where
    // they were at build time, or on LD_LIBRARY_PATH (bench/gpu-check.sh
    // adds the pip nvidia-* folders of a GPU machine).
    std::string rpath = "$ORIGIN/lib:" + cudnnDir + ":" + cudaLib;
    args.insert(args.end(), {FCC_DNNL_LIB, FCC_OPENBLAS_LIB, FCC_ZLIB_LIB,
                             "-L" + cudnnDir, "-L" + cudaLib});
    if (FCC_HAVE_NCCL) {
      std::string ncclDir =
          llvm::sys::path::parent_path(FCC_NCCL_LIBRARY).str();
      args.insert(args.end(), {"-L" + ncclDir, "-lnccl"});
      if (ncclDir != cudaLib)
        rpath += ":" + ncclDir;
    }
    args.insert(args.end(),
                {"-lcudnn", "-lcublasLt", "-lcublas", "-cudart=static",
                 "-lgomp", "-lpthread", "-Xlinker=-rpath," + rpath});
  } else {
    std::string cxx = env("CXX", FCC_CXX_COMPILER);
    auto cxxPath = llvm::sys::findProgramByName(cxx);
    if (!cxxPath)
      return fail("cannot find the C++ compiler '" + cxx +
                  "' (set CXX to choose one)");
    compiler = *cxxPath;
    args = {compiler, "-std=c++17", "-O2", "-fopenmp", "-I" + inc,
            std::string(source), "-o", o.output};
    for (const std::string &name : libs)
      args.push_back(lib + "/" + name);
    args.insert(args.end(),
                {FCC_DNNL_LIB, FCC_OPENBLAS_LIB, FCC_ZLIB_LIB, "-lpthread"});
  }
  // MPI starts the ranks (runtime/comm): it carries the gradients of CPU
  // trainers and bootstraps NCCL for CUDA trainers.
  {
    llvm::SmallVector<llvm::StringRef> mpi;
    llvm::StringRef(FCC_MPI_LIBS).split(mpi, ';', -1, false);
    for (llvm::StringRef m : mpi)
      args.push_back(m.str());
  }
  if (o.verbose) {
    std::cerr << "fcc: ";
    for (const std::string &a : args)
      std::cerr << a << " ";
    std::cerr << "\n";
  }
  std::vector<llvm::StringRef> refs(args.begin(), args.end());
  std::string message;
  auto start = std::chrono::steady_clock::now();
  int rc = llvm::sys::ExecuteAndWait(compiler, refs, std::nullopt, {}, 0, 0,
                                     &message);
  double seconds = std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - start)
                       .count();
  if (temporary)
    llvm::sys::fs::remove_directories(dir);
  if (rc != 0)
    return fail("building the trainer failed (" +
                (message.empty() ? "exit code " + std::to_string(rc) : message) +
                ")" + (temporary ? "; rerun with --keep-source DIR to inspect "
                                   "the generated source"
                                 : ""));
  if (o.verbose)
    std::cerr << "fcc: built " << o.output << " in " << seconds << " s\n";
  return llvm::Error::success();
}
