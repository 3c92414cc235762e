// The open-file limit. The daemon raises its soft RLIMIT_NOFILE to the hard limit at start
// (a login shell's 1024 is a few hundred client connections), and the front-end keeps its
// connections within what the limit leaves.
#pragma once

#include <cstdint>

namespace dpengine {

// Raises the soft limit to the hard one; returns the soft limit in force afterwards.
uint64_t raise_open_file_limit();

// The soft limit in force now.
uint64_t open_file_limit();

}  // namespace dpengine
