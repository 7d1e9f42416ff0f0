// The register model of the emulated device: how many registers ptxas gives
// each kernel's threads (written at build time by register_model.py from
// nvcc's -Xptxas -v report, read from HETERMOE_EMULATED_REGISTERS), so that a
// launch whose block needs more registers than an SM holds (65536; per warp
// in units of 256) fails with cudaErrorLaunchOutOfResources as on a GPU,
// instead of running here and failing only on the hardware. A kernel that
// declares __launch_bounds__ gets a register budget that fits its bound from
// ptxas, so this is what catches a missing or too small bound.
#pragma once

#include <string>

namespace hetermoe::emulator {

// Registers per thread of `kernel` (a launch's name: namespaces and template
// arguments are ignored, and a pointer named <Kernel>_<what> is <Kernel>);
// 0 when the model does not know it.
int KernelRegisters(const std::string& kernel);
// For tests: adds or replaces one kernel's entry.
void SetKernelRegisters(const std::string& kernel, int registers);
// Whether a block of `threads` threads of a kernel using `registers` each
// fits on one SM.
bool RegistersFit(int registers, unsigned long long threads);

}  // namespace hetermoe::emulator
