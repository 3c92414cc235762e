// Files that hold secrets, or what stands for them (the front-end's API key hashes, its TLS
// private key): read only when nobody but their owner and group can read them, and nobody but
// their owner can change them.
#pragma once

#include "error.hpp"

#include <string>
#include <string_view>
#include <sys/types.h>

namespace dpengine {

// A file mode as chmod takes it: "0640".
std::string mode_text(mode_t mode);

// The text of PATH. Refused, with the chmod that fixes it, when others have any access to the
// file or its group may write it (so 0600, or 0640 for a file root owns and the service's
// group reads, pass); when it is not a regular file; or when it is larger than
// `max_bytes`. `what` names the file in errors ("frontend.api_keys").
Result<std::string> read_private_file(const std::string& path, std::string_view what, size_t max_bytes = 1 << 20);

}  // namespace dpengine
