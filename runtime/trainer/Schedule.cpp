//===- Schedule.cpp - Piecewise-linear learning-rate schedule -------------===//
//
// Implements Schedule.h: strict parsing of --lr-knots (every number checked,
// clear messages) and the interpolation used for every training step.
//
//===----------------------------------------------------------------------===//
#include "Schedule.h"

#include "Metrics.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace fcc::trainer {

namespace {

std::string trim(const std::string &s) {
  size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// A finite number or an exception naming `what` and the knot.
double number(const std::string &text, const char *what,
              const std::string &knot) {
  std::string t = trim(text);
  char *end = nullptr;
  double v = t.empty() ? 0.0 : std::strtod(t.c_str(), &end);
  if (t.empty() || *end != '\0')
    throw std::invalid_argument("knot '" + knot + "': " + what + " '" + t +
                                "' is not a number");
  if (!std::isfinite(v))
    throw std::invalid_argument("knot '" + knot + "': " + what + " '" + t +
                                "' is not finite");
  return v;
}

} // namespace

LrSchedule LrSchedule::parse(const std::string &text) {
  LrSchedule s;
  if (trim(text).empty())
    throw std::invalid_argument("empty; expected E0:LR0,E1:LR1,... (epochs "
                                "and learning rates, e.g. 0:0,5:0.4,24:0)");
  size_t start = 0;
  for (;;) {
    size_t comma = text.find(',', start);
    std::string knot = trim(text.substr(start, comma - start));
    size_t colon = knot.find(':');
    if (knot.empty() || colon == std::string::npos ||
        knot.find(':', colon + 1) != std::string::npos)
      throw std::invalid_argument("knot '" + knot +
                                  "' is not EPOCH:LR (e.g. 5:0.4)");
    double epoch = number(knot.substr(0, colon), "epoch", knot);
    double lr = number(knot.substr(colon + 1), "learning rate", knot);
    if (epoch < 0)
      throw std::invalid_argument("knot '" + knot + "': epoch is negative");
    if (lr < 0)
      throw std::invalid_argument("knot '" + knot +
                                  "': learning rate is negative");
    if (!s.knots_.empty() && epoch < s.knots_.back().epoch)
      throw std::invalid_argument(
          "knot '" + knot + "' comes after epoch " +
          formatShortest(s.knots_.back().epoch) + "; epochs must be in order");
    s.knots_.push_back({epoch, lr});
    if (comma == std::string::npos)
      break;
    start = comma + 1;
  }
  return s;
}

double LrSchedule::at(double epoch) const {
  if (knots_.empty())
    return 0.0;
  if (epoch < knots_.front().epoch)
    return knots_.front().lr;
  // First knot strictly after `epoch`; the segment starts at the one before.
  size_t i = 0;
  while (i < knots_.size() && knots_[i].epoch <= epoch)
    ++i;
  if (i == knots_.size())
    return knots_.back().lr;
  const Knot &a = knots_[i - 1], &b = knots_[i];
  return a.lr + (epoch - a.epoch) / (b.epoch - a.epoch) * (b.lr - a.lr);
}

std::string LrSchedule::toString() const {
  std::string out;
  for (const Knot &k : knots_) {
    if (!out.empty())
      out += ',';
    out += formatShortest(k.epoch) + ":" + formatShortest(k.lr);
  }
  return out;
}

} // namespace fcc::trainer
