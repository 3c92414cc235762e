#include "core/config.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace dpengine;
namespace fs = std::filesystem;

namespace {

// A private directory for config files, removed with everything in it.
struct TempDir {
    fs::path path;

    TempDir() {
        std::string pattern = (fs::temp_directory_path() / "dpengine-config-XXXXXX").string();
        REQUIRE(mkdtemp(pattern.data()) != nullptr);
        path = pattern;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    // Writes NAME (relative, may include a directory) and returns its full path.
    std::string write(const std::string& name, const std::string& text) const {
        fs::path file = path / name;
        fs::create_directories(file.parent_path());
        std::ofstream(file) << text;
        return file.string();
    }
};

Result<Config> parse(std::vector<std::string> args, CommandLine& cmdline) {
    std::vector<const char*> argv{"dpengined"};
    for (const std::string& a : args) argv.push_back(a.c_str());
    return parse_command_line(static_cast<int>(argv.size()), argv.data(), cmdline);
}

Result<Config> parse(std::vector<std::string> args) {
    CommandLine cmdline;
    return parse(std::move(args), cmdline);
}

Status load(Config& config, const std::string& path, std::vector<std::string>& warnings, bool strict = false) {
    return load_config_files(config, path, true, strict, warnings);
}

std::string load_error(const std::string& path) {
    Config config;
    std::vector<std::string> warnings;
    Status s = load(config, path, warnings);
    REQUIRE_FALSE(s.ok());
    return s.error().message;
}

std::string validate_error(Config config) {
    Status s = validate(config);
    REQUIRE_FALSE(s.ok());
    return s.error().message;
}

// A TCP socket on 127.0.0.1 with a kernel-chosen port; listening when asked.
struct LocalSocket {
    int fd = -1;
    uint16_t port = 0;

