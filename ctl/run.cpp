#include "run.hpp"

#include "options.hpp"
#include "verb_table.hpp"

#include <cstdio>
#include <exception>

namespace dpctl {

int run(int argc, char** argv) {
    try {
        auto cl = parse_command_line(argc, argv);
        if (cl.help) {
            std::fputs(help(), stdout);
            return exit_status::ok;
        }
        return dispatch_verb(verbs(), "", cl.verb, cl.options, cl.args);
    } catch (const UsageError& e) {
        std::fprintf(stderr, "dpctl: %s; see 'dpctl --help'\n", e.message.c_str());
        return exit_status::invalid_arguments;
    } catch (const Failure& e) {
        std::fprintf(stderr, "dpctl: %s\n", e.what());
        return e.status;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "dpctl: %s\n", e.what());
        return exit_status::failure;
    }
}

}  // namespace dpctl
