"""Where a training run stands, and its ``train_state.pt``: what ``--resume`` needs to continue bit for bit.

Besides the weights (``model.safetensors``), a checkpoint's ``last/train_state.pt`` holds
a plain dict of tensors and numbers (read back with ``torch.load(weights_only=True)``)::

    step, epoch, window, tokens, train_seconds   the data position and the budget spent
    best_val, evals_since_best                   early stopping's memory
    optimizer, schedule                          their state_dict()s
    hidden                                       the carried state, global [L, B, H] ("h", "c")
    rng                                          rank 0's generators (CPU, every GPU)
    rng_ranks                                    under torchrun: each rank's own (CPU, its GPU)

and, only with the options that need them (a default run's keys are those above)::

    position                                     --bptt-jitter: the token offset of the next window
    lengths                                      --bptt-jitter: the window-length generator's state
    average                                      --average / --optimizer ntasgd: the raw weights
                                                 (model.safetensors holds the average), the average
                                                 and its count, NT-ASGD's trigger (lmgen.averaging)

These keys are part of the checkpoint format: runs saved earlier resume by them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from . import distributed
from .config import TrainConfig
from .model import State, state_from_tensors, state_to_tensors
from .schedule import Schedule


@dataclass
class TrainState:
    """Where a run stands between two steps.

    With the optimiser, the schedule and the random generators, this is what
    ``last/train_state.pt`` keeps (:meth:`save`, :meth:`restore`), so that a resumed run
    continues bit for bit.
    """

    step: int = 0
    epoch: int = 0
    window: int = 0  # windows taken this epoch
    position: int = 0  # the next window's token offset in every stream (window x T for fixed windows)
    tokens: int = 0  # target tokens trained on, all ranks together
    train_seconds: float = 0.0
    best_val: float = math.inf
    evals_since_best: int = 0
    hidden: State | None = None  # this rank's carried state [L, B/W, H]; None: the zero state

    def observe(self, val_loss: float | None) -> bool:
        """Count an evaluation towards early stopping; True when it is the best so far."""
        improved = val_loss is not None and val_loss < self.best_val
        if improved:
            self.best_val, self.evals_since_best = val_loss, 0
        elif val_loss is not None:
            self.evals_since_best += 1
        return improved

    def save(self, optimizer: torch.optim.Optimizer, schedule: Schedule, world: distributed.World,
             device: torch.device, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The train_state.pt dict, with ``extra`` entries. Every rank must call it: the carried state
        and the generators are gathered.

        The state saved is the global [L, B, H] one, as one process would save it, so that
        any number of ranks dividing B can resume it.
        """
        saved = {
            "step": self.step, "epoch": self.epoch, "window": self.window, "tokens": self.tokens,
            "train_seconds": self.train_seconds, "best_val": self.best_val,
            "evals_since_best": self.evals_since_best, "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "rng": _rng_state(),
            "hidden": state_to_tensors(world.gather_state(self.hidden)),
        }
        if world.distributed:  # each rank's own generators (in one process "rng" holds them all)
            saved["rng_ranks"] = world.gather_objects(_rank_rng_state(device))
        saved.update(extra or {})
        return saved

    @classmethod
    def restore(cls, saved: dict[str, Any], optimizer: torch.optim.Optimizer, schedule: Schedule,
                world: distributed.World, device: torch.device, cfg: TrainConfig) -> "TrainState":
        """The state :meth:`save` wrote; also loads the optimiser, schedule and generators it holds."""
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        hidden = state_from_tensors(saved["hidden"], device)
        # Fixed windows save no position: theirs is window x T (runs saved before --bptt-jitter, too).
        position = saved.get("position", saved["window"] * cfg.bptt)
        state = cls(saved["step"], saved["epoch"], saved["window"], position, saved["tokens"],
                    saved["train_seconds"], saved["best_val"], saved["evals_since_best"],
                    world.split_state(hidden, cfg.batch))  # global [L, B, H] -> this rank's [L, B/W, H]
        _restore_rng(saved, world, device, cfg.seed)
        return state


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _rank_rng_state(device: torch.device) -> dict[str, Any]:
    """This rank's generators (CPU, and its own GPU): what its dropout masks come from."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(saved: dict[str, Any], world: distributed.World, device: torch.device, seed: int) -> None:
    """Put back the generators that the saved run's next dropout masks would have come from."""
    if not world.distributed:
        torch.set_rng_state(saved["rng"]["torch"])
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            # Saved on a machine with as many GPUs or more: the ones this machine has.
            for index, state in enumerate(saved["rng"]["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, index)
        return
    ranks = saved.get("rng_ranks") or []
    mine = ranks[world.rank] if len(ranks) == world.size else saved["rng"] if world.is_main else None
    if mine is None:  # a different number of ranks: fresh (but seeded) dropout masks for the new ranks
        torch.manual_seed(seed + world.rank + 1_000_003 * saved["step"])
        return
    torch.set_rng_state(mine["torch"])
    cuda = mine.get("cuda") if device.type == "cuda" else None
    if isinstance(cuda, (list, tuple)):  # a one-process save holds every GPU's generator: take this rank's
        cuda = cuda[device.index or 0] if len(cuda) > (device.index or 0) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def check_saved(saved: Any, model: torch.nn.Module, batch: int, path: str) -> None:
    """Refuse a train_state.pt that does not belong to this run, before anything is loaded from it.

    A state swapped from another run (another model, another --batch) or edited by hand
    would otherwise fail deep inside the optimiser or the first step with a shape error.
    Checked: the plain entries' types, the carried state's shapes against the model's zero
    state for ``batch`` streams, the optimiser's parameter count and the shape of every
    per-parameter tensor, and the saved raw weights of an averaged run.
    """
    from .errors import CheckpointError

    def refuse(what: str) -> None:
        raise CheckpointError(f"{path} does not belong to this run ({what}); it was swapped from another run "
                              "or damaged: resume from the run's own last/ or start again")

    if not isinstance(saved, dict):
        refuse("not a dict")
    for key, kinds in (("step", int), ("epoch", int), ("window", int), ("tokens", int),
                       ("train_seconds", (int, float)), ("best_val", (int, float)), ("evals_since_best", int)):
        if not isinstance(saved.get(key), kinds) or isinstance(saved.get(key), bool):
            refuse(f"{key!r} is {saved.get(key)!r}")
    hidden, zero = saved.get("hidden"), state_to_tensors(model.init_state(batch, "cpu"))
    if hidden and (not isinstance(hidden, dict) or hidden.keys() != zero.keys()
                   or any(not isinstance(hidden[k], torch.Tensor) or hidden[k].shape != zero[k].shape for k in zero)):
        refuse(f"its carried state is not the model's {', '.join(f'{k} {tuple(v.shape)}' for k, v in zero.items())}")
    params = list(model.parameters())
    optimizer = saved.get("optimizer")
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("param_groups"), list):
        refuse("no optimiser state")
    ids = [i for group in optimizer["param_groups"] if isinstance(group, dict) for i in group.get("params", [])]
    if len(ids) != len(params):
        refuse(f"the optimiser holds {len(ids)} parameters, the model {len(params)}")
    for index, state in (optimizer.get("state") or {}).items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(state, dict):
            refuse(f"optimiser entry {index!r}")
        for name, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                refuse(f"optimiser {name} of parameter {index} is {tuple(value.shape)}, "
                       f"the parameter {tuple(params[index].shape)}")
    average = saved.get("average")
    if average is not None:
        named = dict(model.named_parameters())
        weights = average.get("weights") if isinstance(average, dict) else None
        if not isinstance(weights, dict) or any(
                name not in named or not isinstance(w, torch.Tensor) or w.shape != named[name].shape
                for name, w in weights.items()):
            refuse("its saved raw weights do not fit the model")
