// dpengined: the dpengine node daemon. Parses the configuration, then runs the node.
#include "core/config.hpp"
#include "bus/bus_service.hpp"
#include "core/exit_codes.hpp"
#include "core/fd_limit.hpp"
#include "node/manager.hpp"

#include <cstdio>

int main(int argc, char** argv) {
    dpengine::CommandLine cmdline;
    auto config = dpengine::parse_command_line(argc, argv, cmdline);
    for (const auto& warning : cmdline.warnings) std::fprintf(stderr, "dpengined: warning: %s\n", warning.c_str());
    if (cmdline.help) {
        std::fputs(dpengine::usage_text().c_str(), stdout);
        return dpengine::exit_code::ok;
    }
    if (cmdline.bus_introspect) {
        std::fputs(dpengine::BusService::introspection_xml(), stdout);
        return dpengine::exit_code::ok;
    }
    if (cmdline.version) {
        std::printf("dpengined %s\n", DPENGINE_VERSION);
        return dpengine::exit_code::ok;
    }
    if (!config) {
        std::fprintf(stderr, "dpengined: %s\n", config.error().message.c_str());
        return config.error().reason() == dpengine::Reason::usage ? dpengine::exit_code::usage
                                                                  : dpengine::exit_code::config;
    }
    if (config->has_remote_ranks() && config->security.insecure) {
        std::fprintf(stderr,
                     "dpengined: warning: security.insecure is set: traffic between nodes is plaintext and "
                     "unauthenticated; use it only on an isolated test network\n");
    }
    if (cmdline.check_config) {
        std::fputs(dpengine::to_toml(*config).c_str(), stdout);
        return dpengine::exit_code::ok;
    }
    // Every client connection is a descriptor: the soft limit of a login shell (1024) would be
    // a few hundred clients. The front-end keeps its connections within what this gives.
    dpengine::raise_open_file_limit();
    return dpengine::run_node(*config, std::vector<std::string>(argv, argv + argc));
}
