"""Ray Train checkpoints: safetensors and JSON that give back the model, the optimizer and the run's settings."""

import json
from dataclasses import replace

import pytest
import torch

from cgi2real.core.config import TrainConfig
from cgi2real.core.errors import InputError
from cgi2real.formats.checkpoints import TRAIN_STATE_JSON, read_checkpoint, write_checkpoint
from cgi2real.model.networks import build_model, set_trainable
from cgi2real.model.training import MaskedCrossEntropy, make_optimizer, train_one_epoch
from cgi2real.storage.locations import locate
from tests.model.test_training import CPU, batches


def test_checkpoint_round_trip_restores_model_and_optimizer(tmp_path):
    torch.manual_seed(0)
    model = build_model(2, 80)
    set_trainable(model, "finetune", "Mixed_7c")
    cfg = TrainConfig(data=("x",), out="y", epochs_finetune=4)
    optimizer, scheduler = make_optimizer(model, cfg, "finetune")
    train_one_epoch(model, MaskedCrossEntropy(), optimizer, batches(n_batches=1), CPU)
    scheduler.step()
    write_checkpoint(str(tmp_path), model, optimizer, scheduler, {"epoch": 0, "stage": "finetune", "history": [{"epoch": 1}]})

    model_state, opt_state, state = read_checkpoint(str(tmp_path))
    restored = build_model(2, 80)
    restored.load_state_dict(model_state)
    set_trainable(restored, "finetune", "Mixed_7c")
    optimizer2, scheduler2 = make_optimizer(restored, cfg, "finetune")
    optimizer2.load_state_dict(opt_state)
    scheduler2.load_state_dict(state["scheduler"])
    assert state["history"] == [{"epoch": 1}] and state["epoch"] == 0
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] < cfg.lr_finetune
    before, after = optimizer.state_dict()["state"], optimizer2.state_dict()["state"]
    assert before.keys() == after.keys() and len(before) > 0
    for index in before:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(before[index][key], after[index][key])
    for (k, v), (k2, v2) in zip(model.state_dict().items(), restored.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_a_run_checkpointed_before_geometry_existed_resumes_as_the_center_crop_it_was(tmp_path):
    from dataclasses import asdict

    import ray.train

    from cgi2real.plans.train import check_resumable

    cfg = TrainConfig(data=("/data",), out="/pkg", weights="none", image_size=80)
    old = {k: v for k, v in asdict(cfg).items() if k not in ("geometry", "max_unreadable")}  # as an older cgi2real stored it
    (tmp_path / TRAIN_STATE_JSON).write_text(json.dumps({"config": old}))
    checkpoint = ray.train.Checkpoint.from_directory(str(tmp_path))
    check_resumable(checkpoint, locate(str(tmp_path)), replace(cfg, geometry="crop"))
    for other in ("pad", "squash"):
        with pytest.raises(InputError, match=r"started with other settings \(--geometry\)"):
            check_resumable(checkpoint, locate(str(tmp_path)), replace(cfg, geometry=other))
