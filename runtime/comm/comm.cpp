//===- comm.cpp - MPI ranks and collectives of data-parallel training -----===//
//
// Implements fcc/runtime/comm.h. Collectives are MPI's non-blocking ones
// (MPI_Iallreduce, MPI_Iallgather[v]) polled with MPI_Test until they finish
// or the deadline passes, yielding the processor between polls so that
// oversubscribed ranks (CI runs 4 ranks on 2 cores) make progress. Half
// precision payloads are summed by MPI user ops in half precision, like
// NCCL's fp16 all-reduce. Variable-size (threshold) payloads exchange their
// lengths first and then move only the bytes in use.
//
//===----------------------------------------------------------------------===//
#include "fcc/runtime/comm.h"
#include "fcc/runtime/comm_seeds.h"

#include <mpi.h>
#include <sched.h>
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

struct CommState {
  bool mpi = false;
  int rank = 0, size = 1;
  int localRank = 0, localSize = 1;
  void (*statsSource)(fcc_comm_stats *) = nullptr;
  double timeout = 300;
  fcc_comm_stats stats{};
  std::vector<std::unique_ptr<char[]>> buffers;
  MPI_Op sumF16 = MPI_OP_NULL, sumBF16 = MPI_OP_NULL;
  std::string description = "one process, no MPI";
} S;

double now() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

/// Adds the time since construction to a statistic.
struct Timer {
  double &total;
  double start = now();
  explicit Timer(double &total) : total(total) {}
  ~Timer() { total += now() - start; }
};

constexpr int kCensusTag = 0xfcc;

/// After a collective timed out: which ranks still answer? Every live rank
/// that timed out (they all wait in the same collective) sends one byte to
/// every other rank and listens for theirs during a grace period; ranks
/// that say nothing are reported lost.
std::string lostRanks() {
  double grace = std::min(std::max(S.timeout, 1.0), 30.0);
  std::vector<char> in(size_t(S.size), 0), out(size_t(S.size), 1);
  std::vector<MPI_Request> sends, recvs(size_t(S.size), MPI_REQUEST_NULL);
  for (int r = 0; r < S.size; ++r) {
    if (r == S.rank)
      continue;
    MPI_Request req;
    MPI_Isend(&out[size_t(r)], 1, MPI_CHAR, r, kCensusTag, MPI_COMM_WORLD,
              &req);
    sends.push_back(req);
    MPI_Irecv(&in[size_t(r)], 1, MPI_CHAR, r, kCensusTag, MPI_COMM_WORLD,
              &recvs[size_t(r)]);
  }
  double start = now();
  while (now() - start < grace) {
    int all = 1;
    for (int r = 0; r < S.size; ++r) {
      int done = 1;
      if (recvs[size_t(r)] != MPI_REQUEST_NULL)
        MPI_Test(&recvs[size_t(r)], &done, MPI_STATUS_IGNORE);
      all &= done;
    }
    if (all)
      break;
    sched_yield();
  }
  std::string lost;
  for (int r = 0; r < S.size; ++r)
    if (r != S.rank && !in[size_t(r)])
      lost += (lost.empty() ? "" : ", ") + std::to_string(r);
  return lost;
}

/// Polls `req` to completion; past the deadline, names the ranks that no
/// longer answer and ends the job.
void wait(MPI_Request *req, const char *what) {
  double start = now();
  for (unsigned spins = 0;; ++spins) {
    int done = 0;
    MPI_Test(req, &done, MPI_STATUS_IGNORE);
    if (done)
      return;
    if (spins >= 64)
      sched_yield();
    if (S.timeout > 0 && (spins & 1023) == 0 && now() - start > S.timeout) {
      std::string lost = lostRanks();
      std::fprintf(stderr,
                   "fcc: rank %d of %d: %s did not complete within %g s "
                   "(--comm-timeout); %s; ending the job\n",
                   S.rank, S.size, what, S.timeout,
                   lost.empty()
                       ? "every rank still answers, so one of them is stuck"
                       : ("lost rank " + lost + " (no answer)").c_str());
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 4);
      std::_Exit(4);
    }
  }
}

/// This rank's own randomness (stochastic rounding); RandomK's shared
/// positions come from fcc_comm_shared_seed.
uint64_t privateSeed(uint64_t step, int64_t tensor) {
  return fcc_comm_private_seed(step, tensor, S.rank);
}

void sumHalves(void *in, void *inout, int *len, MPI_Datatype *, int method) {
  fcc_compressor c{};
  c.method = method;
  fcc_payload_sum(&c, inout, in, *len);
}
void sumF16(void *in, void *inout, int *len, MPI_Datatype *t) {
  sumHalves(in, inout, len, t, FCC_COMPRESS_FP16);
}
void sumBF16(void *in, void *inout, int *len, MPI_Datatype *t) {
  sumHalves(in, inout, len, t, FCC_COMPRESS_BF16);
}