    explicit LocalSocket(bool listening) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        REQUIRE(fd >= 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        if (listening) REQUIRE(listen(fd, 1) == 0);
        socklen_t len = sizeof addr;
        REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
        port = ntohs(addr.sin_port);
    }
    ~LocalSocket() { close(fd); }
};

// A port that was free a moment ago.
uint16_t free_port() { return LocalSocket(false).port; }

}  // namespace

TEST_CASE("config: defaults", "[config]") {
    Config config;
    CHECK(config.node.role == Role::head);
    CHECK_FALSE(config.data_parallel.size.has_value());  // a head gets 1 from validate()
    CHECK_FALSE(config.data_parallel.size_local.has_value());
    CHECK(config.data_parallel.rpc_port == 13345);
    CHECK(config.frontend.port == 8000);
    CHECK(config.engine.backend == "synthetic");

    TempDir dir;
    std::vector<std::string> warnings;
    REQUIRE(load_config_files(config, (dir.path / "absent.toml").string(), false, false, warnings).ok());
    CHECK(warnings.empty());
    CHECK(to_toml(config) == to_toml(Config{}));

    REQUIRE(validate(config).ok());
    CHECK(config.dp_size() == 1);
    CHECK(config.size_local() == 1);
    CHECK_FALSE(config.has_remote_ranks());
    CHECK_FALSE(config.node.name.empty());
}

TEST_CASE("config: an explicitly named file must exist", "[config]") {
    TempDir dir;
    const std::string path = (dir.path / "absent.toml").string();
    CHECK(load_error(path) == "cannot read " + path + ": No such file or directory");

    CommandLine cmdline;
    auto result = parse({"--config", path}, cmdline);
    REQUIRE_FALSE(result.ok());
    CHECK(result.error().message == "cannot read " + path + ": No such file or directory");
}

TEST_CASE("config: drop-ins override the file in name order", "[config]") {
    TempDir dir;
    const std::string path = dir.write("dpengined.toml",
                                       "[data_parallel]\n"
                                       "size = 4\n"
                                       "[frontend]\n"
                                       "port = 9000\n"
                                       "[engine]\n"
                                       "model = \"main\"\n");
    dir.write("dpengined.toml.d/20-b.toml", "[engine]\nmodel = \"b\"\n");
    dir.write("dpengined.toml.d/10-a.toml", "[engine]\nmodel = \"a\"\n[frontend]\nport = 9001\n");
    dir.write("dpengined.toml.d/30-ignored.conf", "[frontend]\nport = 1\n");

    Config config;
    std::vector<std::string> warnings;
    REQUIRE(load(config, path, warnings).ok());
    CHECK(warnings.empty());
    CHECK(config.data_parallel.size == 4);
    CHECK(config.frontend.port == 9001);
    CHECK(config.engine.model == "b");
}

TEST_CASE("config: drop-ins apply without a main file unless it was named", "[config]") {
    TempDir dir;
    const std::string path = (dir.path / "dpengined.toml").string();
    dir.write("dpengined.toml.d/port.toml", "[frontend]\nport = 9002\n");

    Config config;
    std::vector<std::string> warnings;
    REQUIRE(load_config_files(config, path, false, false, warnings).ok());
    CHECK(config.frontend.port == 9002);
    CHECK_FALSE(load_config_files(config, path, true, false, warnings).ok());
}

TEST_CASE("config: every key is read, numbers accept integers", "[config]") {
    TempDir dir;
    const std::string path = dir.write("all.toml", R"([node]
role = "headless"
name = "n1"
[data_parallel]
size = 8
size_local = 2
start_rank = 4
address = "10.0.0.1"
rpc_port = 14000
[frontend]
host = "127.0.0.1"
port = 8080
max_body_bytes = 4096
max_connections = 100
idle_timeout = 5
request_timeout = 7.5
[engine]
backend = "synthetic"
model = "m"
max_batch = 32
step_time_ms = 2.5
default_max_tokens = 8
max_model_len = 1024
[handshake]
connect_timeout = 30
init_timeout = 1.5
ready_timeout = 2
heartbeat_interval = 0.5
heartbeat_timeout = 4
[security]
key = "/k/node.key"
authorized_keys = "/k/authorized"
head_public_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
insecure = true
[daemon]
runtime_directory = "/run/x"
engine_program = "/usr/bin/rank"
strict = true
max_message_bytes = 65536
)");
    Config config;
    std::vector<std::string> warnings;
    REQUIRE(load(config, path, warnings).ok());
    CHECK(config.node.role == Role::headless);
    CHECK(config.node.name == "n1");
    CHECK(config.data_parallel.size == 8);
    CHECK(config.data_parallel.size_local == 2u);
    CHECK(config.data_parallel.start_rank == 4);
    CHECK(config.data_parallel.address == "10.0.0.1");
    CHECK(config.data_parallel.rpc_port == 14000);
    CHECK(config.frontend.host == "127.0.0.1");
    CHECK(config.frontend.port == 8080);
    CHECK(config.frontend.max_body_bytes == 4096);
    CHECK(config.frontend.max_connections == 100);
    CHECK(config.frontend.idle_timeout == 5.0);
    CHECK(config.frontend.request_timeout == 7.5);
    CHECK(config.engine.model == "m");
    CHECK(config.engine.max_batch == 32);
    CHECK(config.engine.step_time_ms == 2.5);
    CHECK(config.engine.default_max_tokens == 8);
    CHECK(config.engine.max_model_len == 1024);
    CHECK(config.handshake.connect_timeout == 30.0);
    CHECK(config.handshake.init_timeout == 1.5);
    CHECK(config.handshake.ready_timeout == 2.0);
    CHECK(config.handshake.heartbeat_interval == 0.5);
    CHECK(config.handshake.heartbeat_timeout == 4.0);
    CHECK(config.security.key == "/k/node.key");
    CHECK(config.security.authorized_keys == "/k/authorized");
    CHECK(config.security.head_public_key == "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7");
    CHECK(config.security.insecure);
    CHECK(config.daemon.runtime_directory == "/run/x");
    CHECK(config.daemon.engine_program == "/usr/bin/rank");
    CHECK(config.daemon.strict);
    CHECK(config.daemon.max_message_bytes == 65536);
    REQUIRE(validate(config).ok());
}

TEST_CASE("config: file errors name the file, line and key", "[config]") {
    TempDir dir;

    SECTION("syntax error") {
        const std::string path = dir.write("bad.toml", "[frontend]\nport = = 1\n");
        CHECK_THAT(load_error(path), Catch::StartsWith(path + ":2:"));
    }
    SECTION("a wrong value: line, key, what is allowed and the value as written (or its type)") {
        // (file text, the error after "PATH")
        const std::pair<const char*, const char*> cases[] = {
            {"[node]\n\n[data_parallel]\nsize = \"four\"\n",
             ":4: data_parallel.size: expected an integer from 1 to 65536, got \"four\""},
            {"[engine]\nmodel = [1, 2]\n", ":2: engine.model: expected a string, got an array"},
            {"[frontend]\nport = 70000\n", ":2: frontend.port: expected an integer from 1 to 65535, got 70000"},
            {"[handshake]\ninit_timeout = 0\n", ":2: handshake.init_timeout: expected a number greater than 0, got 0"},
            {"[node]\nrole = \"boss\"\n", ":2: node.role: expected \"head\" or \"headless\", got \"boss\""},
        };
        for (const auto& [text, error] : cases) {
            INFO(text);
            const std::string path = dir.write("bad.toml", text);
            CHECK(load_error(path) == path + error);
        }
    }
    SECTION("size 0 and negative") {
        std::string path = dir.write("zero.toml", "[data_parallel]\nsize = 0\n");
        CHECK_THAT(load_error(path),
                   Catch::EndsWith("data_parallel.size: expected an integer "
                                   "from 1 to 65536, got 0"));
        path = dir.write("negative.toml", "[data_parallel]\nstart_rank = -1\n");
        CHECK_THAT(load_error(path), Catch::Contains(":2: data_parallel.start_rank") && Catch::EndsWith("got -1"));
    }
    SECTION("a section that is not a table") {
        const std::string path = dir.write("bad.toml", "engine = 3\n");
        CHECK_THAT(load_error(path), Catch::Contains(path + ":1: engine: expected a table"));
    }
    SECTION("an error in a drop-in names the drop-in") {
        const std::string path = dir.write("main.toml", "");
        const std::string dropin = dir.write("main.toml.d/x.toml", "[frontend]\nport = 0\n");
        CHECK_THAT(load_error(path), Catch::StartsWith(dropin + ":2: frontend.port"));
    }
}

TEST_CASE("config: unknown keys warn, or fail in strict mode", "[config]") {
    TempDir dir;
    const std::string path = dir.write("dpengined.toml", "[engine]\nmax_batchs = 3\n\n[mystery]\nx = 1\n");

    SECTION("warnings") {
        Config config;
        std::vector<std::string> warnings;
        REQUIRE(load(config, path, warnings).ok());
        REQUIRE(warnings.size() == 2);
        CHECK(warnings[0] ==
              path +
                  ":2: unknown key 'engine.max_batchs' (ignored); did you mean "
                  "'engine.max_batch'?");
        CHECK(warnings[1] == path + ":4: unknown section '[mystery]' (ignored)");
    }
    SECTION("strict parameter") {
        Config config;
        std::vector<std::string> warnings;
        Status s = load(config, path, warnings, true);
        REQUIRE_FALSE(s.ok());
        CHECK_THAT(s.error().message,
                   Catch::StartsWith(path + ":2: unknown key 'engine.max_batchs'") &&
                       Catch::Contains("remove it or check its spelling"));
    }
    SECTION("daemon.strict in a drop-in covers the main file") {
        dir.write("dpengined.toml.d/strict.toml", "[daemon]\nstrict = true\n");
        Config config;
        std::vector<std::string> warnings;
        Status s = load(config, path, warnings);
        REQUIRE_FALSE(s.ok());
        CHECK_THAT(s.error().message, Catch::Contains("unknown key 'engine.max_batchs'"));
    }
    SECTION("--strict") {
        CommandLine cmdline;
        auto result = parse({"--config", path}, cmdline);
        REQUIRE(result.ok());
        CHECK(cmdline.warnings.size() == 2);
        CHECK_FALSE(result->daemon.strict);

        auto strict = parse({"--strict", "--config", path});
        REQUIRE_FALSE(strict.ok());
        CHECK_THAT(strict.error().message, Catch::Contains("remove it or check its spelling"));
    }
}

TEST_CASE("config: every flag overrides the file", "[config]") {
    TempDir dir;
    const std::string path = dir.write("dpengined.toml", R"([node]
role = "head"
name = "file-name"
[data_parallel]
size = 2
size_local = 1
start_rank = 0
address = "10.0.0.1"
rpc_port = 13000
[frontend]
host = "0.0.0.0"
port = 8000
[security]
insecure = true
[engine]
backend = "bogus"
model = "file-model"
step_time_ms = 9
[daemon]
runtime_directory = "/file/dir"
)");

    const std::vector<std::string> separate = {
        "--config",   path,
        "--headless", "-dp",
        "8",          "-dpl",
        "2",          "-dpr",
        "4",          "--data-parallel-address",
        "[fd00::1]",  "--data-parallel-rpc-port",
        "14000",      "--host",
        "127.0.0.1",  "--port",
        "9100",       "--node-name",
        "flag-name",  "--backend",
        "synthetic",  "--model",
        "flag-model", "--step-time-ms",
        "1.5",        "--runtime-directory",
        "/flag/dir",
    };
    const std::vector<std::string> joined = {
        "--config=" + path,
        "--headless",
        "--data-parallel-size=8",
        "--data-parallel-size-local=2",
        "--data-parallel-start-rank=4",
        "--data-parallel-address=[fd00::1]",
        "--data-parallel-rpc-port=14000",
        "--host=127.0.0.1",
        "--port=9100",
        "--node-name=flag-name",
        "--backend=synthetic",
        "--model=flag-model",
        "--step-time-ms=1.5",
        "--runtime-directory=/flag/dir",
    };

    for (const auto& args : {separate, joined}) {
        CommandLine cmdline;
        auto result = parse(args, cmdline);
        REQUIRE(result.ok());
        const Config& config = *result;
        CHECK(cmdline.config_path == path);
        CHECK(cmdline.config_path_given);
        CHECK(config.node.role == Role::headless);
        CHECK(config.node.name == "flag-name");
        CHECK(config.data_parallel.size == 8);
        CHECK(config.data_parallel.size_local == 2u);
        CHECK(config.data_parallel.start_rank == 4);
        CHECK(config.data_parallel.address == "fd00::1");
        CHECK(config.data_parallel.rpc_port == 14000);
        CHECK(config.frontend.host == "127.0.0.1");
        CHECK(config.frontend.port == 9100);
        CHECK(config.engine.backend == "synthetic");
        CHECK(config.engine.model == "flag-model");
        CHECK(config.engine.step_time_ms == 1.5);
        CHECK(config.daemon.runtime_directory == "/flag/dir");
    }
}

TEST_CASE("config: mode flags and the model argument", "[config]") {
    TempDir dir;
    const std::string path = dir.write("dpengined.toml", "[engine]\nmodel = \"file-model\"\n");

    SECTION("--help and --version stop parsing") {
        CommandLine cmdline;
        auto result = parse({"--help", "--no-such-flag"}, cmdline);
        REQUIRE(result.ok());
        CHECK(cmdline.help);

        CommandLine short_help;
        REQUIRE(parse({"-h"}, short_help).ok());
        CHECK(short_help.help);

        CommandLine version;
        REQUIRE(parse({"--version"}, version).ok());
        CHECK(version.version);
    }
    SECTION("--check-config and --strict") {
        CommandLine cmdline;
        auto result = parse({"--config", path, "--check-config", "--strict"}, cmdline);
        REQUIRE(result.ok());
        CHECK(cmdline.check_config);
        CHECK(result->daemon.strict);
    }
    SECTION("one positional argument is the model") {
        auto result = parse({"--config", path, "org/model-7b", "--port", "9000"});
        REQUIRE(result.ok());
        CHECK(result->engine.model == "org/model-7b");
        CHECK(result->frontend.port == 9000);
    }
    SECTION("two positional arguments") {
        auto result = parse({"--config", path, "a", "b"});
        REQUIRE_FALSE(result.ok());
        CHECK_THAT(result.error().message, Catch::Contains("'a'") && Catch::Contains("'b'"));
    }
    SECTION("the model both as argument and flag") {
        auto result = parse({"--config", path, "a", "--model", "b"});
        REQUIRE_FALSE(result.ok());
        CHECK_THAT(result.error().message, Catch::Contains("give it once"));
    }
    SECTION("-- ends the options") {
        auto result = parse({"--config", path, "--", "-model-with-dash"});
        REQUIRE(result.ok());
        CHECK(result->engine.model == "-model-with-dash");
    }
}

TEST_CASE("config: flag errors name the flag", "[config]") {
    TempDir dir;
    const std::string path = dir.write("dpengined.toml", "");
    auto error = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {"--config", path});
        auto result = parse(args);
        REQUIRE_FALSE(result.ok());
        return result.error().message;
    };

    CHECK(error({"--foo"}) == "unknown option '--foo'; see 'dpengined --help'");
    CHECK(error({"--foo=1"}) == "unknown option '--foo'; see 'dpengined --help'");
    CHECK_THAT(error({"--port"}), Catch::StartsWith("option '--port' needs a value"));
    CHECK(error({"--port", "abc"}) == "option '--port': expected an integer from 1 to 65535, got 'abc'");
    CHECK(error({"--port=70000"}) == "option '--port': expected an integer from 1 to 65535, got '70000'");
    CHECK(error({"-dp", "0"}) == "option '-dp': expected an integer from 1 to 65536, got '0'");
    CHECK(error({"-dp", "4x"}) == "option '-dp': expected an integer from 1 to 65536, got '4x'");
    CHECK(error({"--step-time-ms", "-1"}) == "option '--step-time-ms': expected a number from 0 up, got '-1'");
    CHECK_THAT(error({"--headless=yes"}), Catch::StartsWith("option '--headless' takes no value"));
}

