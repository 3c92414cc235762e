// data_parallel.group = "auto": the head resolves it to NCCL only for the cuda backend with a
// GPU per rank; every other deployment (no GPUs, shared GPUs) gets gloo. Explicit kinds pass.
#include "core/config.hpp"

#include <catch2/catch.hpp>

using namespace dpengine;

TEST_CASE("data_parallel.group auto resolves by backend and GPU sharing", "[config][group]") {
    Config config;
    config.data_parallel.dp_sync = "lockstep";
    REQUIRE(config.data_parallel.group == "auto");
    REQUIRE(validate(config).ok());
    CHECK(dp_group_kind(config) == "gloo");  // synthetic: no GPUs

    config.engine.backend = "cuda";
    REQUIRE(validate(config).ok());
    CHECK(dp_group_kind(config) == "nccl");

    config.engine.gpu_sharing = true;  // NCCL refuses two ranks on one device
    CHECK(dp_group_kind(config) == "gloo");

    config.data_parallel.group = "gloo";
    config.engine.gpu_sharing = false;
    CHECK(dp_group_kind(config) == "gloo");
}

TEST_CASE("cuda backend settings are checked", "[config][group]") {
    auto refused = [](Config config, const std::string& needle) {
        auto s = validate(config);
        INFO(needle);
        REQUIRE_FALSE(s.ok());
        INFO(s.error().message);
        CHECK(s.error().message.find(needle) != std::string::npos);
    };
    Config config;
    config.data_parallel.group = "nccl";
    refused(config, "data_parallel.group = \"nccl\" needs engine.backend = \"cuda\"");
    config.engine.backend = "cuda";
    REQUIRE(validate(config).ok());
    config.engine.gpu_sharing = true;
    refused(config, "use data_parallel.group = \"gloo\"");

    Config gpus;
    gpus.engine.backend = "cuda";
    gpus.engine.gpus = {"0", "one"};
    refused(gpus, "engine.gpus: 'one' is not a CUDA device number");
    gpus.engine.gpus = {"1", "1"};
    refused(gpus, "set engine.gpu_sharing = true");
    gpus.engine.gpu_sharing = true;
    CHECK(validate(gpus).ok());

    Config fraction;
    fraction.engine.gpu_memory_fraction = 1.5;
    refused(fraction, "engine.gpu_memory_fraction must be greater than 0 and at most 1");
}
