"""The labeling pipeline as Ray Data sees it, importable without torch: file rows -> reading tasks -> Labeler actors.

The driver (`stages.label`) plans the run (`Plan`), puts the checked weights in the object store
(`checked_weights_ref`) and iterates `labeling_dataset`. The functions and actor class here import
torch only inside Ray's workers: the reading tasks' decoders (`pipelines.batches`) and the model
(`pipelines.labeler`).
"""

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from cgi2real.core.errors import InputError
from cgi2real.formats.package import PackageInfo


@dataclass(frozen=True)
class Plan:
    """How a run uses the cluster: where the model runs, how many replicas, where JPEGs are decoded."""

    use_gpu: bool
    actors: int  # model replicas
    gpus_per_actor: float  # 0 on CPU; below 1 when several replicas share a GPU
    cpus_per_actor: float  # the replicas of one GPU reserve one CPU together, so decoding keeps the rest
    actors_per_node: int | None  # CPU replicas per node (they share its cores); None on GPUs
    decode: str  # "cpu": reading tasks decode; "device": the model's device decodes JPEGs
    batch_size: int


def read_files(batch: dict[str, np.ndarray], *, fs: pafs.FileSystem, image_size: int, geometry: str, decode: str) -> dict[str, np.ndarray]:
    """The reading tasks: file rows {path, size} -> what the Labeler takes (`data.decode_for_labeling`,
    or `data.read_for_device` with decode="device")."""
    from cgi2real.pipelines.batches import decode_for_labeling, read_for_device

    read = read_for_device if decode == "device" else decode_for_labeling
    return read(batch, preset=_eval_preset(image_size, geometry), fs=fs)


@functools.cache
def _eval_preset(image_size: int, geometry: str):
    from cgi2real.imaging.presets import EvalPreset

    return EvalPreset(image_size, geometry)


class LabelerActor:
    """`labeler.Labeler` as Ray Data's actor class: the same constructor and call, imported in the actor."""

    def __init__(self, **kwargs):
        from cgi2real.pipelines.labeler import Labeler

        self.labeler = Labeler(**kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.labeler(batch)


def checked_weights_ref(uri: str, s3_endpoint: str | None, config: dict):
    """An ObjectRef to the package's weights, read and checked by a task on this node (`labeler.checked_weights`);
    InputError if they are not the config's or do not fit its network."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On this node, as a local package is on this disk; no CPU reserved, as a head node may have none for tasks.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    error, weights = ray.remote(_checked_weights).options(num_returns=2, num_cpus=0, scheduling_strategy=here).remote(uri, s3_endpoint, config)
    if message := ray.get(error):
        raise InputError(message)
    return weights


def _checked_weights(uri: str, s3_endpoint: str | None, config: dict) -> tuple[str | None, bytes | None]:
    from cgi2real.pipelines.labeler import checked_weights

    return checked_weights(uri, s3_endpoint, config)


def labeling_dataset(rows, fs: pafs.FileSystem, package: PackageInfo, weights_ref, plan: Plan):
    """The Ray Dataset: file rows {path, size} -> reading tasks (CPU) -> Labeler actors -> {path, probs, error, labeled_at}.

    The reading tasks decode and preprocess (`data.decode_for_labeling`), or with `decode="device"`
    pass JPEG bytes on (`data.read_for_device`): at 299 px, 0.1-0.5 of the bytes through the object
    store and a twentieth of the CPU time (BENCHMARKS.md).
    """
    import ray.data

    return (
        rows.map_batches(
            read_files,
            fn_kwargs={"fs": fs, "image_size": package.image_size, "geometry": package.geometry, "decode": plan.decode},
            batch_size=None,
            batch_format="numpy",
        )
        .map_batches(
            LabelerActor,
            fn_constructor_kwargs={
                "config": package.config, "weights": weights_ref, "use_gpu": plan.use_gpu, "actors_per_node": plan.actors_per_node, "decode": plan.decode,
            },
            batch_size=plan.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            num_gpus=plan.gpus_per_actor,
            num_cpus=plan.cpus_per_actor,
        )
    )