bool launchedByMpi() {
  for (const char *v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK",
                        "MPI_LOCALNRANKS"})
    if (std::getenv(v))
      return true;
  return false;
}

int countOf(int64_t n, const char *what) {
  if (n > int64_t(0x7fffffff)) {
    std::fprintf(stderr, "fcc: %s of %lld elements exceeds MPI's int count\n",
                 what, (long long)n);
    fcc_comm_abort(1);
  }
  return int(n);
}

} // namespace

extern "C" {

int fcc_comm_init(int *argc, char ***argv, double timeout, char *err,
                  size_t errsize) {
  S.timeout = timeout;
  if (!launchedByMpi())
    return 0;
  int ready = 0;
  MPI_Initialized(&ready);
  if (!ready) {
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) !=
        MPI_SUCCESS) {
      std::snprintf(err, errsize, "MPI_Init_thread failed");
      return 1;
    }
  }
  S.mpi = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &S.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &S.size);
  MPI_Comm node;
  if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, S.rank,
                          MPI_INFO_NULL, &node) == MPI_SUCCESS) {
    MPI_Comm_rank(node, &S.localRank);
    MPI_Comm_size(node, &S.localSize);
    MPI_Comm_free(&node);
  }
  MPI_Op_create(&sumF16, 1, &S.sumF16);
  MPI_Op_create(&sumBF16, 1, &S.sumBF16);
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(version, &len);
  std::string v(version, size_t(len));
  v = v.substr(0, v.find_first_of(",\n"));
  S.description = "MPI (" + v + ")";
  return 0;
}

void fcc_comm_finalize(void) {
  S.buffers.clear();
  if (!S.mpi)
    return;
  MPI_Op_free(&S.sumF16);
  MPI_Op_free(&S.sumBF16);
  MPI_Finalize();
  S.mpi = false;
}

int fcc_comm_rank(void) { return S.rank; }
int fcc_comm_size(void) { return S.size; }
int fcc_comm_local_rank(void) { return S.localRank; }
int fcc_comm_local_size(void) { return S.localSize; }
const char *fcc_comm_describe(void) { return S.description.c_str(); }

