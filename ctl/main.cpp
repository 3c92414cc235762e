// dpctl: the dpengine control tool. Thin: picks the verb and hands it the rest.
#include "verbs.hpp"

#include <cstdio>
#include <cstring>

namespace {

void print_help() {
    std::printf("dpctl [OPTIONS...] COMMAND ...\n\n"
                "Controls the dpengine node daemon.\n\n"
                "Commands:\n"
                "  keys generate PATH [--node NAME] [--force]\n"
                "                          Create a CURVE key pair: PATH (secret) and PATH.pub\n"
                "  keys show PATH          Print the public key of a key file\n"
                "  version                 Show the version\n\n"
                "Options:\n"
                "  -h --help               Show this help\n"
                "     --version            Show the version\n\n"
                "See dpctl(1).\n");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help")) {
        print_help();
        return argc < 2 ? dpctl::exit_status::invalid_arguments : dpctl::exit_status::ok;
    }
    std::string verb = argv[1];
    dpctl::Args args(argv + 2, argv + argc);
    if (verb == "version" || verb == "--version") {
        std::printf("dpctl %s\n", DPENGINE_VERSION);
        return dpctl::exit_status::ok;
    }
    if (verb == "keys") return dpctl::keys_verb(args);
    std::fprintf(stderr, "dpctl: unknown command '%s'; see 'dpctl --help'\n", verb.c_str());
    return dpctl::exit_status::invalid_arguments;
}
