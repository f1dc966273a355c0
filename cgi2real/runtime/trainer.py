"""The Ray Train scaffold that `train` and `adapt` share, so that their loops hold only their maths.

In a worker, `Worker.start` sets the device, threads and seed; `resumed` reads the checkpoint Ray
resumes from; `place` puts the model on the device; `report` writes the epoch's checkpoint (rank 0)
and reports its metrics; `all_reduce_sum` and `all_reduce_max` combine numbers over the workers.
On the driver, `fit` runs a loop on a `TorchTrainer` and turns a failed run into one line.
"""

import json
import os
import tempfile
from dataclasses import dataclass

import torch
from torch import nn

from cgi2real.core.errors import RunFailed
from cgi2real.formats.checkpoints import read_checkpoint, write_checkpoint
from cgi2real.runtime.cluster import failure_reason, say
from cgi2real.runtime.progress import ProgressReporter
from cgi2real.storage.locations import Location


@dataclass
class Worker:
    """One Ray Train worker: where it runs and how it talks to the driver."""

    rank: int
    world_size: int
    device: torch.device
    progress: ProgressReporter | None  # rank 0's line to the driver's progress bar (None elsewhere)

    @classmethod
    def start(cls, config: dict, seed: int) -> "Worker":
        """Set up this worker: its device, a thread per core of its share of the node, the seed."""
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        device = ray.train.torch.get_device()
        if device.type == "cpu":  # Ray sets 1 thread per reserved CPU; use this node's cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // context.get_local_world_size()))
        torch.manual_seed(seed)
        rank = context.get_world_rank()
        return cls(rank, context.get_world_size(), device, config.get("progress") if rank == 0 else None)

    def tell(self, line: str) -> None:
        """A line on the driver's console, from rank 0 (the driver may not show a worker's own output)."""
        if self.rank == 0:
            (self.progress.say if self.progress else say)(line)

    def resumed(self) -> tuple[dict, dict, dict] | None:
        """(model state, optimizer state, train state) of the checkpoint this run resumes from, or None."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return None
        with checkpoint.as_directory() as folder:
            return read_checkpoint(folder)

    def place(self, model: nn.Module) -> nn.Module:
        """The model on this worker's device (channels_last on GPU); before its optimizer is made."""
        model.to(self.device)
        if self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        return model

    def report(self, epoch: int, metrics: dict, model: nn.Module, optimizer, scheduler, state: dict, line: str, files: dict | None = None) -> None:
        """Report an epoch's metrics with its checkpoint (written by rank 0, with `files` as JSON beside it)."""
        import ray.train

        with tempfile.TemporaryDirectory() as folder:
            if self.rank == 0:
                write_checkpoint(folder, model, optimizer, scheduler, state)
                for name, content in (files or {}).items():
                    with open(os.path.join(folder, name), "w") as f:
                        json.dump(content, f)
                self.tell(line)
            checkpoint = ray.train.Checkpoint.from_directory(folder) if self.rank == 0 else None
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch + 1:04d}")


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over data-parallel workers (a copy); the tensor itself for one process."""
    if _distributed():
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum over data-parallel workers (a copy); the tensor itself for one process."""
    if _distributed():
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor


def fit(
    loop, loop_config: dict, *, what: str, workers: int, use_gpu: bool, storage: Location, name: str,
    max_failures: int, datasets: dict, checkpoint_config, expected: type | tuple[type, ...],
):
    """Run `loop` on `workers` Ray Train workers and return Ray's Result.

    A failed run raises RunFailed with the worker's own message when it is one of the `expected`
    exception types (meant for the user), and says how to resume.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage.path,
            storage_filesystem=storage.fs,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=checkpoint_config,
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
    )
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise RunFailed(
            f"{what} failed: {failure_reason(e, expected)} (run folder {storage.child(name).uri}; rerun with the same --storage/--name to resume)"
        ) from e
