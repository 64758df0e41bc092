"""Data-parallel training across processes: the process group that ``torchrun`` launches.

``torchrun --nproc_per_node N -m lmgen train ...`` starts N copies of ``lmgen train``
and gives each one ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in its environment.
:func:`init` reads them and joins the process group (NCCL on CUDA, gloo on CPU);
:class:`World` then answers the questions the training loop asks: which streams are
mine, am I the process that writes, what is the sum of this over every rank.

The global batch of B streams is laid out exactly as in one process (see
:class:`~lmgen.data.StreamBatcher`) and cut into W contiguous shares::

    stream 0 ─┐
    stream 1 ─┴─ rank 0 (streams [0, B/W))       every window has the same length t
    stream 2 ─┐                                    on every stream, so the mean loss of a
    stream 3 ─┴─ rank 1 (streams [B/W, 2B/W))      rank's share, averaged over ranks (what
                                                   DDP does to gradients), is the mean
                                                   loss of the whole batch

so W ranks of B/W streams take the same steps as one process of B streams.

A rank that dies or hangs must not hang the others: torchrun notices a dead worker and
stops the rest, and every collective operation gives up after ``$LMGEN_DIST_TIMEOUT``
seconds (default 1800) with an error, which :func:`lost_contact` turns into a message.

>>> world = World.single()  # what one process without torchrun gets
>>> world.size, world.rank, world.is_main, world.share(8)
(1, 0, True, slice(0, 8, None))
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .errors import ConfigError, LmgenError

TIMEOUT_ENV = "LMGEN_DIST_TIMEOUT"
FAULT_ENV = "LMGEN_TEST_FAULT"  # test hook: see fault_injector_from_env
DEFAULT_TIMEOUT = 1800.0  # seconds; long enough for rank 0 to encode a large corpus while the others wait


def launched() -> bool:
    """True when torchrun (or another launcher) started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def timeout_seconds() -> float:
    """How long a collective operation waits for the other ranks (``$LMGEN_DIST_TIMEOUT``)."""
    text = os.environ.get(TIMEOUT_ENV, "")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"${TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return value


@dataclass
class World:
    """This process's place among the ranks of one training job.

    ``size`` W processes in all, this one is ``rank`` (``local_rank`` on its machine);
    ``device`` is where this rank computes (``cuda:LOCAL_RANK`` under NCCL).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    owns_group: bool = False  # True when init() created the process group (close() destroys it)

    @classmethod
    def single(cls) -> "World":
        """One process on its own: every collective below is then the identity."""
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, metrics and the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one rank: the collectives below talk to the others."""
        return self.size > 1

    def parallel(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training step calls: ``model`` in DistributedDataParallel across ranks, itself alone.

        DDP broadcasts rank 0's weights now, then averages the gradients over ranks during
        every backward pass, so that all ranks take the same optimiser step.
        """
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        assert self.device is not None, "init() sets the device of every rank"
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def share(self, batch: int) -> slice:
        """The streams of a global batch of ``batch`` that this rank owns (contiguous)."""
        if batch % self.size:
            divisors = [w for w in range(1, batch + 1) if batch % w == 0]
            raise ConfigError(
                f"--batch {batch} is the global number of streams and must be divisible by the {self.size} "
                f"processes (ranks); use --batch {batch + (-batch) % self.size} or another multiple of "
                f"{self.size}, or run {', '.join(map(str, divisors[:8]))} processes"
            )
        per = batch // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    # -- collectives: all ranks must call these, in the same order ----------------------------

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over every rank (float64); the values themselves on one rank."""
        if not self.distributed:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every rank."""
        if not self.distributed:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return t.tolist()

    def gather_state(self, state: Any) -> Any:
        """Every rank's share of a recurrent state, joined in rank order: [L, B/W, H] -> [L, B, H].

        The batch is dimension 1 of every state tensor (LSTM (h, c), GRU/RNN h, and the
        window model's [W-1, B] ids), so the global state is what one process would carry.
        """
        if not self.distributed or state is None:
            return state
        if isinstance(state, tuple):
            return tuple(self.gather_state(s) for s in state)
        import torch.distributed as dist

        parts = [torch.empty_like(state) for _ in range(self.size)]
        dist.all_gather(parts, state.contiguous())
        return torch.cat(parts, dim=1)

    def split_state(self, state: Any, batch: int) -> Any:
        """This rank's share of a global state [L, B, H] -> [L, B/W, H] (inverse of :meth:`gather_state`).

        One process keeps the whole state, as it is.
        """
        if not self.distributed or state is None:
            return state
        if isinstance(state, tuple):
            return tuple(self.split_state(s, batch) for s in state)
        if state.shape[1] != batch:
            raise ConfigError(
                f"the saved hidden state covers {state.shape[1]} streams but --batch is {batch}: "
                f"resume with --batch {state.shape[1]}"
            )
        return state[:, self.share(batch)].contiguous()

    def gather_objects(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (small things only: RNG states)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    @contextlib.contextmanager
    def local_main_first(self) -> Iterator[None]:
        """Rank 0 of each machine runs the block first (fills the token cache), then the others.

        >>> with World.single().local_main_first():
        ...     pass
        """
        if self.local_rank != 0:
            self.barrier()
        yield
        if self.local_rank == 0:
            self.barrier()


def init(device: str = "auto") -> World:
    """Join the process group torchrun described in the environment; one process: :meth:`World.single`.

    ``device`` is ``--device``: auto/cuda use NCCL and ``cuda:LOCAL_RANK``; cpu uses gloo.
    A process group that already exists (created by the caller) is used as it is.
    """
    if not launched():
        return World.single()
    import torch.distributed as dist

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun started more processes on this machine than it has GPUs ({torch.cuda.device_count()}): "
                f"use --nproc_per_node {torch.cuda.device_count()} or fewer"
            )
        torch.cuda.set_device(local_rank)
        where = torch.device("cuda", local_rank)
    else:
        where = torch.device("cpu")
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()))
        owns = True
    return World(rank=rank, size=size, local_rank=local_rank, device=where, owns_group=owns)


def close(world: World) -> None:
    """Leave the process group :func:`init` created (a no-op for one process)."""
    if not world.owns_group:
        return
    import torch.distributed as dist

    # DDP's reducer and its pending gloo work sit in reference cycles: unless collected now,
    # they are freed during interpreter shutdown, after the group is gone, where a gloo worker
    # thread can abort the process ("terminate called without an active exception", SIGABRT;
    # still seen now and then on a loaded machine after train()'s barrier was added).
    gc.collect()
    with contextlib.suppress(Exception):  # after a failure the group may be broken already
        if dist.is_initialized():
            dist.destroy_process_group()


def is_collective_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from the process group (a peer gone, a timeout), not from the model."""
    dist_error = getattr(torch.distributed, "DistError", ())
    if dist_error and isinstance(exc, dist_error):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "timed out",
                                         "timeout", "broken pipe", "socket"))