TEST_CASE("config: validate checks the config as a whole", "[config]") {
    Config config;
    config.security.insecure = true;  // keys have their own test

    SECTION("start_rank below size") {
        config.data_parallel.size = 4;
        config.data_parallel.start_rank = 4;
        CHECK(validate_error(config) ==
              "data_parallel.start_rank (4) must be less than data_parallel.size (4); ranks are "
              "numbered from 0");
    }
    SECTION("size_local fits") {
        config.data_parallel.size = 4;
        config.data_parallel.size_local = 5;
        CHECK_THAT(validate_error(config),
                   Catch::StartsWith("data_parallel.size_local (5) is larger than "
                                     "data_parallel.size (4) minus start_rank (0)"));
        config.data_parallel.size_local = 3;
        config.data_parallel.start_rank = 2;
        CHECK_THAT(validate_error(config),
                   Catch::StartsWith("data_parallel.size_local (3) is larger than "
                                     "data_parallel.size (4) minus start_rank (2)"));
    }
    SECTION("size_local defaults to the rest on a head") {
        config.data_parallel.size = 4;
        config.data_parallel.start_rank = 1;
        REQUIRE(validate(config).ok());
        CHECK(config.size_local() == 3);
        CHECK(config.has_remote_ranks());
    }
    SECTION("a headless node needs size_local") {
        config.node.role = Role::headless;
        config.data_parallel.size = 4;
        CHECK_THAT(validate_error(config),
                   Catch::StartsWith("a headless node needs data_parallel.size_local "
                                     "(--data-parallel-size-local)"));
        config.data_parallel.size_local = 0;
        CHECK_THAT(validate_error(config), Catch::Contains("no ranks to run"));
        config.data_parallel.size_local = 2;
        CHECK(validate(config).ok());
    }
    SECTION("rpc_port 0 with remote ranks") {
        config.node.role = Role::headless;
        config.data_parallel.size = 2;
        config.data_parallel.size_local = 1;
        config.data_parallel.rpc_port = 0;
        CHECK_THAT(validate_error(config),
                   Catch::StartsWith("data_parallel.rpc_port must not be 0 when ranks run on "
                                     "other nodes"));
    }
    SECTION("rpc_port 0 is fine when every rank is local") {
        config.data_parallel.rpc_port = 0;
        CHECK(validate(config).ok());
    }
    SECTION("addresses") {
        config.data_parallel.address = "xx yy";
        CHECK(validate_error(config) == "data_parallel.address: 'xx yy' is not an IPv4/IPv6 address or host name");
        config.data_parallel.address = "10.0.0.300";
        CHECK_THAT(validate_error(config), Catch::StartsWith("data_parallel.address"));
        config.data_parallel.address = "[head.example.com]";
        CHECK_THAT(validate_error(config), Catch::StartsWith("data_parallel.address"));
        config.data_parallel.address = "-bad.example.com";
        CHECK_THAT(validate_error(config), Catch::StartsWith("data_parallel.address"));

        config.data_parallel.address = "head-1.example.com";
        config.frontend.host = "bad_host";
        CHECK(validate_error(config) == "frontend.host: 'bad_host' is not an IPv4/IPv6 address or host name");

        config.frontend.host = "[::]";
        config.data_parallel.address = "[fd00::1]";
        REQUIRE(validate(config).ok());
        CHECK(config.frontend.host == "::");
        CHECK(config.data_parallel.address == "fd00::1");

        config.data_parallel.address = "fd00::2";
        config.frontend.host = "localhost";
        REQUIRE(validate(config).ok());
        CHECK(config.data_parallel.address == "fd00::2");
    }
    SECTION("ranges of values set in code") {
        config.frontend.port = 0;
        CHECK(validate_error(config) == "frontend.port: expected an integer from 1 to 65535, got 0");
        config.frontend.port = 8000;
        config.frontend.max_body_bytes = 100;
        CHECK_THAT(validate_error(config),
                   Catch::StartsWith("frontend.max_body_bytes: expected "
                                     "an integer from 1024 to 1073741824"));
        config.frontend.max_body_bytes = 1 << 20;
        config.handshake.ready_timeout = 0;
        CHECK_THAT(validate_error(config), Catch::StartsWith("handshake.ready_timeout"));
        config.handshake.ready_timeout = 1;
        config.frontend.idle_timeout = -1;
        CHECK_THAT(validate_error(config), Catch::StartsWith("frontend.idle_timeout"));
        config.frontend.idle_timeout = 1;
        config.engine.step_time_ms = -0.5;
        CHECK_THAT(validate_error(config), Catch::StartsWith("engine.step_time_ms"));
        config.engine.step_time_ms = 0;
        config.engine.max_batch = 0;
        CHECK_THAT(validate_error(config), Catch::StartsWith("engine.max_batch"));
        config.engine.max_batch = 1;
        config.data_parallel.size = 0;
        CHECK_THAT(validate_error(config),
                   Catch::StartsWith("data_parallel.size: expected an "
                                     "integer from 1 to 65536, got 0"));
        config.data_parallel.size = 1;
        REQUIRE(validate(config).ok());
    }
    SECTION("engine") {
        config.engine.backend = "rocm";
        CHECK(validate_error(config) ==
              "engine.backend: unknown backend 'rocm'; known backends: synthetic, http, cuda");
        config.engine.backend = "synthetic";
        config.engine.model = "";
        CHECK_THAT(validate_error(config), Catch::StartsWith("engine.model is empty"));
        config.engine.model = "m";
        config.engine.default_max_tokens = 100;
        config.engine.max_model_len = 50;
        CHECK_THAT(validate_error(config),
                   Catch::StartsWith("engine.default_max_tokens (100) is larger than "
                                     "engine.max_model_len (50)"));
    }
    SECTION("the node name defaults to the host name") {
        REQUIRE(validate(config).ok());
        char host[256] = {};
        REQUIRE(gethostname(host, sizeof host - 1) == 0);
        CHECK(config.node.name == host);
    }
}

