# lit configuration for fcc's IR tests: .mlir files run through fcc-opt and
# .onnxtxt models (ONNX text syntax) run through fcc; both checked with
# FileCheck. Configured by CMake through lit.site.cfg.py.
import os

import lit.formats

config.name = "fcc"
config.test_format = lit.formats.ShTest(execute_external=True)
config.suffixes = [".mlir", ".onnxtxt", ".test"]
config.excludes = ["Inputs", "check_metrics.py", "compare_weights.py", "CMakeLists.txt", "lit.cfg.py", "lit.site.cfg.py"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.fcc_binary_dir, "tests", "lit")

# fcc's tools first, then LLVM's FileCheck/not/count.
path = os.pathsep.join([config.fcc_tools_dir, config.llvm_tools_dir,
                        config.environment.get("PATH", os.environ["PATH"])])
config.environment["PATH"] = path
config.substitutions.append(("%models", config.fcc_models_dir))
config.substitutions.append(("%python", config.python_executable))
config.substitutions.append(("%data", os.path.join(os.path.dirname(config.fcc_models_dir), "tests", "data")))

# "cuda": this build has the CUDA runtime, so `fcc compile --target cuda`
# builds trainers (running them needs a GPU).
if getattr(config, "fcc_have_cuda", False):
    config.available_features.add("cuda")

# "cuda-emulation": %build-emulated-cuda SRC.cpp OUT builds a generated CUDA
# trainer against the host emulation of CUDA (tests/unit/cuda/emulation/),
# so that it runs here without a GPU.
emulated = os.path.join(config.fcc_binary_dir, "tests", "emulated-cuda-trainer.sh")
if os.path.isfile(emulated):
    config.available_features.add("cuda-emulation")
    config.substitutions.append(("%build-emulated-cuda", emulated))

# Fashion-MNIST from Debian's dataset-fashion-mnist (scripts/install-deps).
if os.path.isdir("/usr/share/datasets/fashion-mnist"):
    config.available_features.add("fashion-mnist")

# "mpi": Open MPI's mpirun launches several ranks of a CPU trainer.
# %mpirun N runs N ranks on this machine, oversubscribed (CI has 2 cores),
# also as root (containers), with one OpenMP thread per rank.
import shutil
mpirun = shutil.which("mpirun")
if mpirun:
    config.available_features.add("mpi")
    for v in ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"):
        config.environment[v] = "1"
    config.environment["OMP_NUM_THREADS"] = "1"
    config.substitutions.append(
        ("%mpirun", mpirun + " --oversubscribe --bind-to none -x OMP_NUM_THREADS -np"))
