// The NCCL DP group: a non-blocking NCCL communicator among the ranks' GPUs, its unique id
// published by member 0 through the head's rendezvous store. Every collective is polled with
// ncclCommGetAsyncError and aborted with ncclCommAbort at the group's timeout, so a dead or
// stalled member fails the others' collective in bounded time instead of hanging them.
#pragma once

#include "engine/dp_group.hpp"

#include <cuda_runtime.h>

namespace dpengine::cuda {

Result<std::unique_ptr<engine::DpGroup>> make_nccl_group(const engine::GroupSpec& spec,
                                                         engine::RendezvousChannel& channel);

// Sums `count` floats at `data` (device memory) over the members of the NCCL group the rank
// is in, on `stream`, and waits for it. Does nothing when the rank is in no NCCL group. A
// failure ends the group: its next all_reduce_sum reports it, and the head re-forms it.
void all_reduce_activations(float* data, size_t count, cudaStream_t stream);

}  // namespace dpengine::cuda