TEST_CASE("config: an rpc port in use is reported", "[config]") {
    LocalSocket taken(true);
    Config config;
    config.security.insecure = true;
    config.data_parallel.size = 2;
    config.data_parallel.size_local = 1;
    config.data_parallel.address = "127.0.0.1";
    config.data_parallel.rpc_port = taken.port;
    const std::string message = validate_error(config);
    CHECK_THAT(message,
               Catch::Contains("data_parallel.rpc_port " + std::to_string(taken.port)) &&
                   Catch::Contains("127.0.0.1") && Catch::Contains("in use"));

    // A headless node binds nothing, so only the head checks.
    config.node.role = Role::headless;
    CHECK(validate(config).ok());

    config.node.role = Role::head;
    config.data_parallel.rpc_port = free_port();
    CHECK(validate(config).ok());
}

TEST_CASE("config: to_toml round-trips", "[config]") {
    Config config;
    config.node.role = Role::headless;
    config.node.name = "we\"ird\\name\tx";
    config.data_parallel.size = 8;
    config.data_parallel.size_local = 3;
    config.data_parallel.start_rank = 2;
    config.data_parallel.address = "[fd00::7]";
    config.frontend.idle_timeout = 0.1;
    config.frontend.request_timeout = 600;
    config.engine.step_time_ms = 0;
    config.handshake.connect_timeout = 1e-3;
    config.daemon.engine_program = "/opt/dpengine rank";
    config.daemon.strict = true;
    config.security.insecure = true;
    REQUIRE(validate(config).ok());

    const std::string text = to_toml(config);
    CHECK_THAT(text, Catch::StartsWith("# effective configuration\n"));
    CHECK_THAT(text,
               Catch::Contains("[data_parallel]\n") && Catch::Contains("size_local = 3\n") &&
                   Catch::Contains("request_timeout = 600.0\n") && Catch::Contains("address = \"fd00::7\"\n"));

    TempDir dir;
    const std::string path = dir.write("effective.toml", text);
    Config read;
    std::vector<std::string> warnings;
    REQUIRE(load(read, path, warnings).ok());
    CHECK(warnings.empty());
    CHECK(to_toml(read) == text);
    CHECK(read.node.name == config.node.name);
    CHECK(read.node.role == Role::headless);
    CHECK(read.frontend.idle_timeout == 0.1);
    CHECK(read.handshake.connect_timeout == 1e-3);
    CHECK(read.daemon.strict);
}

