"""What train, evaluate and label share at run time: Ray start-up, worker output and failures,
and the check that local paths mean the same files on every node of a cluster.

Nothing here knows a stage; the stages import it, never the other way round. No torch either: a
labeling driver imports this module (the model's device is `device.py`).
"""

import os
import re
import secrets
import sys

from cgi2real.core.errors import InputError
from cgi2real.runtime.progress import quiet_ray, ray_init_options, ray_starting
from cgi2real.storage.locations import Location, first_line


def start_ray(min_cpus: int) -> None:
    """Join the cluster in RAY_ADDRESS (as Ray jobs do), or start a local instance of at least `min_cpus` CPUs.

    The local instance keeps its dashboard: Ray Train's placement-group cleaner asks the State
    API, which the dashboard serves, every few seconds.
    """
    import ray
    import ray.data

    quiet_ray()  # again after importing ray.data, which sets its own loggers' levels
    context = ray.data.DataContext.get_current()  # the stages print their own progress lines
    context.enable_progress_bars = context.print_on_execution_start = False
    if ray.is_initialized():
        return
    with ray_starting():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**ray_init_options())
        else:
            # "local": a new instance even when a `ray start` cluster runs on this machine (without
            # an address Ray would join that one, whose CPUs were not sized for this run)
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, min_cpus), **ray_init_options())


def use_gpus(requested: bool | None, needed: int) -> bool:
    """Whether a run uses GPUs: `requested` (--gpu / --cpu), else whether the cluster has any.

    A local instance that has fewer than the `needed` GPUs is refused at once; a cluster in
    RAY_ADDRESS may autoscale, so there Ray waits for them.
    """
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    use = requested if requested is not None else gpus > 0
    if use and gpus < needed and not os.environ.get("RAY_ADDRESS"):
        raise InputError(f"--gpu needs {needed} GPU(s) here (one per model worker); this machine has {gpus}")
    return use


def say(line: str) -> None:
    """A line from a Ray Train worker to the driver's output."""
    # Not print(): Ray Train patches it into a logger that the driver then shows twice.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def failure_reason(error: BaseException, ours: type | tuple[type, ...]) -> str:
    """Why a Ray Train run failed: a worker's own exception of the `ours` types (its message is
    meant for the user), rather than Ray's wrapper around it.

    The worker's exception is looked for in the worker failures, causes and contexts Ray chains
    together (which of them carries it varies with where the run noticed the failure), then in
    the text of Ray's error, which quotes the worker's traceback.
    """
    ours = ours if isinstance(ours, tuple) else (ours,)
    stack, seen, workers = [error], set(), None
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ours):
            return str(e)
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict) and failures and workers is None:
            workers = failures
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__, *(failures.values() if isinstance(failures, dict) else [])]
    for kind in ours:
        quoted = re.search(rf"\b{kind.__name__}: (.+)", str(error))
        if quoted:
            return quoted.group(1).strip()
    return _named(workers[min(workers)]) if workers else first_line(error)


def _named(worker: BaseException) -> str:
    """Not one of ours (a bug, or a value that got past the checks): the first failed worker's own
    exception, named ("ValueError: Invalid learning rate: -1.0"), from what Ray chained or quoted."""
    while getattr(worker, "cause", None) is not None or worker.__cause__ is not None:  # Ray's task wrappers
        worker = getattr(worker, "cause", None) or worker.__cause__
    quoted = re.findall(r"^(\w+(?:Error|Exception)): (.+)$", str(worker), re.MULTILINE)
    if quoted:  # a wrapper whose text ends with the worker's traceback: its last line is the cause
        return f"{quoted[-1][0]}: {quoted[-1][1].strip()}"
    return f"{type(worker).__name__}: {first_line(worker)}"


def node_cpus() -> int:
    """The CPUs of the node this process runs on: Ray's count for it (inside Ray), capped by the
    cores this process may use. A model actor sizes its threads from this, not from the driver's."""
    import ray

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not ray.is_initialized():
        return usable
    node_id = ray.get_runtime_context().get_node_id()
    registered = next((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == node_id), 0)
    return max(1, min(usable, int(registered) or usable))


PROBE_SECONDS = 60.0  # how long check_local_paths waits for every node to answer


def check_local_paths(inputs: dict[str, str], outputs: dict[str, Location]) -> None:
    """On a Ray cluster of several nodes, refuse local paths that some node cannot see.

    Decode tasks, training workers and model actors run on any node, and a local path means the
    same files there only on a shared file system. `inputs` maps an option (e.g. "DATA /x") to one
    local file under it, which every node must find; `outputs` maps an option to a local folder,
    in which a marker file is written here and looked for on every node. S3 locations need no check.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    outputs = {option: folder for option, folder in outputs.items() if folder.scheme == "file"}
    if len(nodes) < 2 or not (inputs or outputs):
        return
    probes, markers = dict(inputs), []
    try:
        for option, folder in outputs.items():
            marker = folder.child(f".cgi2real-shared-{secrets.token_hex(6)}")
            try:
                marker.write_bytes(b"")
            except OSError as e:
                raise InputError(f"{option} {folder.uri} cannot be written: {first_line(e)}") from None
            markers.append(marker)
            probes[option] = marker.path
        probe = ray.remote(num_cpus=0)(_files_exist)  # no CPU asked: it runs on a head that takes no tasks too
        refs = [
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(list(probes.values()))
            for n in nodes
        ]
        answered, _ = ray.wait(refs, num_returns=len(refs), timeout=PROBE_SECONDS)
    finally:
        for marker in markers:
            marker.fs.delete_file(marker.path)
    for node, ref in zip(nodes, refs):
        try:
            seen = ray.get(ref) if ref in answered else None
        except ray.exceptions.RayError:  # the node went away after it was listed (its probe cannot be scheduled)
            seen = None
        if seen is None:  # a node going away, say; the epochs' --max-unreadable check still guards training
            print(f"warning: node {node['NodeManagerAddress']} did not answer within {PROBE_SECONDS:.0f} s; its view of local paths is unchecked", flush=True)
            continue
        blind = [option for option, ok in zip(probes, seen) if not ok]
        if blind:
            raise InputError(
                f"{blind[0]} is a local path that node {node['NodeManagerAddress']} cannot see: on a cluster of {len(nodes)} nodes, "
                "give s3:// URIs or paths on a file system every node mounts"
            )


def _files_exist(paths: list[str]) -> list[bool]:
    return [os.path.exists(p) for p in paths]
