//===- Metrics.cpp - What a trainer reports: console, JSON lines, TSV -----===//
//
// Implements Metrics.h. All numbers go through snprintf with explicit
// formats, so output is independent of the stream's locale and state.
//
//===----------------------------------------------------------------------===//
#include "Metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <ostream>

namespace fcc::trainer {

namespace {

std::string format(const char *fmt, ...) {
  char buf[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, args);
  va_end(args);
  return buf;
}

std::string jsonNumber(double v) {
  return std::isfinite(v) ? formatShortest(v) : "null";
}

// Byte counts: whole numbers print as integers (6040, not 6.04e+03).
std::string jsonCount(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9e15)
    return format("%.0f", v);
  return jsonNumber(v);
}

std::string seconds(double s) { return format("%.1fs", s); }

} // namespace

std::string formatShortest(double v) {
  char buf[32];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v)
      break;
  }
  return buf;
}

std::string formatShortestFloat(float v) {
  char buf[32];
  for (int precision = 1; precision <= 9; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, double(v));
    if (std::strtof(buf, nullptr) == v)
      break;
  }
  return buf;
}

std::string tableHeader() {
  return "epoch  lr      train loss  train acc  test loss  test acc  "
         "epoch time  total time";
}

std::string tableRow(const EpochRecord &r) {
  return format("%5d  %-6.4f  %10.4f  %9.4f  %9.4f  %8.4f  %10s  %10s",
                r.epoch, r.lr, r.trainLoss, r.trainAcc, r.testLoss, r.testAcc,
                seconds(r.epochTime).c_str(), seconds(r.totalTime).c_str());
}

std::string jsonLine(const EpochRecord &r) {
  double imagesPerSecond =
      r.epochTime > 0 ? double(r.trainImages) / r.epochTime : 0.0;
  std::string s = "{";
  s += "\"run\":" + std::to_string(r.run);
  s += ",\"seed\":" + std::to_string(r.seed);
  s += ",\"epoch\":" + std::to_string(r.epoch);
  s += ",\"lr\":" + jsonNumber(r.lr);
  s += ",\"train_loss\":" + jsonNumber(r.trainLoss);
  s += ",\"train_acc\":" + jsonNumber(r.trainAcc);
  s += ",\"test_loss\":" + jsonNumber(r.testLoss);
  s += ",\"test_acc\":" + jsonNumber(r.testAcc);
  s += ",\"epoch_time_s\":" + format("%.6f", r.epochTime);
  s += ",\"eval_time_s\":" + format("%.6f", r.evalTime);
  s += ",\"total_time_s\":" + format("%.6f", r.totalTime);
  s += ",\"train_images\":" + std::to_string(r.trainImages);
  s += ",\"test_images\":" + std::to_string(r.testImages);
  s += ",\"steps\":" + std::to_string(r.steps);
  s += ",\"skipped_steps\":" + std::to_string(r.skippedSteps);
  s += ",\"loss_scale\":" + jsonNumber(r.lossScale);
  s += ",\"images_per_s\":" + format("%.1f", imagesPerSecond);
  s += ",\"ranks\":" + std::to_string(r.ranks);
  if (!r.commBytesPerStep.empty()) {
    s += ",\"comm_bytes_per_step\":" + jsonCount(r.commBytesPerStep[0]);
    s += ",\"comm_bytes_per_step_by_rank\":[";
    for (size_t k = 0; k < r.commBytesPerStep.size(); ++k)
      s += (k ? "," : "") + jsonCount(r.commBytesPerStep[k]);
    s += "]";
    s += ",\"comm_bytes_epoch_by_rank\":[";
    for (size_t k = 0; k < r.commBytesEpoch.size(); ++k)
      s += (k ? "," : "") + jsonCount(r.commBytesEpoch[k]);
    s += "]";
    s += ",\"dense_fp32_bytes_per_step\":" + jsonCount(r.denseBytesPerStep);
    double sent = r.commBytesPerStep[0];
    s += ",\"compression_ratio_fp32\":" +
         jsonNumber(sent > 0 ? r.denseBytesPerStep / sent : 0.0);
    s += ",\"compression_ratio_fp16\":" +
         jsonNumber(sent > 0 ? r.denseBytesPerStep / 2 / sent : 0.0);
    s += ",\"compress_time_s\":" + format("%.6f", r.compressSeconds);
    s += ",\"comm_time_s\":" + format("%.6f", r.commSeconds);
  }
  s += "}";
  return s;
}

std::string commLine(const EpochRecord &r) {
  if (r.commBytesPerStep.empty())
    return "";
  double sent = r.commBytesPerStep[0];
  std::string line = "          comm: " +
                     format("%.4g", sent / 1e6) + " MB/step sent by rank 0";
  if (r.commBytesPerStep.size() > 1) {
    line += " (ranks:";
    for (double b : r.commBytesPerStep)
      line += " " + format("%.4g", b / 1e6);
    line += ")";
  }
  if (sent > 0)
    line += format(", %.2fx smaller than dense fp32", r.denseBytesPerStep / sent) +
            format(" (%.2fx than fp16)", r.denseBytesPerStep / 2 / sent);
  line += format("; compress %.3f s, communicate %.3f s", r.compressSeconds,
                 r.commSeconds);
  return line;
}