TEST_CASE("config: --help lists every flag", "[config]") {
    const std::string usage = usage_text();
    CHECK_THAT(usage, Catch::StartsWith("dpengined [OPTIONS...] [MODEL]\n\nRuns a dpengine node"));
    for (const char* line : {
             "  -h --help ",
             "     --version ",
             "     --config=FILE ",
             "     --check-config ",
             "     --strict ",
             "  -dp --data-parallel-size=N ",
             "  -dpl --data-parallel-size-local=N ",
             "  -dpr --data-parallel-start-rank=N ",
             "     --data-parallel-address=ADDR ",
             "     --data-parallel-rpc-port=PORT ",
             "     --headless ",
             "     --host=ADDR ",
             "     --port=PORT ",
             "     --node-name=NAME ",
             "     --backend=NAME ",
             "     --model=NAME ",
             "     --step-time-ms=MS ",
             "     --runtime-directory=DIR ",
         })
        CHECK_THAT(usage, Catch::Contains("\n" + std::string(line)));
}

TEST_CASE("config: a headless node may leave the DP size to the head", "[config]") {
    Config config;
    config.security.insecure = true;
    config.node.role = Role::headless;
    config.data_parallel.size_local = 2;
    config.data_parallel.start_rank = 2;
    REQUIRE(validate(config).ok());
    CHECK(config.dp_size() == 0);  // not stated: the head's CONFIG says

    config.data_parallel.size = 3;  // stated, and then checked like a head's
    CHECK_THAT(validate(config).error().message,
               Catch::StartsWith("data_parallel.size_local (2) is larger than data_parallel.size (3)"));
}

