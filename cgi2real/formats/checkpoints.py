"""Ray Train checkpoints of cgi2real runs (train, adapt): safetensors and JSON, never pickle.

Torch is imported only to write or read the tensors: a run's plan reads the JSON without it.

A checkpoint folder holds the model's weights (`model.safetensors`), the optimizer's tensors
(`train_state.safetensors`) and everything else as JSON (`train_state.json`: epoch, history,
the run's config, the package config to export). Checkpoints are read where they are stored,
file by file, not downloaded as a folder.
"""

import json
import os
from dataclasses import asdict

from cgi2real.core.errors import InputError
from cgi2real.formats.package import WEIGHTS_FILE
from cgi2real.storage.locations import read_whole

TRAIN_STATE_TENSORS = "train_state.safetensors"
TRAIN_STATE_JSON = "train_state.json"
SPLIT_JSON = "split.json"  # which files of each root were held out; a resumed run keeps it


def write_checkpoint(folder: str, model, optimizer, scheduler, state: dict) -> None:
    """Model weights (of an nn.Module), optimizer tensors and everything else as JSON, into `folder`."""
    import torch
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, WEIGHTS_FILE))
    tensors, optimizer_meta = {}, {}
    opt_state = optimizer.state_dict()
    for index, entries in opt_state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                optimizer_meta.setdefault(str(index), {})[key] = value
    save_file(tensors, os.path.join(folder, TRAIN_STATE_TENSORS))
    state = {
        **state,
        "optimizer": {"param_groups": opt_state["param_groups"], "scalars": optimizer_meta},
        "scheduler": scheduler.state_dict(),
    }
    with open(os.path.join(folder, TRAIN_STATE_JSON), "w") as f:
        json.dump(state, f)


def read_train_state(folder: str) -> dict:
    with open(os.path.join(folder, TRAIN_STATE_JSON)) as f:
        return json.load(f)


def read_checkpoint(folder: str) -> tuple[dict, dict, dict]:
    """(model state dict, optimizer state dict, train state) from a checkpoint folder."""
    from safetensors.torch import load_file

    state = read_train_state(folder)
    opt_state: dict = {}
    for key, value in load_file(os.path.join(folder, TRAIN_STATE_TENSORS)).items():
        index, name = key.split(".", 1)
        opt_state.setdefault(int(index), {})[name] = value
    for index, scalars in state["optimizer"]["scalars"].items():
        opt_state.setdefault(int(index), {}).update(scalars)
    optimizer = {"state": opt_state, "param_groups": state["optimizer"]["param_groups"]}
    return load_file(os.path.join(folder, WEIGHTS_FILE)), optimizer, state


def latest_result(run_folder):
    """What a Ray Train run folder holds so far, as the `Result` its `fit()` would return, or None
    (no folder, or nothing checkpointed yet)."""
    if not run_folder.exists():
        return None
    from ray.train import Result  # 1.5 s to import: only for a run that has a folder

    try:
        return Result.from_path(run_folder.path, storage_filesystem=run_folder.fs)
    except RuntimeError:  # a folder without a checkpoint snapshot: nothing to resume
        return None


def latest_checkpoint(run_folder):
    """The newest checkpoint of a Ray Train run folder, or None (no folder, or nothing checkpointed yet)."""
    result = latest_result(run_folder)
    return result.checkpoint if result is not None else None


def read_checkpoint_json(checkpoint, name: str):
    """One JSON file of a Ray checkpoint, read where it is stored (None if it has no such file)."""
    try:
        return checkpoint_file(checkpoint, name, json.loads)
    except FileNotFoundError:
        return None


def checkpoint_file(checkpoint, name: str, parse):
    """One file of a Ray checkpoint, read where it is stored (no download of the whole folder)."""
    return parse(read_whole(checkpoint.filesystem, f"{checkpoint.path}/{name}"))


def check_same_settings(latest, run_folder, cfg, resumable: frozenset[str], legacy: dict | None = None) -> dict:
    """Refuse to resume a run whose latest checkpoint was made with other settings than `cfg`'s;
    return that checkpoint's train state (read once, here).

    `resumable` names the settings that may change (where the output goes, how many workers);
    `legacy` says what a run checkpointed before a setting existed did instead.
    """
    state = read_checkpoint_json(latest, TRAIN_STATE_JSON)
    previous = state["config"]
    legacy = legacy or {}
    changed = sorted(k for k, v in asdict(cfg).items() if k not in resumable and _jsonable(v) != previous.get(k, legacy.get(k)))
    if changed:
        raise InputError(
            f"run {run_folder.uri} was started with other settings ({', '.join('--' + k.replace('_', '-') for k in changed)}); "
            "rerun with the same settings to resume, or pass a new --name"
        )
    return state


def _jsonable(value):
    return json.loads(json.dumps(value))