def lost_contact(world: World, exc: BaseException, out: str) -> LmgenError:
    """The error a rank raises when a collective operation failed: another rank died or hung."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return LmgenError(
        f"rank {world.rank} of {world.size}: lost contact with the other ranks ({first}). Another rank "
        f"probably died or hung (torchrun names the first failure above; a rank that stops answering is given "
        f"up on after ${TIMEOUT_ENV}={timeout_seconds():g} s). Fix it, then continue the run with "
        f"`torchrun ... -m lmgen train --resume --out {out}`"
    )


def shared_stream_loss(
    model: torch.nn.Module,
    tokens: np.ndarray,
    world: World,
    *,
    batch: int = 16,
    bptt: int = 256,
    max_tokens: int = 0,
    amp: bool = True,
) -> tuple[float, int]:
    """:func:`lmgen.evaluate.stream_loss`, with each rank scoring its share of the streams.

    Same streams, windows and state carrying as one process; the summed NLL and token
    count are added over ranks, so every rank gets the same figures (up to the order
    of floating-point additions).
    """
    from .evaluate import stream_loss

    total, count = stream_loss(model, tokens, batch=batch, bptt=bptt, max_tokens=max_tokens, amp=amp,
                               share=(world.rank, world.size))
    total, count_f = world.sum([total, float(count)])
    return total, int(count_f)


def fault_injector_from_env() -> Callable[[int], None] | None:
    """Test hook: the ``on_step`` callback of :func:`lmgen.train.train` that ``$LMGEN_TEST_FAULT`` asks for.

    ``die:RANK:STEP`` makes rank RANK exit (code 17) when it reaches step STEP;
    ``hang:RANK:STEP`` makes it stop answering there. None when the variable is unset (always,
    outside the tests) or names another rank. The tests start ranks through torchrun, so
    they cannot hand ``train()`` a callback themselves: ``lmgen train`` asks here.
    """
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return None
    kind, rank, at = spec.split(":")
    if int(rank) != (int(os.environ["RANK"]) if launched() else 0):
        return None

    def inject(step: int) -> None:
        if step != int(at):
            return
        if kind == "die":
            os._exit(17)
        # "hang": the other ranks must give up on us after $LMGEN_DIST_TIMEOUT. A rank stuck
        # in C++ ignores torchrun's SIGTERM and is killed 30 s later; a test need not wait that.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(3600)

    return inject