TEST_CASE("config: start_rank is optional on a headless node, 0 by default on a head", "[config]") {
    Config head;
    head.data_parallel.size = 4;
    REQUIRE(validate(head).ok());
    CHECK(head.data_parallel.start_rank == std::optional<uint32_t>(0));
    CHECK_FALSE(head.assigned_by_head());

    Config node;
    node.node.role = Role::headless;
    node.data_parallel.size_local = 2;
    node.security.insecure = true;
    REQUIRE(validate(node).ok());
    CHECK_FALSE(node.data_parallel.start_rank.has_value());
    CHECK(node.assigned_by_head());
    CHECK(node.first_local_rank() == 0);
    CHECK_THAT(to_toml(node), Catch::Contains("# start_rank is unset\n"));

    // A stated DP size still bounds the block the node wants.
    node.data_parallel.size = 2;
    node.data_parallel.size_local = 3;
    CHECK_THAT(validate(node).error().message, Catch::Contains("size_local (3) is larger than data_parallel.size (2)"));

    node.data_parallel.size_local = 2;
    node.data_parallel.start_rank = 1;
    CHECK_THAT(validate(node).error().message, Catch::Contains("minus start_rank (1)"));
    node.data_parallel.start_rank = 0;
    REQUIRE(validate(node).ok());
    CHECK_FALSE(node.assigned_by_head());
}

