// Tests of common/schedule: every schedule's name reads back as itself, and an
// unknown name is refused with the choices.
#include "common/schedule.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace hetermoe {
namespace {

TEST(Schedule, NamesRoundTrip) {
  for (Schedule s : {Schedule::kZebra, Schedule::kSequential, Schedule::kEp}) {
    EXPECT_EQ(ScheduleFromName(ScheduleName(s)), s);
    EXPECT_EQ(ParseSchedule(ScheduleName(s)), s);
  }
  EXPECT_STREQ(ScheduleName(Schedule::kSequential), "sequential");
}

TEST(Schedule, UnknownNamesAreRefused) {
  EXPECT_EQ(ScheduleFromName("pipeline"), std::nullopt);
  EXPECT_EQ(ScheduleFromName("Zebra"), std::nullopt);
  try {
    ParseSchedule("pipeline");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "unknown schedule \"pipeline\" (zebra, sequential or ep)");
  }
}

}  // namespace
}  // namespace hetermoe
