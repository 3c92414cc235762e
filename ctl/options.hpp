// dpctl's command line and its --help text.
#pragma once

#include "verbs.hpp"

#include <string>

namespace dpctl {

// A mistake on the command line (exit status 2, "see 'dpctl --help'").
struct UsageError {
    std::string message;
};

struct CommandLine {
    bool help = false;
    std::string verb;  // "status" when none was given
    Args args;         // after the verb, in order
    Options options;
};

// Throws UsageError.
CommandLine parse_command_line(int argc, char** argv);
const char* help();

}  // namespace dpctl
