// Writes the seed corpora of fuzz_wire, fuzz_msgpack and fuzz_handshake from real encoded
// messages: realistic ones, one of every type with every field set (from the field lists of
// core/wire_fields.hpp), and handshake sequences as a rank really sends them.
// Usage: fuzz_seed_wire CORPUS_DIR (the directories corpus/<target>/ must exist).
#include "../support/wire_filled.hpp"
#include "core/wire.hpp"

#include <cctype>
#include <cstdio>
#include <fstream>
#include <vector>

using namespace dpengine::wire;

namespace {

void write(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

// One record of fuzz_handshake's input: [connection][length LE16][payload].
std::string record(uint8_t connection, const std::string& payload) {
    std::string out{char(connection), char(payload.size() & 0xff), char(payload.size() >> 8)};
    return out + payload;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: fuzz_seed_wire CORPUS_DIR\n");
        return 2;
    }
    const std::string dir = argv[1];
    Hello hello{1, 0, "node-b", 0x1234, 4242, "0.1.0", 4, "synthetic"};
    Config config;
    config.dp_size = 4;
    config.rank = 1;
    config.epoch = 1;
    config.engine = {"synthetic", "synthetic", 256, 0.5, 8192, 16};
    Config cuda_config = config;
    cuda_config.group_kind = "nccl";
    cuda_config.sync = "lockstep";
    cuda_config.engine.backend = "cuda";
    cuda_config.engine.hidden_size = 2048;
    cuda_config.engine.num_layers = 8;
    cuda_config.engine.vocab_size = 32000;
    cuda_config.engine.gpu_memory_fraction = 0.5;
    cuda_config.engine.gpus = {0, 1};
    Output first{7, 200, "text/event-stream", "data: {\"choices\":[{\"index\":0,\"text\":\" hello\"}]}\n\n", false, 1};
    Output last{7, 0, "", "data: {\"choices\":[{\"index\":0,\"text\":\" world\"}]}\n\ndata: [DONE]\n\n", true, 1};
    Heartbeat engine_beat{7, 3, 2};
    engine_beat.engine_queued = 4;
    engine_beat.kv_cache_usage = 0.5;
    engine_beat.health_failures = 1;
    std::vector<std::pair<std::string, Message>> messages = {
        {"hello", hello},
        {"config", config},
        {"refused", Refused{"rank-not-owned", "rank 1 belongs to node 'node-c'"}},
        {"ready", Ready{256, "cpu"}},
        {"request",
         Request{7, "/v1/completions", R"({"prompt":"Once upon a time","max_tokens":2,"stream":true})", true}},
        {"abort", Abort{{7, 8}}},
        {"outputs", Outputs{{first, last}, 1, 0}},
        {"heartbeat", Heartbeat{12, 0, 0}},
        {"heartbeat-lockstep", Heartbeat{40, 2, 1, 30, 5, uint64_t{1} << 30}},
        {"heartbeat-engine", engine_beat},
        {"config-cuda", cuda_config},
        {"shutdown", Shutdown{}},
        {"error", ErrorReply{"malformed", "expected an array"}},
    };
    for (const Message& message : filled::every_type()) {
        std::string name = "every-field-";
        for (const char* c = type_name(message); *c; ++c) name += *c == '_' ? '-' : char(std::tolower(*c));
        messages.emplace_back(name, message);
    }
    for (const auto& [name, message] : messages) {
        std::string bytes = encode(message, 1);
        write(dir + "/fuzz_wire/" + name, bytes);
        write(dir + "/fuzz_msgpack/" + name, bytes);
    }
    // A rank's whole life on one connection: HELLO, READY, a request's outputs, HEARTBEAT.
    std::string life = record(1, encode(hello)) + record(1, encode(Ready{256, "cpu"})) + record(0x80, "") +
        record(1, encode(Outputs{{Output{1, 200, "application/json", "", false, 0}}, 1, 0})) +
        record(1, encode(Outputs{{Output{1, 0, "", "{\"choices\":[]}", true, 2}}, 0, 0})) +
        record(1, encode(Heartbeat{3, 0, 0}));
    write(dir + "/fuzz_handshake/rank-life", life);
    // Messages before HELLO, a second HELLO for the same rank from another connection, and an
    // abort of a request in flight.
    Hello other = hello;
    other.node = "node-c";
    other.incarnation = 0x5678;
    std::string contested = record(2, encode(Heartbeat{1, 0, 0})) + record(1, encode(hello)) +
        record(2, encode(other)) + record(1, encode(Ready{1, "cpu"})) + record(0xc0, "") + record(1, encode(hello));
    write(dir + "/fuzz_handshake/contested", contested);
    return 0;
}
