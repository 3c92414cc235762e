// dpctl: the dpengine control tool. Thin: reads the command line, picks the verb and hands it
// the rest; a verb's Failure becomes "dpctl: MESSAGE" and its exit status.
#include "options.hpp"
#include "verbs.hpp"

#include <cstdio>
#include <exception>

namespace {

int dispatch(const dpctl::CommandLine& cl) {
    const std::string& verb = cl.verb;
    if (verb == "status") return dpctl::status_verb(cl.options, cl.args);
    if (verb == "ranks") return dpctl::ranks_verb(cl.options, cl.args);
    if (verb == "start" || verb == "stop" || verb == "restart" || verb == "drain" || verb == "undrain") {
        return dpctl::rank_action_verb(verb, cl.options, cl.args);
    }
    if (verb == "start-node" || verb == "stop-node") return dpctl::node_action_verb(verb, cl.options, cl.args);
    if (verb == "reload") return dpctl::reload_verb(cl.options, cl.args);
    if (verb == "logs") return dpctl::logs_verb(cl.options, cl.args);
    if (verb == "keys") return dpctl::keys_verb(cl.args);
    if (verb == "nodes") return dpctl::nodes_verb(cl.options, cl.args);
    if (verb == "assign") return dpctl::assign_verb(cl.options, cl.args);
    if (verb == "version") {
        std::printf("dpctl %s\n", DPENGINE_VERSION);
        return dpctl::exit_status::ok;
    }
    throw dpctl::UsageError{"unknown command '" + verb + "'"};
}

}  // namespace

int main(int argc, char** argv) {
    try {
        auto cl = dpctl::parse_command_line(argc, argv);
        if (cl.help) {
            std::fputs(dpctl::help(), stdout);
            return dpctl::exit_status::ok;
        }
        return dispatch(cl);
    } catch (const dpctl::UsageError& e) {
        std::fprintf(stderr, "dpctl: %s; see 'dpctl --help'\n", e.message.c_str());
        return dpctl::exit_status::invalid_arguments;
    } catch (const dpctl::Failure& e) {
        std::fprintf(stderr, "dpctl: %s\n", e.what());
        return e.status;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "dpctl: %s\n", e.what());
        return dpctl::exit_status::failure;
    }
}
