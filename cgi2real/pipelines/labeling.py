"""The labeling pipeline as Ray Data sees it, importable without torch: file rows -> reading tasks -> Labeler actors.

The driver (`stages.label`) plans the run (`Plan`), puts the package's weights in the object store
(`put_weights`) and iterates `labeling_dataset`. The functions and actor class here import
torch only inside Ray's workers: the reading tasks' decoders (`pipelines.batches`) and the model
(`pipelines.labeler`).
"""

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from cgi2real.core.errors import InputError
from cgi2real.formats.package import PackageInfo, check_weights, read_package_weights
from cgi2real.storage.locations import Location


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
    compile: bool | None = None  # torch.compile the model step; None: on GPUs (model.inference)


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
    """`labeler.Labeler` as Ray Data's actor class: the same constructor and call, imported in the actor.

    A package whose weights do not fit its network is refused here, where the network is built
    (`model.package_from_bytes`): the actor has no model then and gives every row the error
    REFUSED + the reason, which the driver turns into that one line before it writes any row
    (an actor failing instead would print Ray's tracebacks)."""

    def __init__(self, **kwargs):
        from cgi2real.pipelines.labeler import Labeler

        self.refusal, self.num_classes = "", len(kwargs["config"]["classes"])
        try:
            self.labeler = Labeler(**kwargs)
        except InputError as e:
            self.refusal = REFUSED + str(e)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.refusal:
            n = len(batch["path"])
            return {"path": batch["path"], "probs": np.full((n, self.num_classes), np.nan, np.float32),
                    "error": np.full(n, self.refusal, object), "labeled_at": np.zeros(n, np.int64)}
        return self.labeler(batch)


REFUSED = "refused: "  # the error of every row of an actor that refused the package; never written (stages.label)


def put_weights(folder: Location, package: PackageInfo):
    """An ObjectRef to the package's weights, read by the driver and checked against its config's
    SHA-256 (InputError if they differ): one copy in the object store serves every actor. The
    actors check that they fit the network, as they build it (`LabelerActor`)."""
    import ray

    weights = read_package_weights(folder)  # its config.json is `package`'s, read already
    check_weights(package.config, weights, folder.uri)
    return ray.put(weights)


def labeling_dataset(rows, fs: pafs.FileSystem, package: PackageInfo, package_uri: str, weights_ref, plan: Plan):
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
                "batch_size": plan.batch_size, "compile": plan.compile, "package_uri": package_uri,
                "compile_in_background": True,  # rows flow from the first batch; compiled kernels take over when built
            },
            batch_size=plan.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            num_gpus=plan.gpus_per_actor,
            num_cpus=plan.cpus_per_actor,
        )
    )