void fcc_comm_abort(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  if (S.mpi && S.size > 1)
    MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

void fcc_comm_compress(const fcc_compressor *c, int64_t tensor,
                       const float *g, int64_t n, uint64_t step_seed,
                       void *payload) {
  Timer t(S.stats.compress_seconds);
  fcc_compress(c, g, n, fcc_comm_shared_seed(step_seed, tensor),
               privateSeed(step_seed, tensor), payload);
}

void fcc_comm_decompress(const fcc_compressor *c, int64_t tensor,
                         const void *payload, int64_t n, uint64_t step_seed,
                         float *out) {
  Timer t(S.stats.compress_seconds);
  std::memset(out, 0, size_t(n) * sizeof(float));
  fcc_decompress_add(c, payload, n, fcc_comm_shared_seed(step_seed, tensor),
                     1.0f, out);
}

void fcc_comm_decompress_mean(const fcc_compressor *c, int64_t tensor,
                              const void *rows, int64_t capacity, int64_t n,
                              uint64_t step_seed, float *out) {
  Timer t(S.stats.compress_seconds);
  std::memset(out, 0, size_t(n) * sizeof(float));
  uint64_t seed = fcc_comm_shared_seed(step_seed, tensor);
  float scale = 1.0f / float(S.size);
  for (int r = 0; r < S.size; ++r)
    fcc_decompress_add(c, static_cast<const char *>(rows) + r * capacity, n,
                       seed, scale, out);
}

void fcc_comm_residual(const fcc_compressor *c, int64_t tensor,
                       const float *g, const void *payload, int64_t n,
                       uint64_t step_seed, float *out) {
  Timer t(S.stats.compress_seconds);
  if (out != g)
    std::memcpy(out, g, size_t(n) * sizeof(float));
  fcc_decompress_add(c, payload, n, fcc_comm_shared_seed(step_seed, tensor),
                     -1.0f, out);
}

void fcc_comm_allreduce_f32(const float *in, float *out, int64_t n,
                            int average) {
  if (in != out)
    std::memcpy(out, in, size_t(n) * sizeof(float));
  if (S.size == 1)
    return;
  Timer t(S.stats.comm_seconds);
  MPI_Request req;
  MPI_Iallreduce(MPI_IN_PLACE, out, countOf(n, "all-reduce"), MPI_FLOAT,
                 MPI_SUM, MPI_COMM_WORLD, &req);
  wait(&req, "an all-reduce of gradients");
  S.stats.bytes_sent += uint64_t(n) * 4;
  S.stats.collectives += 1;
  if (average) {
    float scale = 1.0f / float(S.size);
    for (int64_t i = 0; i < n; ++i)
      out[i] *= scale;
  }
}

void fcc_comm_allreduce_payload(const fcc_compressor *c, const void *in,
                                void *out, int64_t bytes, int64_t n,
                                int average) {
  if (in != out)
    std::memcpy(out, in, size_t(bytes));
  if (S.size == 1)
    return;
  Timer t(S.stats.comm_seconds);
  bool half = c->method == FCC_COMPRESS_FP16 || c->method == FCC_COMPRESS_BF16;
  MPI_Request req;
  if (half)
    MPI_Iallreduce(MPI_IN_PLACE, out, countOf(bytes / 2, "all-reduce"),
                   MPI_UINT16_T,
                   c->method == FCC_COMPRESS_FP16 ? S.sumF16 : S.sumBF16,
                   MPI_COMM_WORLD, &req);
  else
    MPI_Iallreduce(MPI_IN_PLACE, out, countOf(bytes / 4, "all-reduce"),
                   MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req);
  wait(&req, "an all-reduce of compressed gradients");
  S.stats.bytes_sent += uint64_t(bytes);
  S.stats.collectives += 1;
  if (average)
    fcc_payload_scale(c, out, n, 1.0f / float(S.size));
}

void *fcc_comm_gather_buffer(int64_t capacity) {
  S.buffers.emplace_back(new char[size_t(capacity) * size_t(S.size)]());
  return S.buffers.back().get();
}

void fcc_comm_allgather(const fcc_compressor *c, const void *payload,
                        int64_t n, int64_t capacity, void *rows) {
  int64_t used = fcc_compress_payload_bytes(c, payload, n);
  if (S.size == 1) {
    std::memcpy(rows, payload, size_t(used));
    return;
  }
  Timer t(S.stats.comm_seconds);
  MPI_Request req;
  if (fcc_compress_fixed_size(c)) {
    int count = countOf(capacity, "all-gather");
    MPI_Iallgather(payload, count, MPI_BYTE, rows, count, MPI_BYTE,
                   MPI_COMM_WORLD, &req);
    wait(&req, "an all-gather of compressed gradients");
    S.stats.collectives += 1;
  } else {
    // Lengths first, then only the bytes in use.
    std::vector<int64_t> lengths(size_t(S.size));
    MPI_Iallgather(&used, 1, MPI_INT64_T, lengths.data(), 1, MPI_INT64_T,
                   MPI_COMM_WORLD, &req);
    wait(&req, "an all-gather of payload sizes");
    std::vector<int> counts(size_t(S.size)), displs(size_t(S.size));
    for (int r = 0; r < S.size; ++r) {
      counts[size_t(r)] = countOf(lengths[size_t(r)], "all-gather");
      displs[size_t(r)] = countOf(int64_t(r) * capacity, "all-gather");
    }
    MPI_Iallgatherv(payload, countOf(used, "all-gather"), MPI_BYTE, rows,
                    counts.data(), displs.data(), MPI_BYTE, MPI_COMM_WORLD,
                    &req);
    wait(&req, "an all-gather of compressed gradients");
    S.stats.bytes_sent += sizeof(int64_t);
    S.stats.collectives += 2;
  }
  S.stats.bytes_sent += uint64_t(used);
}

void fcc_comm_allreduce_f64(double *x, int64_t n, int max) {
  if (S.size == 1)
    return;
  MPI_Request req;
  MPI_Iallreduce(MPI_IN_PLACE, x, countOf(n, "all-reduce"), MPI_DOUBLE,
                 max ? MPI_MAX : MPI_SUM, MPI_COMM_WORLD, &req);
  wait(&req, "an all-reduce of the trainer's state");
}

void fcc_comm_allgather_u64(uint64_t value, uint64_t *out) {
  if (S.size == 1) {
    out[0] = value;
    return;
  }
  MPI_Request req;
  MPI_Iallgather(&value, 1, MPI_UINT64_T, out, 1, MPI_UINT64_T,
                 MPI_COMM_WORLD, &req);
  wait(&req, "an all-gather of the trainer's settings");
}

int fcc_comm_any(int flag) {
  double v = flag ? 1.0 : 0.0;
  fcc_comm_allreduce_f64(&v, 1, 1);
  return v > 0;
}

void fcc_comm_broadcast(void *data, int64_t bytes, int root) {
  if (S.size == 1)
    return;
  MPI_Request req;
  MPI_Ibcast(data, countOf(bytes, "broadcast"), MPI_BYTE, root,
             MPI_COMM_WORLD, &req);
  wait(&req, "a broadcast of the trainer's state");
}

void fcc_comm_take_stats(fcc_comm_stats *out) {
  *out = S.stats;
  S.stats = fcc_comm_stats{};
  if (S.statsSource) {
    fcc_comm_stats more{};
    S.statsSource(&more);
    out->bytes_sent += more.bytes_sent;
    out->collectives += more.collectives;
    out->compress_seconds += more.compress_seconds;
    out->comm_seconds += more.comm_seconds;
  }
}

void fcc_comm_set_stats_source(void (*take)(fcc_comm_stats *)) {
  S.statsSource = take;
}

} // extern "C"
