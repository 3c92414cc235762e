"""Bad cuda backend and DP group settings are refused before anything starts, with a message
that names the key and the fix (as test_bad_config.py checks the other keys): device numbers
that are not numbers or are given as integers, a device listed twice without gpu_sharing, a
memory fraction above 1 or at 0, a model shape out of range, NCCL without the cuda backend or
with shared GPUs, and an unknown group library. A good cuda config passes --check-config and
prints its keys."""

import tomllib

from harness import check_eq, log, run_dpengined, run_test
from test_bad_config import EX_CONFIG, Scratch, run_bad

TAIL = '\n[daemon]\nruntime_directory = "@RUNTIME@"\n'


def main() -> None:
    s = Scratch()
    cases = [
        ('[engine]\nbackend = "cuda"\ngpus = ["0", "one"]\n',
         ["engine.gpus: 'one' is not a CUDA device number", "[\"0\", \"1\"]"], "device number not a number"),
        ('[engine]\nbackend = "cuda"\ngpus = [0, 1]\n', [":3: engine.gpus: expected an array of strings"],
         "device numbers as integers"),
        ('[engine]\nbackend = "cuda"\ngpus = ["1", "1"]\n',
         ["engine.gpus lists device 1 twice", "engine.gpu_sharing = true"], "device listed twice"),
        ('[engine]\nbackend = "cuda"\ngpu_memory_fraction = 1.5\n',
         ["engine.gpu_memory_fraction must be greater than 0 and at most 1"], "memory fraction above 1"),
        ('[engine]\nbackend = "cuda"\ngpu_memory_fraction = 0\n',
         [":3: engine.gpu_memory_fraction: expected a number greater than 0"], "memory fraction 0"),
        ('[engine]\nbackend = "cuda"\nhidden_size = 8\n',
         [":3: engine.hidden_size: expected an integer from 16 to 65536, got 8"], "hidden size too small"),
        ('[engine]\nbackend = "cuda"\nnum_layers = 0\n',
         [":3: engine.num_layers: expected an integer from 1 to 1024, got 0"], "no layers"),
        ('[data_parallel]\ndp_sync = "lockstep"\ngroup = "nccl"\n',
         ["data_parallel.group = \"nccl\" needs engine.backend = \"cuda\"", "use \"gloo\" or \"auto\""],
         "nccl without the cuda backend"),
        ('[data_parallel]\ndp_sync = "lockstep"\ngroup = "nccl"\n[engine]\nbackend = "cuda"\ngpu_sharing = true\n',
         ["cannot run with engine.gpu_sharing = true", "use data_parallel.group = \"gloo\""],
         "nccl with shared GPUs"),
        ('[data_parallel]\ngroup = "mpi"\n', ["data_parallel.group: unknown group 'mpi'; use \"auto\", \"gloo\" or \"nccl\""],
         "unknown group"),
    ]
    for text, needles, what in cases:
        path, runtime = s.config(text + TAIL)
        run_bad(path, runtime, [], EX_CONFIG, needles, what)

    log("a good cuda config:")
    path, runtime = s.config('[data_parallel]\nsize = 2\ndp_sync = "lockstep"\n[engine]\nbackend = "cuda"\n'
                             'gpus = ["1", "0"]\nhidden_size = 2048\ngpu_memory_fraction = 0.5\n' + TAIL)
    r = run_dpengined(["--config", path, "--check-config"])
    check_eq(r.returncode, 0, "a good cuda config passes --check-config")
    eff = tomllib.loads(r.stdout)
    check_eq(eff["engine"]["gpus"], ["1", "0"], "engine.gpus printed")
    check_eq(eff["engine"]["hidden_size"], 2048, "engine.hidden_size printed")
    check_eq(eff["engine"]["gpu_sharing"], False, "engine.gpu_sharing printed (default)")
    check_eq(eff["data_parallel"]["group"], "auto", "data_parallel.group printed (default)")


if __name__ == "__main__":
    run_test(main, timeout=120)
