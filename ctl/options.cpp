// dpctl's command line: global options anywhere, the first word is the verb, the rest its
// arguments (options of a verb's own, as its row in the verb table says, pass through to it).
#include "options.hpp"

#include "verb_table.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace dpctl {

namespace {

const char* const help_text =
    "dpctl [OPTIONS...] [COMMAND] ...\n"
    "\n"
    "Inspect and control dpengined, the dpengine node daemon, over D-Bus\n"
    "(org.dpengine1 on the system bus, or $DBUS_SYSTEM_BUS_ADDRESS).\n"
    "\n"
    "Status (everyone):\n"
    "  status                  Show the node and its ranks (the default command)\n"
    "  ranks                   List the ranks in a table\n"
    "  logs RANK               Show a rank's lines from the systemd journal\n"
    "  nodes                   List the nodes of the cluster and their ranks\n"
    "\n"
    "Rank control (root or members of the group 'dpengine'):\n"
    "  start RANK              Start a stopped rank; wait until it is ready\n"
    "  stop RANK               Drain a rank, then stop it; wait until it has exited\n"
    "  restart RANK            Drain, stop and start a rank again; wait until it is ready\n"
    "  drain RANK              Route no new requests to a rank; wait until it has none\n"
    "                          in flight\n"
    "  undrain RANK            Route requests to a draining rank again\n"
    "  start-node              Start every stopped rank of this node; wait until ready\n"
    "  stop-node               Drain and stop every rank of this node; wait until exited\n"
    "  reload                  Re-read the configuration; apply what can change while\n"
    "                          running, refuse a broken file\n"
    "  assign NODE --start-rank R --count N\n"
    "                          On the head: move ranks R to R+N-1 to node NODE (a\n"
    "                          headless node or the head; their old nodes drain and\n"
    "                          stop them); wait until they are ready there\n"
    "\n"
    "Keys:\n"
    "  keys generate PATH [--node NAME] [--force]\n"
    "                          Create a CURVE key pair: PATH (secret) and PATH.pub\n"
    "  keys show PATH          Print the public key of a key file\n"
    "  keys api-key [LABEL]    Make an API key for the HTTP front-end, and its line for\n"
    "                          frontend.api_keys\n"
    "  keys hash-api-key [LABEL]\n"
    "                          Print the frontend.api_keys line of the key on stdin\n"
    "\n"
    "  version                 Show the version\n"
    "\n"
    "Options:\n"
    "  -h --help               Show this help\n"
    "     --version            Show the version\n"
    "     --json               status, ranks, nodes: print one JSON document\n"
    "     --no-legend          status, ranks, nodes: print no column header and no\n"
    "                          \"N ranks listed.\" line\n"
    "     --no-block           start, stop, restart, drain, *-node, assign: return\n"
    "                          once the daemon has accepted the request, without\n"
    "                          waiting\n"
    "     --timeout SECONDS    ... wait at most this long (default 600)\n"
    "  -f --follow             logs: go on printing new lines\n"
    "  -n --lines N            logs: show the last N lines\n"
    "\n"
    "Exit status:\n"
    "  0  Success\n"
    "  1  Failure: the operation failed or did not complete in time\n"
    "  2  Invalid arguments: unknown command or option, malformed RANK; nothing was done\n"
    "  3  dpengined is not running: org.dpengine1 is not on the system bus, or no bus\n"
    "  4  Access denied\n"
    "  5  Refused by the daemon as invalid: no such rank or node, not in a state that\n"
    "     allows it, not run by this node, or an assignment that conflicts\n"
    "\n"
    "See dpctl(1).\n";

// A value for an option: "--opt=V", "-oV" or the next argument.
std::string option_value(int argc, char** argv, int& i, const std::string& arg, const std::string& name) {
    if (auto eq = arg.find('='); eq != std::string::npos && arg.rfind("--", 0) == 0) return arg.substr(eq + 1);
    if (arg.size() > 2 && arg[1] != '-') return arg.substr(2);
    if (i + 1 >= argc) throw UsageError{"option " + name + " needs a value"};
    return argv[++i];
}

bool is_option(const std::string& arg, const char* long_name, const char* short_name = nullptr) {
    const size_t n = std::strlen(long_name);
    if (arg == long_name || (arg.compare(0, n, long_name) == 0 && arg.size() > n && arg[n] == '=')) return true;
    return short_name && arg.compare(0, 2, short_name) == 0;
}

double parse_seconds(const std::string& text) {
    char* end = nullptr;
    double v = std::strtod(text.c_str(), &end);
    if (text.empty() || *end || !(v > 0) || v > 1e9)
        throw UsageError{"--timeout: '" + text + "' is not a number of seconds"};
    return v;
}

unsigned parse_lines(const std::string& text) {
    if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos) {
        throw UsageError{"--lines: '" + text + "' is not a number of lines"};
    }
    return static_cast<unsigned>(std::stoul(text));
}

}  // namespace

const char* help() { return help_text; }

CommandLine parse_command_line(int argc, char** argv) {
    CommandLine cl;
    auto& options = cl.options;
    auto& verb = cl.verb;
    auto& args = cl.args;
    bool options_done = false;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        const bool looks_like_option = !options_done && arg.size() > 1 && arg[0] == '-';
        if (!looks_like_option) {
            if (verb.empty()) verb = arg;
            else args.push_back(arg);
            continue;
        }
        if (arg == "--") {
            options_done = true;
        } else if (arg == "-h" || arg == "--help") {
            cl.help = true;
            return cl;
        } else if (arg == "--version") {
            verb = "version";
        } else if (arg == "--json") {
            options.json = true;
        } else if (arg == "--no-legend") {
            options.legend = false;
        } else if (arg == "--no-block") {
            options.block = false;
        } else if (is_option(arg, "--timeout")) {
            options.timeout_s = parse_seconds(option_value(argc, argv, i, arg, "--timeout"));
        } else if (arg == "-f" || arg == "--follow") {
            options.follow = true;
        } else if (is_option(arg, "--lines", "-n")) {
            options.lines = parse_lines(option_value(argc, argv, i, arg, "--lines"));
        } else if (const Verb* v = find_verb(verbs(), verb); v && v->own_options) {
            args.push_back(arg);
        } else {
            throw UsageError{"unknown option '" + arg + "'"};
        }
    }
    if (verb.empty()) verb = "status";
    return cl;
}

}  // namespace dpctl
