//===- main_cuda.cpp - main() of a generated CUDA trainer -----------------===//
//
// Linked (as fcc_trainer_main_cuda) with the translation unit that
// `fcc compile --target cuda` generates: registers the GPU backend, then
// runs the same driver as CPU trainers.
//
//===----------------------------------------------------------------------===//
#include "Backend.h"
#include "Trainer.h"

namespace fcc::trainer {
std::unique_ptr<Backend> makeCudaBackend();
} // namespace fcc::trainer

int main(int argc, char **argv) {
  fcc::trainer::registerBackend("cuda", fcc::trainer::makeCudaBackend);
  return fcc::trainer::run(fcc_generated_program(), argc, argv);
}
