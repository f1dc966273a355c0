"""What the stages share at run time: the reason a Ray Train run failed, in the worker's own words."""

from cgi2real.model.training import UnreadableImages


class RayWrapper(Exception):
    """As Ray Train V2 reports a failed run: a dict of worker failures, each with a cause."""

    def __init__(self, message, failures):
        super().__init__(message)
        self.worker_failures = failures


def test_failure_reason_finds_the_workers_own_error_wherever_ray_put_it():
    from cgi2real.runtime.cluster import failure_reason

    ours = UnreadableImages("4 training images of epoch 1 could not be read")
    nested = RuntimeError("RayTaskError(UnreadableImages)")
    nested.cause = ours
    assert failure_reason(RayWrapper("Training failed.", {0: nested}), UnreadableImages) == str(ours)
    try:
        try:
            raise ours
        except UnreadableImages as e:
            raise RuntimeError("the controller gave up") from e
    except RuntimeError as chained:
        assert failure_reason(chained, UnreadableImages) == str(ours)
    quoted = RuntimeError("Training failed.\nTraceback (most recent call last):\n  ...\ncgi2real.model.training.UnreadableImages: 4 of 24 could not be read\n")
    assert failure_reason(quoted, UnreadableImages) == "4 of 24 could not be read"
    assert failure_reason(RuntimeError("Worker group died.\nmore"), UnreadableImages) == "Worker group died."


def test_any_other_worker_error_is_named_with_its_message():
    from cgi2real.runtime.cluster import failure_reason

    bug = ValueError("Invalid learning rate: -1.0")
    assert failure_reason(RayWrapper("Training failed due to worker errors:\n", {1: KeyError("x"), 0: bug}), UnreadableImages) == (
        "ValueError: Invalid learning rate: -1.0"  # the first worker's, not Ray's empty first line
    )
    quoted = RuntimeError("RayTaskError: the worker failed.\nTraceback (most recent call last):\n  ...\nValueError: Invalid learning rate: -1.0")
    assert failure_reason(RayWrapper("Training failed due to worker errors:", {0: quoted}), UnreadableImages) == "ValueError: Invalid learning rate: -1.0"
