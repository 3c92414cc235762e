// dpctl keys generate PATH [--node NAME] [--force] | dpctl keys show PATH
// dpctl keys api-key [LABEL] | dpctl keys hash-api-key [LABEL] (the front-end's API keys)
#include "core/api_keys.hpp"
#include "core/keys.hpp"
#include "verb_table.hpp"

#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

namespace dpctl {
namespace {

int usage_error(const std::string& message) {
    std::fprintf(stderr,
                 "dpctl keys: %s\nusage: dpctl keys generate PATH [--node NAME] [--force]\n"
                 "       dpctl keys show PATH\n"
                 "       dpctl keys api-key [LABEL]\n"
                 "       dpctl keys hash-api-key [LABEL] < KEY\n",
                 message.c_str());
    return exit_status::invalid_arguments;
}

std::string host_name() {
    char name[256] = {};
    if (gethostname(name, sizeof name - 1) != 0) return "node";
    return name;
}

// Run as root, the key would be root's, and the service (user dpengine) could not read it:
// it goes to the service user when that user exists; otherwise the output says what to run.
// Returns a line for the output, or "" when nothing was needed.
std::string give_to_service_user(const std::string& path) {
    if (::geteuid() != 0) return {};
    const char* user = dpengine::keys::service_user;
    const struct passwd* pw = ::getpwnam(user);
    if (!pw) {
        return std::string("Owner: root; user '") + user +
            "' does not exist here. If dpengined runs as another "
            "user, run 'chown USER " +
            path + "' for it; once '" + user + "' exists, run 'chown " + user + " " + path + "'\n";
    }
    if (::chown(path.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
        return std::string("Owner: root; could not give it to user '") + user + "': " + std::strerror(errno) +
            "; run 'chown " + user + " " + path + "'\n";
    }
    return std::string("Owner: ") + user + " (the service's user, which reads it)\n";
}

int generate(Invocation& in) {
    const Args& args = in.args;
    std::string path, node = host_name();
    bool force = false;
    for (size_t i = 0; i < args.size(); ++i) {
        if (args[i] == "--force") {
            force = true;
        } else if (args[i] == "--node") {
            if (++i == args.size()) return usage_error("--node needs a name");
            node = args[i];
        } else if (args[i].rfind("--", 0) == 0) {
            return usage_error("unknown option '" + args[i] + "'");
        } else if (path.empty()) {
            path = args[i];
        } else {
            return usage_error("more than one PATH given");
        }
    }
    if (path.empty()) return usage_error("PATH is missing");
    if (node.find_first_of(" \t\n") != std::string::npos) return usage_error("the node name may not contain spaces");
    auto pair = dpengine::keys::generate();
    if (!pair) {
        std::fprintf(stderr, "dpctl: %s\n", pair.error().message.c_str());
        return exit_status::failure;
    }
    if (auto written = dpengine::keys::write_key_pair(path, *pair, node, force); !written) {
        std::fprintf(stderr, "dpctl: %s\n", written.error().message.c_str());
        return exit_status::failure;
    }
    std::string owner = give_to_service_user(path);
    std::printf(
        "Secret key: %s (mode 0600)\n%sPublic key: %s.pub; add its line to the head's security.authorized_keys\n"
        "Fingerprint: %s\n%s\n",
        path.c_str(), owner.c_str(), path.c_str(), dpengine::keys::fingerprint(pair->public_z85).c_str(),
        pair->public_z85.c_str());
    return exit_status::ok;
}

int show(Invocation& in) {
    const std::string& path = in.args[0];
    // A secret key file shows its public half; a .pub file shows itself.
    auto pair = dpengine::keys::load_secret(path);
    std::string pub;
    if (pair) {
        pub = pair->public_z85;
    } else if (auto p = dpengine::keys::load_public(path)) {
        pub = *p;
    } else {
        std::fprintf(stderr, "dpctl: %s\n", pair.error().message.c_str());
        return exit_status::failure;
    }
    std::printf("Fingerprint: %s\n%s\n", dpengine::keys::fingerprint(pub).c_str(), pub.c_str());
    return exit_status::ok;
}

// The line frontend.api_keys holds for `key`, with the operator's label after it.
std::string api_key_line(const std::string& key, const std::string& label) {
    return dpengine::api_keys::hash_line(key) + (label.empty() ? "" : " " + label);
}

// The optional LABEL (the verb table allows at most one).
dpengine::Result<std::string> label_of(const Args& args) {
    if (args.empty()) return std::string();
    if (args[0].rfind("--", 0) == 0) return dpengine::Error{"unknown option '" + args[0] + "'"};
    if (args[0].find_first_of("\r\n") != std::string::npos) return dpengine::Error{"the LABEL must be one line"};
    return args[0];
}

// A new key, shown once, and its line for the key file.
int new_api_key(Invocation& in) {
    auto label = label_of(in.args);
    if (!label) return usage_error(label.error().message);
    auto key = dpengine::api_keys::generate();
    if (!key) {
        std::fprintf(stderr, "dpctl: %s\n", key.error().message.c_str());
        return exit_status::failure;
    }
    std::printf(
        "API key (give it to the client, as in 'Authorization: Bearer KEY'; it is not kept anywhere):\n%s\n"
        "Its line for the file frontend.api_keys names:\n%s\n",
        key->c_str(), api_key_line(*key, *label).c_str());
    return exit_status::ok;
}

// The line of a key the operator chose, read from standard input (not the command line,
// which other users can see in the process list).
int hash_api_key(Invocation& in) {
    auto label = label_of(in.args);
    if (!label) return usage_error(label.error().message);
    std::string key;
    std::getline(std::cin, key);
    if (!key.empty() && key.back() == '\r') key.pop_back();
    bool printable = !key.empty();
    for (unsigned char c : key) printable = printable && c > 0x20 && c < 0x7f;
    if (!printable) {
        std::fprintf(stderr,
                     "dpctl: give the key on standard input, one line of printable characters without "
                     "spaces (as in: printf '%%s\\n' \"$KEY\" | dpctl keys hash-api-key)\n");
        return exit_status::invalid_arguments;
    }
    std::printf("%s\n", api_key_line(key, *label).c_str());
    return exit_status::ok;
}

}  // namespace

std::span<const Verb> keys_verbs() {
    using Access = Verb::Access;
    static constexpr Verb table[] = {
        {"generate", "PATH [--node NAME] [--force]", 1, 4, Access::local, true, generate},
        {"show", "PATH", 1, 1, Access::local, false, show},
        {"api-key", "[LABEL]", 0, 1, Access::local, false, new_api_key},
        {"hash-api-key", "[LABEL] < KEY", 0, 1, Access::local, false, hash_api_key},
    };
    return table;
}

int keys_verb(Invocation& in) {
    return dispatch_verb(keys_verbs(), "keys ", in.args[0], in.options, Args(in.args.begin() + 1, in.args.end()));
}

}  // namespace dpctl
