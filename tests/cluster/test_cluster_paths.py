"""Local paths on a cluster whose nodes do not share a file system, for real.

The cluster: a head on this machine (no CPUs for tasks, so all work goes elsewhere) and one worker
node started in its own mount namespace, with an empty tmpfs over this test session's temporary
folder: that node cannot see the images, packages and folders the tests make, exactly like a
second machine. It is also pinned to one core, a smaller machine than the driver's. Needs
`unshare` and the right to mount (root, as CI runs); skipped otherwise.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from cgi2real.core.config import LabelConfig, SynthConfig, TrainConfig
from cgi2real.core.errors import InputError
from cgi2real.formats.package import read_model_package
from cgi2real.model.networks import load_model_package
from cgi2real.pipelines.labeler import Labeler
from cgi2real.stages import label as labeling
from cgi2real.stages import synth as dataset
from cgi2real.stages import train as training
from tests.conftest import S3_ENV, upload_folder
from tests.labeling import make_package

pytestmark = pytest.mark.slow


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def blind_cluster(tmp_path_factory):
    """(head node id, blind node id): the blind node sees an empty folder where this session's files are."""
    if not _can_unshare():
        pytest.skip("needs unshare -m (root) to start a node with its own mounts")
    import ray
    from ray.cluster_utils import Cluster

    os.environ.update(S3_ENV)
    os.environ.pop("RAY_ADDRESS", None)
    hidden = str(tmp_path_factory.getbasetemp())
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True})
    ray.init(address=cluster.address)
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    node = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs none {hidden} && exec taskset -c 0 {ray_cli} start --address={cluster.address} --num-cpus=3 --block --disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while len([n for n in ray.nodes() if n["Alive"]]) < 2:
        if node.poll() is not None or time.monotonic() > deadline:
            ray.shutdown()
            cluster.shutdown()
            pytest.skip("the node with its own mounts did not join")
        time.sleep(0.5)
    head = cluster.head_node.node_id
    blind = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head)
    yield head, blind
    ray.shutdown()
    os.killpg(node.pid, signal.SIGTERM)
    node.wait(timeout=60)
    cluster.shutdown()


def test_local_paths_that_a_node_cannot_see_are_refused(blind_cluster, image_root, tmp_path):
    images = image_root(4, 96)
    package = make_package(str(tmp_path / "pkg"), images)
    with pytest.raises(InputError, match=f"SOURCE {images} is a local path that node .* cannot see: on a cluster of 2 nodes"):
        labeling.run(LabelConfig(source=images, model=package, out=str(tmp_path / "labels")))
    assert not any(name.startswith("part-") for name in os.listdir(tmp_path / "labels"))  # no "file not found" rows
    cfg = TrainConfig(data=(images,), out=str(tmp_path / "model"), weights="none", image_size=80, batch_size=4, epochs_head=1, epochs_finetune=0,
                      storage=str(tmp_path / "runs"))
    with pytest.raises(InputError, match=f"--data {images} is a local path that node"):
        training.run(cfg)
    with pytest.raises(InputError, match="--out is a local path that node"):
        dataset.run(SynthConfig(out=str(tmp_path / "renders"), per_class=1, size=64))


def test_s3_data_trains_from_a_package_only_the_driver_can_read(blind_cluster, image_root, tmp_path, s3_client, bucket, s3_endpoint):
    """The starting weights travel through the object store: workers on the blind node never read the local package."""
    upload_folder(s3_client, image_root(8, 96), bucket, "data")
    package = make_package(str(tmp_path / "start"), image_root(4, 96))
    cfg = TrainConfig(
        data=(f"s3://{bucket}/data",), out=f"s3://{bucket}/model", weights=package, image_size=80, batch_size=4,
        epochs_head=1, epochs_finetune=0, storage=f"s3://{bucket}/runs", name="blind", s3_endpoint=s3_endpoint,
    )
    summary = training.run(cfg)
    assert summary.best_epoch == 1
    trained = load_model_package(f"s3://{bucket}/model", s3_endpoint)
    assert trained.config["training"]["config"]["weights"] == package and trained.config["training"]["epochs"][0]["bad_images"] == 0


def test_a_cpu_model_actor_sizes_its_threads_from_its_own_node(blind_cluster, image_root, tmp_path):
    import ray
    import torch
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    _, blind = blind_cluster
    config, weights = read_model_package(make_package(str(tmp_path / "pkg"), image_root(4, 96)))

    @ray.remote(num_cpus=3)  # all the blind node has: Ray alone would give torch 3 threads
    def threads() -> int:
        Labeler(config, weights, use_gpu=False, actors_per_node=1)
        return torch.get_num_threads()

    on_blind = ray.get(threads.options(scheduling_strategy=NodeAffinitySchedulingStrategy(blind, soft=False)).remote())
    assert on_blind == 1 != os.cpu_count()  # the node's one core, not the driver's count
