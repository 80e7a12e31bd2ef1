//===- Schedule.h - Piecewise-linear learning-rate schedule ---------------===//
//
// The --lr-knots schedule "E0:LR0,E1:LR1,...": the learning rate is linear
// between consecutive knots in fractional epochs (epoch = step /
// steps_per_epoch), LR0 before the first knot and the last LR after the last
// one. Epochs must not decrease; two knots at the same epoch make a jump (the
// later knot applies from that epoch on).
//
//===----------------------------------------------------------------------===//
#ifndef FCC_TRAINER_SCHEDULE_H
#define FCC_TRAINER_SCHEDULE_H

#include <stdexcept>
#include <string>
#include <vector>

namespace fcc::trainer {

class LrSchedule {
public:
  struct Knot {
    double epoch, lr;
  };

  // Parses "E0:LR0,E1:LR1,...". Throws std::invalid_argument with a message
  // (without the flag name) that says what is wrong.
  static LrSchedule parse(const std::string &text);

  // The learning rate at a fractional epoch.
  double at(double epoch) const;
  // The learning rate of (0-based) step `step`: at(step / stepsPerEpoch).
  double atStep(int64_t step, int64_t stepsPerEpoch) const {
    return at(double(step) / double(stepsPerEpoch));
  }

  const std::vector<Knot> &knots() const { return knots_; }
  // "0:0,5:0.4,24:0" (shortest round-trip form of each number).
  std::string toString() const;

private:
  std::vector<Knot> knots_;
};

} // namespace fcc::trainer

#endif // FCC_TRAINER_SCHEDULE_H
