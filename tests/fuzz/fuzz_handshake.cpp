// The head's handshake and routing state machine fed a sequence of messages from several
// connections: HELLO, READY, OUTPUTS, HEARTBEAT ... in any order, from any connection,
// interleaved with requests the front-end submits. The input is a list of records
// [connection:1][length:2, little-endian][payload]; a connection byte with the high bit set
// submits a request instead. Whatever arrives, the head must only ever refuse or answer, and
// its registry must stay consistent.
#include "core/log.hpp"
#include "head/rank_link.hpp"

#include <boost/asio/io_context.hpp>

namespace dpengine {

struct RankLinkFuzzAccess {
    static void deliver(RankLink& link, const std::string& routing_id, std::string_view payload) {
        zmq::message_t frame(payload.data(), payload.size());
        link.on_message(routing_id, frame);
    }
};

}  // namespace dpengine

namespace {

struct CountingSink : dpengine::RequestSink {
    void on_output(const dpengine::wire::Output&) override { ++outputs; }
    void on_failure(const dpengine::Error&) override { ++failures; }
    uint64_t outputs = 0, failures = 0;
};

const dpengine::Config& head_config() {
    static dpengine::Config config = [] {
        dpengine::Config c;
        c.data_parallel.size = 4;
        c.data_parallel.size_local = 1;
        c.node.name = "head";
        return c;
    }();
    return config;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    dpengine::log::set_min_level(dpengine::log::Level::error);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    boost::asio::io_context io;
    dpengine::RankLink::Events events{[] {}, [](uint32_t) {}, [](uint32_t) {}};
    CountingSink sink;
    {
        dpengine::RankLink link(io, head_config(), events);
        // Rank 0 is the head's; the others are node-b's, as if it had registered through the
        // node link (the seeds' HELLOs come from node-b), so that fuzzing gets past HELLO.
        for (uint32_t r = 1; r < link.size(); ++r) link.set_owner(r, "node-b");
        size_t pos = 0;
        while (pos + 3 <= size) {
            uint8_t connection = data[pos];
            size_t length = data[pos + 1] | size_t(data[pos + 2]) << 8;
            pos += 3;
            length = std::min(length, size - pos);
            if (connection & 0x80) {
                dpengine::wire::Request request{0, "/v1/completions", R"({"prompt":"fuzz","max_tokens":4})", false};
                auto id = link.submit(std::move(request), &sink);
                if (id && (connection & 0x40)) link.abort(*id);
            } else {
                std::string routing_id = "peer-" + std::to_string(connection % 8);
                dpengine::RankLinkFuzzAccess::deliver(
                    link, routing_id, std::string_view(reinterpret_cast<const char*>(data + pos), length));
            }
            pos += length;
            io.poll();
            if (link.ready_count() > link.size()) __builtin_trap();
        }
        link.shutdown();
        io.poll();
        if (link.in_flight() != 0) __builtin_trap();
    }
    return 0;
}
