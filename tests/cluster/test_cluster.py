"""Multi-node behaviour on a real three-node Ray cluster on this machine (ray.cluster_utils.Cluster).

Labeling spreads its model actors over the nodes and loses nothing when a node disappears mid-run;
training with --max-failures 1 survives a killed worker by restarting from its checkpoint.
"""

import os
import signal
import threading
import time

import pyarrow.parquet as pq
import pytest

from cgi2real.core.config import LabelConfig, TrainConfig
from cgi2real.stages import label as labeling
from cgi2real.stages import train as training
from tests.conftest import S3_ENV, upload_folder
from tests.labeling import image_files, make_package

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """A head (dashboard on, no CPUs for tasks) and two worker nodes of 2 CPUs, all processes of this machine."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.update(S3_ENV)
    os.environ.pop("RAY_ADDRESS", None)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True})  # work goes to the workers
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def _actor_nodes(class_fragment: str) -> set[str]:
    from ray.util.state import list_actors

    return {a["node_id"] for a in list_actors(limit=1000) if class_fragment in a["class_name"]}


def test_labeling_a_bucket_spreads_over_both_nodes_and_survives_losing_one(cluster, image_root, s3_client, bucket, s3_endpoint, tmp_path):
    ray_cluster, workers = cluster
    images = image_root(24, 96)
    package = make_package(str(tmp_path / "pkg"), images)
    upload_folder(s3_client, images, bucket, "photos")
    out = tmp_path / "labels"
    cfg = LabelConfig(source=f"s3://{bucket}/photos", model=package, out=str(out), batch_size=4, actors=2, rows_per_file=4, s3_endpoint=s3_endpoint)

    removed, removed_at, nodes_before = threading.Event(), [], set()

    def remove_a_node_after_the_first_file():
        deadline = time.monotonic() + 300
        while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.05)
        # a restarted actor reports its new node, so look now; the second actor may still be starting
        while (None in _actor_nodes("Labeler") or len(_actor_nodes("Labeler")) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        nodes_before.update(_actor_nodes("Labeler"))
        ray_cluster.remove_node(workers[1], allow_graceful=False)
        removed_at.append(time.time())
        removed.set()

    remover = threading.Thread(target=remove_a_node_after_the_first_file, daemon=True)
    remover.start()
    summary = labeling.run(cfg)
    remover.join(timeout=60)

    assert removed.is_set()
    parts = sorted(out.glob("part-*.parquet"))
    assert any(p.stat().st_mtime > removed_at[0] for p in parts), "the node went away before the run ended"
    paths = [path for p in parts for path in pq.read_table(p)["path"].to_pylist()]
    expected = [f"s3://{bucket}/photos/{os.path.relpath(p, images)}" for p in image_files(images)]
    assert sorted(paths) == sorted(expected), "every input exactly once"
    assert summary.labeled == len(paths) == 72 and not summary.errors
    assert nodes_before == {w.node_id for w in workers}, "model actors ran on both worker nodes"


def test_training_recovers_from_a_killed_worker(cluster, image_root, tmp_path):
    """Kill the Ray Train worker after its first checkpoint; --max-failures 1 resumes from it."""
    from ray.util.state import list_actors

    storage = tmp_path / "runs"
    cfg = TrainConfig(
        data=(image_root(24, 96),), out=str(tmp_path / "pkg"), weights="none", image_size=80, batch_size=8,
        epochs_head=1, epochs_finetune=1, unfreeze_from="Mixed_7a", storage=str(storage), name="killed", max_failures=1,
    )
    killed = []

    def kill_the_worker_after_the_first_checkpoint():
        snapshot = storage / "killed" / "checkpoint_manager_snapshot.json"
        deadline = time.monotonic() + 300
        while not (snapshot.exists() and "epoch_0001" in snapshot.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000) if "RayTrainWorker" in a["class_name"]]
        for actor in alive:
            os.kill(actor["pid"], signal.SIGKILL)
            killed.append(actor["pid"])

    killer = threading.Thread(target=kill_the_worker_after_the_first_checkpoint, daemon=True)
    killer.start()
    summary = training.run(cfg)
    killer.join(timeout=60)

    assert killed, "no training worker was found to kill"
    assert [e["epoch"] for e in summary.history] == [1, 2]  # each epoch once: epoch 1 was not redone
    assert os.path.exists(tmp_path / "pkg" / "model.safetensors")
