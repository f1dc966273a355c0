"""The Ray Train scaffold that train and adapt share: a worker's failure reaches the driver as its cause."""

import pytest

from cgi2real.core.errors import RunFailed
from cgi2real.model.training import UnreadableImages
from cgi2real.storage.locations import locate

pytestmark = pytest.mark.slow


def failing_loop(config: dict) -> None:
    import torch

    from cgi2real.runtime.trainer import Worker

    Worker.start(config, seed=0)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=config["lr"])  # torch refuses it: not one of our errors


def test_a_worker_failure_reaches_the_console_as_its_cause(ray_cluster, tmp_path):
    """A value that gets past the checks on purpose: the run fails with the worker's own exception, named, in one line."""
    import ray.train

    from cgi2real.runtime.trainer import fit

    with pytest.raises(RunFailed) as failed:
        fit(failing_loop, {"lr": -1.0}, what="training", workers=1, use_gpu=False, storage=locate(str(tmp_path)), name="fails",
            max_failures=0, datasets={}, checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1), expected=UnreadableImages)
    message = str(failed.value)
    assert message.startswith("training failed: ValueError: Invalid learning rate: -1.0"), message
    assert "\n" not in message.strip() and f"run folder {tmp_path}/fails" in message