TEST_CASE("config: fault-handling keys", "[config]") {
    Config config;
    config.security.insecure = true;
    CHECK(config.data_parallel.min_ranks == 1);
    CHECK(config.handshake.hang_timeout == 60.0);
    CHECK(config.supervision.head_grace_period == 60.0);

    SECTION("min_ranks is at most the DP size") {
        config.data_parallel.size = 2;
        config.data_parallel.min_ranks = 3;
        CHECK_THAT(validate_error(config),
                   Catch::StartsWith("data_parallel.min_ranks (3) is larger than data_parallel.size (2)"));
        config.data_parallel.min_ranks = 2;
        CHECK(validate(config).ok());
    }
    SECTION("hang_timeout is longer than the heartbeat interval") {
        config.handshake.heartbeat_interval = 2.0;
        config.handshake.heartbeat_timeout = 5.0;
        config.handshake.hang_timeout = 1.5;
        CHECK_THAT(
            validate_error(config),
            Catch::StartsWith("handshake.hang_timeout (1.5) must be longer than handshake.heartbeat_interval (2.0)"));
    }
    SECTION("the keys are read from the file") {
        TempDir dir;
        auto path = dir.path / "dpengined.toml";
        std::ofstream(path) << "[data_parallel]\nmin_ranks = 2\n[handshake]\nhang_timeout = 7.5\n"
                               "[supervision]\nhead_grace_period = 12\n";
        std::vector<std::string> warnings;
        REQUIRE(load_config_files(config, path.string(), true, true, warnings).ok());
        CHECK(config.data_parallel.min_ranks == 2);
        CHECK(config.handshake.hang_timeout == 7.5);
        CHECK(config.supervision.head_grace_period == 12.0);
    }
}

