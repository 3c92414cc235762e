// dpctl's verbs: one function each, taking the arguments after the verb and returning the exit
// status (documented in dpctl(1)).
#pragma once

#include <string>
#include <vector>

namespace dpctl {

namespace exit_status {
inline constexpr int ok = 0;
inline constexpr int failure = 1;
inline constexpr int invalid_arguments = 2;
}  // namespace exit_status

using Args = std::vector<std::string>;

int keys_verb(const Args& args);

}  // namespace dpctl
