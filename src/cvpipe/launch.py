"""How the train rule starts a training job: plain, under torchrun, and/or with locked GPU ids.

- `gpus: 0`, `ddp_processes: 1`: `python -m cvpipe train ...` (one process, CPU unless
  `device: cuda`);
- `gpus: 0`, `ddp_processes: P > 1`: `torchrun --standalone --nproc_per_node=P -m cvpipe train`
  (DDP on gloo, CPU: the same code path as multi-GPU, for machines without GPUs and for tests);
- `gpus: 1`: `python -m cvpipe gpus --count 1 -- python -m cvpipe train ...` (one process on its
  own GPU);
- `gpus: G > 1`: `python -m cvpipe gpus --count G -- torchrun --standalone --nproc_per_node=G
  -m cvpipe train ...` (one DDP process per GPU, nccl).

`python -m cvpipe`, not the `cvpipe` script: the jobs import cvpipe from the checkout's src/
(`cvpipe.jobenv`), which needs no installed copy, in a container or conda env either.

`cvpipe gpus` (see `cvpipe.gpus`) gives the job G GPU ids of its own; the machine's GPU count
and lock folder come from the environment there, so they never change a rule's params.

Every other job that may touch CUDA goes through the allocator too: evaluate runs
`cvpipe gpus --count 1 -- python -m cvpipe evaluate --device cuda` for a GPU experiment and plain
`python -m cvpipe evaluate --device cpu` for a CPU one (`evaluate_launcher`), so no job ever
lands on a GPU id it did not lock (plots, compare and preprocess never use CUDA).
Imported by the Snakefile: standard library only.
"""

from __future__ import annotations

import shlex


def _allocator(gpus: int) -> list[str]:
    return ["python", "-m", "cvpipe", "gpus", "--count", str(gpus), "--"] if gpus > 0 else []


def train_launcher(gpus: int, ddp_processes: int) -> str:
    """The shell words that precede `train --config ...` in the train rule."""
    processes = gpus if gpus > 0 else ddp_processes
    words: list[str] = _allocator(gpus)
    if processes > 1:
        # --standalone: a private rendezvous on a free local port, so concurrent jobs coexist.
        words += ["torchrun", "--standalone", f"--nproc_per_node={processes}", "-m", "cvpipe"]
    else:
        words += ["python", "-m", "cvpipe"]
    return shlex.join(words)


def evaluate_launcher(gpus: int, command: str = "evaluate") -> str:
    """The shell words that precede the options of an inference stage (`evaluate`, `predict`)
    in its rule, `--device` included.

    A GPU experiment's inference locks one GPU id of its own (inference needs no more); a CPU
    experiment's is told `--device cpu`, so it never initialises CUDA on a shared machine.
    """
    device = "cuda" if gpus > 0 else "cpu"
    return shlex.join(
        [*_allocator(min(gpus, 1)), "python", "-m", "cvpipe", command, "--device", device]
    )