TEST_CASE("config: lockstep settings are checked", "[config]") {
    Config config;
    config.security.insecure = true;
    CHECK(config.data_parallel.dp_sync == "independent");
    CHECK(config.data_parallel.group == "auto");
    CHECK(config.data_parallel.sync_interval == 1);
    CHECK(config.data_parallel.group_timeout == 1.5);
    SECTION("unknown mode") {
        config.data_parallel.dp_sync = "together";
        CHECK_THAT(validate_error(config), Catch::Contains("data_parallel.dp_sync: unknown mode 'together'"));
    }
    SECTION("unknown group") {
        config.data_parallel.group = "mpi";
        CHECK_THAT(validate_error(config), Catch::Contains("data_parallel.group: unknown group 'mpi'"));
    }
}

TEST_CASE("config: the http backend's command and env are read as an array and a table", "[config]") {
    TempDir dir;
    Config config;
    std::vector<std::string> warnings;
    std::string path = dir.write("a.toml",
                                 "[engine]\nbackend = \"http\"\n"
                                 "command = [\"srv\", \"--port\", \"{port}\"]\n"
                                 "env = { A = \"1\", \"B.C\" = \"{gpu}\" }\n");
    REQUIRE(load(config, path, warnings).ok());
    CHECK(config.engine.command == std::vector<std::string>{"srv", "--port", "{port}"});
    CHECK(config.engine.env == std::map<std::string, std::string>{{"A", "1"}, {"B.C", "{gpu}"}});
    REQUIRE(validate(config).ok());
    // Printed so that it reads back the same (--check-config, reload's comparison).
    std::string toml = to_toml(config);
    CHECK_THAT(toml, Catch::Contains("command = [\"srv\", \"--port\", \"{port}\"]\n"));
    CHECK_THAT(toml, Catch::Contains("env = { A = \"1\", \"B.C\" = \"{gpu}\" }\n"));
    CHECK_THAT(to_toml(Config{}), Catch::Contains("command = []\nenv = {}\n"));

    CHECK_THAT(load_error(dir.write("b.toml", "[engine]\ncommand = [\"a\", 1]\n")),
               Catch::Contains("engine.command: expected an array of strings, got an array"));
    CHECK_THAT(load_error(dir.write("c.toml", "[engine]\ncommand = \"vllm serve\"\n")),
               Catch::Contains("engine.command: expected an array of strings, got \"vllm serve\""));
    CHECK_THAT(load_error(dir.write("d.toml", "[engine]\nenv = { A = 1 }\n")),
               Catch::Contains("engine.env: expected a table of strings, got a table"));
}

TEST_CASE("config: the http backend's settings are validated", "[config]") {
    Config config;
    config.engine.backend = "http";
    CHECK_THAT(validate_error(config), Catch::StartsWith("engine.command is empty; the http backend needs"));

    config.engine.command = {"srv", "--port", "{prot}"};
    CHECK_THAT(validate_error(config),
               Catch::StartsWith("engine.command[2]: unknown placeholder '{prot}' in '{prot}'") &&
                   Catch::Contains("{port}, {gpu}, {rank}, {local_rank}, {model}"));

    config.engine.command = {"srv", "--port", "{port"};
    CHECK_THAT(validate_error(config), Catch::StartsWith("engine.command[2]: a '{' without its '}'"));

    config.engine.command = {"srv", "--json", "{{\"port\": 1}}"};  // literal braces, but no port
    CHECK_THAT(validate_error(config), Catch::StartsWith("engine.command does not use {port}"));

    config.engine.env = {{"PORT", "{port}"}};  // the port may reach the server through env
    CHECK(validate(config).ok());

    config.engine.env = {{"X", "{nope}"}};
    CHECK_THAT(validate_error(config), Catch::StartsWith("engine.env.X: unknown placeholder '{nope}'"));

    config.engine.env = {};
    config.engine.command = {"srv", "--port={port}"};
    config.engine.health_path = "health";
    CHECK_THAT(validate_error(config), Catch::StartsWith("engine.health_path must be a path starting with '/'"));

    config.engine.health_path = "/v1/models";
    config.engine.ready_timeout = 400;
    CHECK_THAT(validate_error(config),
               Catch::StartsWith("engine.ready_timeout (400.0) must be shorter than handshake.init_timeout (300.0)"));
    config.engine.ready_timeout = 100;
    CHECK(validate(config).ok());

    config.data_parallel.dp_sync = "lockstep";  // its servers are independent engines
    CHECK_THAT(validate_error(config), Catch::StartsWith("data_parallel.dp_sync = \"lockstep\" needs a backend"));
}
