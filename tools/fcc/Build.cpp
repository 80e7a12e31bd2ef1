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

llvm::Error fcc::buildTrainer(const GeneratedProgram &program,
                              const BuildOptions &o) {
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
  if (auto err = write("trainer.cpp", program.source.data(),
                       program.source.size()))
    return err;
  if (!program.weights.empty())
    if (auto err = write("weights.bin", program.weights.data(),
                         program.weights.size()))
      return err;

  std::string cxx = env("CXX", FCC_CXX_COMPILER);
  auto cxxPath = llvm::sys::findProgramByName(cxx);
  if (!cxxPath)
    return fail("cannot find the C++ compiler '" + cxx +
                "' (set CXX to choose one)");
  std::string inc = env("FCC_RUNTIME_INCLUDE_DIR", FCC_RUNTIME_INCLUDE_DIR);
  std::string lib = env("FCC_RUNTIME_LIB_DIR", FCC_RUNTIME_LIB_DIR);
  for (const char *name : {"libfcc_trainer_main.a", "libfcc_trainer.a",
                           "libfcc_runtime_cpu.a"}) {
    llvm::SmallString<256> p(lib);
    llvm::sys::path::append(p, name);
    if (!llvm::sys::fs::exists(p))
      return fail("the runtime library '" + std::string(p) +
                  "' is missing (build fcc's runtime, or set "
                  "FCC_RUNTIME_LIB_DIR)");
  }
  llvm::SmallString<256> source(dir);
  llvm::sys::path::append(source, "trainer.cpp");
  std::vector<std::string> args = {
      *cxxPath, "-std=c++17", "-O2", "-fopenmp", "-I" + inc,
      "-Wa,-I" + std::string(dir), std::string(source), "-o", o.output,
      lib + "/libfcc_trainer_main.a", lib + "/libfcc_trainer.a",
      lib + "/libfcc_runtime_cpu.a", FCC_DNNL_LIB, FCC_OPENBLAS_LIB,
      FCC_ZLIB_LIB, "-lpthread"};
  if (o.verbose) {
    std::cerr << "fcc: ";
    for (const std::string &a : args)
      std::cerr << a << " ";
    std::cerr << "\n";
  }
  std::vector<llvm::StringRef> refs(args.begin(), args.end());
  std::string message;
  auto start = std::chrono::steady_clock::now();
  int rc = llvm::sys::ExecuteAndWait(*cxxPath, refs, std::nullopt, {}, 0, 0,
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
