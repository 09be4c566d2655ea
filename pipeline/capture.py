"""The GPU fast path: torch.compile, and work captured whole in a CUDA graph and replayed.

At CIFAR sizes a GPU step is bound by kernel launches, not by the GPU. In a feasibility loop timed
before this code (not part of this repository), an eager ResNet18 step at batch 128 ran at ~11k
img/s, the same step captured in one CUDA graph at ~38k, ~44k with the model compiled. A captured
function reads and writes only tensors that live across calls and never syncs with the host; that
is why the augmentation and the cache lookup are pure functions of device tensors (sample indices,
the epoch's seeds).

Both are on by default on one CUDA device, and off on the CPU and under torchrun (the same code
then runs eagerly): `--no-graph` / `--no-compile` turn them off, e.g. to save compile time.
`--compile` also works on the CPU (Inductor's C++ backend; needs a C++ compiler).
"""
import torch

from .errors import TfkdError, one_line


def fast_path(device, world_size, graph=None, compile=None):
    """(graph, compile) for this process: None means the default (on for one CUDA device)."""
    default = device.type == "cuda" and world_size == 1
    graph = default if graph is None else graph
    compile = default if compile is None else compile
    if graph and device.type != "cuda":
        raise TfkdError(f"--graph needs a CUDA device; on {device.type} drop it (the step runs eagerly)")
    for flag, on in (("--graph", graph), ("--compile", compile)):
        if on and world_size > 1:
            raise TfkdError(f"{flag} runs in one process; under torchrun drop it (ranks run eagerly)")
    return graph, compile


def compiled(module, on):
    """`module` compiled for the fixed batch shapes the fast path feeds it (one graph per shape,
    never a slower dynamic-shape one), or `module` itself."""
    return torch.compile(module, dynamic=False) if on else module


class Graphed:
    """Calls fn() eagerly `warmup` times, then captures it once in a CUDA graph and replays that.

    fn must read its inputs from, and leave its results in, tensors that outlive the call, and must
    not sync with the host. Every call does the real work: the warm-up calls are not thrown away.
    Warm-up lets lazy state exist before capture (optimizer momentum buffers after a first step,
    cuDNN's autotuned algorithms, the caching allocator's pools): a training step needs 3 (as in
    PyTorch's CUDA-graph notes); an inference pass (evaluation, a cache pass) has no such state, 1.
    """

    def __init__(self, fn, enabled, warmup=3, what="a step"):
        self.fn, self.enabled, self.warmup, self.what = fn, enabled, warmup, what
        self.calls, self.graph = 0, None

    def __call__(self):
        if not self.enabled:
            return self.fn()
        if self.graph is None and self.calls < self.warmup:
            # Lazy set-up (cuBLAS/cuDNN handles and autotuning, compilation) must happen before the
            # capture, on a side stream as PyTorch's CUDA-graph notes prescribe.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.fn()
            torch.cuda.current_stream().wait_stream(side)
            self.calls += 1
            return None
        if self.graph is None:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):  # records fn's kernels; runs nothing
                    self.fn()
            except Exception as e:  # fn ran fine eagerly: the capture itself is what failed
                raise TfkdError(f"capturing {self.what} in a CUDA graph failed ({one_line(e)}); "
                                f"rerun with --no-graph (env TFKD_GRAPH=0)") from e
            self.graph = graph
        self.graph.replay()
        return None