void ProgressBar::update(int epoch, int epochs, int64_t step, int64_t steps,
                         double runningLoss, double imagesPerSecond) {
  if (!on_)
    return;
  auto now = std::chrono::steady_clock::now();
  if (drawn_ && step < steps && now - last_ < std::chrono::milliseconds(100))
    return;
  last_ = now;
  constexpr int kBar = 24;
  int filled = steps > 0 ? int(kBar * step / steps) : kBar;
  std::string bar(size_t(filled), '=');
  if (filled < kBar)
    bar += '>' + std::string(size_t(kBar - filled - 1), ' ');
  std::string line =
      format("  epoch %d/%d [%s] %lld/%lld  loss %.4f  %.0f img/s", epoch,
             epochs, bar.c_str(), (long long)step, (long long)steps,
             runningLoss, imagesPerSecond);
  std::string padding(width_ > line.size() ? width_ - line.size() : 0, ' ');
  out_ << '\r' << line << padding << std::flush;
  width_ = std::max(width_, line.size());
  drawn_ = true;
}

void ProgressBar::clear() {
  if (!on_ || !drawn_)
    return;
  out_ << '\r' << std::string(width_, ' ') << '\r' << std::flush;
  drawn_ = false;
}

bool TsvWriter::open(const std::string &path, bool withRunColumn,
                     bool append) {
  withRun_ = withRunColumn;
  bool header = true;
  if (append) {
    std::ifstream existing(path, std::ios::binary);
    header = !existing || existing.peek() == std::ifstream::traits_type::eof();
  }
  file_.open(path, std::ios::out | (append ? std::ios::app : std::ios::trunc));
  if (!file_)
    return false;
  if (header)
    file_ << (withRun_ ? "run\t" : "") << "epoch\thours\ttop1Accuracy\n"
          << std::flush;
  return bool(file_);
}

void TsvWriter::add(const EpochRecord &r) {
  if (!file_.is_open())
    return;
  if (withRun_)
    file_ << r.run << '\t';
  file_ << format("%d\t%.8f\t%.2f\n", r.epoch, r.totalTime / 3600.0,
                  r.testAcc * 100.0)
        << std::flush;
}

bool JsonLinesWriter::open(const std::string &path, bool append) {
  file_.open(path, std::ios::out | (append ? std::ios::app : std::ios::trunc));
  return bool(file_);
}

void JsonLinesWriter::add(const EpochRecord &r) {
  if (file_.is_open())
    file_ << jsonLine(r) << '\n' << std::flush;
}

std::string runSummaryLine(const RunSummary &s,
                           std::optional<double> targetAcc) {
  double imagesPerSecond =
      s.trainTime > 0 ? double(s.trainImages) / s.trainTime : 0.0;
  std::string line = format(
      "run %d (seed %llu): test acc %.4f, test loss %.4f; %d epoch%s, %.2f s "
      "of training (setup and evaluation excluded), %.0f images/s",
      s.run, (unsigned long long)s.seed, s.testAcc, s.testLoss, s.epochs,
      s.epochs == 1 ? "" : "s", s.trainTime, imagesPerSecond);
  if (targetAcc) {
    if (s.targetEpoch > 0)
      line += format("; first reached %.4g at epoch %d after %.2f s%s",
                     *targetAcc, s.targetEpoch, s.targetTime,
                     s.testAcc < *targetAcc ? " but ended below it" : "");
    else
      line += format("; did not reach %.4g", *targetAcc);
  }
  return line;
}

double median(std::vector<double> v) {
  if (v.empty())
    return 0.0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string distributionSummary(const std::vector<RunSummary> &runs,
                                std::optional<double> targetAcc) {
  if (runs.empty())
    return "";
  std::vector<double> acc;
  double time = 0;
  for (const RunSummary &r : runs) {
    acc.push_back(r.testAcc);
    time += r.trainTime;
  }
  double mean = std::accumulate(acc.begin(), acc.end(), 0.0) / acc.size();
  auto [lo, hi] = std::minmax_element(acc.begin(), acc.end());
  std::string s = format(
      "%zu runs (seeds %llu..%llu): final test acc min %.4f  median %.4f  "
      "mean %.4f  max %.4f; mean training time %.2f s",
      runs.size(), (unsigned long long)runs.front().seed,
      (unsigned long long)runs.back().seed, *lo, median(acc), mean, *hi,
      time / runs.size());
  if (targetAcc) {
    size_t reached = 0;
    for (const RunSummary &r : runs)
      reached += r.testAcc >= *targetAcc;
    s += format("\ntarget %.4g: final test acc reached it in %zu/%zu runs "
                "(%.1f%%)",
                *targetAcc, reached, runs.size(),
                100.0 * double(reached) / double(runs.size()));
  }
  return s;
}

} // namespace fcc::trainer
