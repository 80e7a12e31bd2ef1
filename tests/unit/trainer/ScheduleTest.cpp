//===- ScheduleTest.cpp - The --lr-knots schedule -------------------------===//
//
// Expected learning rates are worked out by hand from the knots (linear
// interpolation between consecutive knots, flat outside them).
//
//===----------------------------------------------------------------------===//
#include "Schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <string>

using fcc::trainer::LrSchedule;

namespace {

// The message of the std::invalid_argument that parse() throws, or "" when it
// does not throw.
std::string parseError(const std::string &text) {
  try {
    LrSchedule::parse(text);
  } catch (const std::invalid_argument &e) {
    return e.what();
  }
  return "";
}

TEST(Schedule, ParsesKnots) {
  LrSchedule s = LrSchedule::parse("0:0,5:0.4,24:0");
  ASSERT_EQ(s.knots().size(), 3u);
  EXPECT_EQ(s.knots()[0].epoch, 0.0);
  EXPECT_EQ(s.knots()[0].lr, 0.0);
  EXPECT_EQ(s.knots()[1].epoch, 5.0);
  EXPECT_EQ(s.knots()[1].lr, 0.4);
  EXPECT_EQ(s.knots()[2].epoch, 24.0);
  EXPECT_EQ(s.knots()[2].lr, 0.0);
}

TEST(Schedule, ToleratesSpacesAndExponents) {
  LrSchedule s = LrSchedule::parse(" 0 : 1e-3 , 2.5:4E-1 ");
  ASSERT_EQ(s.knots().size(), 2u);
  EXPECT_EQ(s.knots()[0].epoch, 0.0);
  EXPECT_EQ(s.knots()[0].lr, 0.001);
  EXPECT_EQ(s.knots()[1].epoch, 2.5);
  EXPECT_EQ(s.knots()[1].lr, 0.4);
}

TEST(Schedule, InterpolatesLinearly) {
  LrSchedule s = LrSchedule::parse("0:0,5:0.4,24:0");
  EXPECT_DOUBLE_EQ(s.at(0), 0.0);
  EXPECT_DOUBLE_EQ(s.at(1), 0.08);      // 0.4 * 1/5
  EXPECT_DOUBLE_EQ(s.at(2.5), 0.2);     // half way up
  EXPECT_DOUBLE_EQ(s.at(5), 0.4);       // the peak
  EXPECT_DOUBLE_EQ(s.at(14.5), 0.2);    // half way down: 0.4 * 9.5/19
  EXPECT_DOUBLE_EQ(s.at(23), 0.4 / 19); // 0.4 * 1/19
  EXPECT_DOUBLE_EQ(s.at(24), 0.0);
}

TEST(Schedule, FlatOutsideTheKnots) {
  LrSchedule s = LrSchedule::parse("1:0.5,3:0.1");
  EXPECT_DOUBLE_EQ(s.at(-2), 0.5); // before the first knot: LR0
  EXPECT_DOUBLE_EQ(s.at(0), 0.5);
  EXPECT_DOUBLE_EQ(s.at(0.999), 0.5);
  EXPECT_DOUBLE_EQ(s.at(2), 0.3);
  EXPECT_DOUBLE_EQ(s.at(3), 0.1);
  EXPECT_DOUBLE_EQ(s.at(100), 0.1); // after the last knot: the last LR
}

TEST(Schedule, SingleKnotIsConstant) {
  LrSchedule s = LrSchedule::parse("3:0.25");
  for (double e : {0.0, 2.9, 3.0, 3.1, 1e6})
    EXPECT_DOUBLE_EQ(s.at(e), 0.25) << "epoch " << e;
}

TEST(Schedule, EqualEpochsMakeAJump) {
  // 1 until epoch 2, then 0.1 from epoch 2 on, decaying to 0 at epoch 4.
  LrSchedule s = LrSchedule::parse("0:1,2:1,2:0.1,4:0");
  EXPECT_DOUBLE_EQ(s.at(1), 1.0);
  EXPECT_DOUBLE_EQ(s.at(1.999), 1.0);
  EXPECT_DOUBLE_EQ(s.at(2), 0.1); // the later knot applies at the jump
  EXPECT_DOUBLE_EQ(s.at(3), 0.05);
  EXPECT_DOUBLE_EQ(s.at(4), 0.0);
  for (double e = 0; e <= 5; e += 0.125)
    EXPECT_TRUE(std::isfinite(s.at(e))) << "epoch " << e;
}

TEST(Schedule, JumpAtTheEnd) {
  LrSchedule s = LrSchedule::parse("0:0.2,1:0.2,1:0");
  EXPECT_DOUBLE_EQ(s.at(0.5), 0.2);
  EXPECT_DOUBLE_EQ(s.at(1), 0.0);
  EXPECT_DOUBLE_EQ(s.at(7), 0.0);
}

TEST(Schedule, AtStepUsesFractionalEpochs) {
  LrSchedule s = LrSchedule::parse("0:0,2:0.4");
  // 10 steps per epoch: step 5 is epoch 0.5 -> 0.1; step 15 -> 0.3.
  EXPECT_DOUBLE_EQ(s.atStep(0, 10), 0.0);
  EXPECT_DOUBLE_EQ(s.atStep(5, 10), 0.1);
  EXPECT_DOUBLE_EQ(s.atStep(15, 10), 0.3);
  EXPECT_DOUBLE_EQ(s.atStep(20, 10), 0.4);
  EXPECT_DOUBLE_EQ(s.atStep(1000, 10), 0.4);
}

TEST(Schedule, EmptyScheduleIsZero) {
  LrSchedule s;
  EXPECT_EQ(s.at(0), 0.0);
  EXPECT_EQ(s.toString(), "");
}

TEST(Schedule, ToStringIsShortestRoundTrip) {
  EXPECT_EQ(LrSchedule::parse("0:0,5:0.4,24:0").toString(), "0:0,5:0.4,24:0");
  EXPECT_EQ(LrSchedule::parse("0.50:1e-3, 2:0.10").toString(),
            "0.5:0.001,2:0.1");
  EXPECT_EQ(LrSchedule::parse("1:0.30000000000000004").toString(),
            "1:0.30000000000000004");
  // The text parses back to the same schedule.
  LrSchedule s = LrSchedule::parse("0:0.0123456789,3.3:1e-7,9:0");
  LrSchedule t = LrSchedule::parse(s.toString());
  ASSERT_EQ(s.knots().size(), t.knots().size());
  for (size_t i = 0; i < s.knots().size(); ++i) {
    EXPECT_EQ(s.knots()[i].epoch, t.knots()[i].epoch);
    EXPECT_EQ(s.knots()[i].lr, t.knots()[i].lr);
  }
}

TEST(Schedule, Errors) {
  struct Case {
    const char *text, *expected;
  } cases[] = {
      {"", "empty"},
      {"   ", "empty"},
      {"garbage", "knot 'garbage' is not EPOCH:LR"},
      {"0.4", "knot '0.4' is not EPOCH:LR"},
      {"1:2:3", "knot '1:2:3' is not EPOCH:LR"},
      {"0:0,,1:1", "knot '' is not EPOCH:LR"},
      {"0:0,", "knot '' is not EPOCH:LR"},
      {"a:1", "epoch 'a' is not a number"},
      {":1", "epoch '' is not a number"},
      {"1:", "learning rate '' is not a number"},
      {"1:0.1x", "learning rate '0.1x' is not a number"},
      {"1:inf", "learning rate 'inf' is not finite"},
      {"nan:1", "epoch 'nan' is not finite"},
      {"-1:0.1", "epoch is negative"},
      {"0:-0.1", "learning rate is negative"},
      {"2:0,1:0", "knot '1:0' comes after epoch 2; epochs must be in order"},
  };
  for (const Case &c : cases) {
    std::string message = parseError(c.text);
    EXPECT_NE(message, "") << "'" << c.text << "' should not parse";
    EXPECT_NE(message.find(c.expected), std::string::npos)
        << "'" << c.text << "' gave: " << message;
  }
}

} // namespace
