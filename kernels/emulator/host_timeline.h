// For tests: the host's view of a run on the emulated device, in order:
// each kernel launch ("launch <kernel>") and each call that makes the host
// wait for the device ("wait <call>": a stream, event or device
// synchronisation, a synchronous copy, or an asynchronous copy into
// pageable host memory, which CUDA completes before returning). A test
// checks with it that a stretch of launches (a layer) has no wait inside:
// on a GPU each such wait drains the stream and leaves it idle until the
// host launches again.
#pragma once

#include <string>
#include <vector>

namespace hetermoe::emulator {

// Starts (clearing what was recorded) or stops recording, for every host
// thread of the process.
void RecordHostTimeline(bool on);
std::vector<std::string> TakeHostTimeline();

// Called by the runtime.
void NoteHostTimeline(const char* what, const char* name);

}  // namespace hetermoe::emulator
