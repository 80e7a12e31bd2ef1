//===- Trainer.h - The training driver of generated trainers --------------===//
//
// run() is everything a generated trainer does around its program: parse the
// command line, load and check the data, set the program up, then for each
// run initialise the state, train epoch by epoch (shuffle, augment, one
// train_step per batch with the scheduled hyper-parameters, EMA), evaluate
// on the test set after every epoch and report. main.cpp calls it with
// fcc_generated_program(); tests call it in-process with a fake program.
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TRAINER_TRAINER_H
#define FCC_TRAINER_TRAINER_H

#include "fcc/runtime/program.h"

#include <iosfwd>

namespace fcc::trainer {

enum ExitCode {
  kExitOk = 0,
  kExitUsage = 1,    // bad command line, data or program
  kExitNoDevice = 2, // no device (or backend) for the program's target
  kExitDiverged = 3, // non-finite training loss
  kExitInterrupted = 130, // SIGINT (or --debug-stop-after-steps)
  kExitTerminated = 143,  // SIGTERM
};

// With std::cout/std::cerr; a progress bar when stdout is a terminal.
int run(const fcc_program *program, int argc, char **argv);

// With explicit streams; `progress` enables the in-place progress bar.
int run(const fcc_program *program, int argc, char **argv, std::ostream &out,
        std::ostream &err, bool progress);

} // namespace fcc::trainer

#endif // FCC_TRAINER_TRAINER_H
