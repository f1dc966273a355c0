"""What a run shows while it works: a progress bar with rate and ETA on a terminal, plain lines
elsewhere (Ray job logs, pipes, CI), and a console that Ray's own chatter does not reach.

Nothing here knows a stage; `label`, `synth`, `train` and `adapt` drive a `Progress`, and the CLI
calls `quiet_ray` unless `--verbose`. No torch and no Ray at import.
"""

import contextlib
import logging
import os
import sys
import time
import warnings

PLAIN_SECONDS = 10.0  # a plain progress line at most this often
VERBOSE_ENV = "CGI2REAL_VERBOSE"
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.util", "ray.air")


def verbose() -> bool:
    """Whether Ray's own messages should reach the console (`--verbose` sets CGI2REAL_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quiet_ray() -> None:
    """Keep Ray's start-up messages, progress chatter and warnings off the console, unless verbose.

    They still go to Ray's log files (`/tmp/ray/session_latest/logs`). Errors are not touched:
    Ray's ERROR records still print, and failures reach the user as exceptions, in one line.
    """
    if verbose():
        return
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"ray(\..*)?$")
    # Ray's C++ side prints some notices at its error level on the driver's console (an actor pool
    # "has constructor arguments in the object store", for every Ray Data actor pool); failures
    # still reach us as Python exceptions. A level the user has set wins.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")


@contextlib.contextmanager
def ray_starting():
    """Around `ray.init`: unless verbose, its C++ side's start-up line (it reports the log level
    it read from RAY_BACKEND_LOG_LEVEL, on file descriptor 2) does not reach the console. A start
    that fails raises, and the CLI prints that error."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def ray_init_options() -> dict:
    """Extra `ray.init` arguments unless verbose: Ray's own INFO lines off the console, and the
    output of Ray's processes (its actors' warnings, Ray Train's and Ray Data's notices) left in
    their log files. Our workers' lines reach the console through `RemoteProgress` instead."""
    return {} if verbose() else {"logging_level": logging.ERROR, "log_to_driver": False}


def on_terminal() -> bool:
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


class Progress:
    """Progress of `total` items of `unit`: a rich bar on a terminal, else a line every PLAIN_SECONDS.

    `advance(n, note)` counts n more done; `note` (e.g. "3 errors") is shown beside the count.
    `total` may grow (`add_total`), as when a listing is still finding files.
    """

    def __init__(self, what: str, total: int, unit: str = "img", bar: bool | None = None):
        self.what, self.total, self.unit = what, total, unit
        self.done, self.note = 0, ""
        self.bar = on_terminal() if bar is None else bar
        self.start = self.last = time.monotonic()
        self.counting_since, self.counted = None, 0  # the rate counts from the first item on, not from start-up
        self.closed, self.lines, self.printed = False, 0, 0  # printed: the count the last plain line showed
        self._rich = self._task = None

    def __enter__(self) -> "Progress":
        if self.bar:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                transient=False, redirect_stdout=True, redirect_stderr=True,
            )
            self._rich.start()
            self._task = self._rich.add_task(self.what, total=self.total or None, rate="", note="")
        return self

    def __exit__(self, *exc) -> None:
        self.close(final_line=exc[0] is None)

    def close(self, final_line: bool = True) -> None:
        """Stop the bar (it stays on screen), or print the last plain line; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._rich is not None:
            self._update()
            self._rich.stop()
            self._rich = None
        elif self.done and final_line and self.lines and self.done != self.printed:  # not the same line twice
            self._line()

    def say(self, line: str) -> None:
        """A line of output above the bar (or among the plain lines)."""
        if self._rich is not None:
            self._rich.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, flush=True)

    def add_total(self, n: int) -> None:
        self.total += n
        if self._rich is not None:
            self._rich.update(self._task, total=self.total)

    def advance(self, n: int = 1, note: str | None = None) -> None:
        if n and self.counting_since is None:
            self.counting_since = time.monotonic()
        elif n:
            self.counted += n
        self.done += n
        if note is not None:
            self.note = note
        if self._rich is not None:
            self._update()
        elif time.monotonic() - self.last >= PLAIN_SECONDS:
            self._line()

    def rate(self) -> float:
        """Items per second since the first ones came (so start-up does not weigh on it)."""
        if self.counting_since is None or not self.counted:
            return 0.0
        return self.counted / max(time.monotonic() - self.counting_since, 1e-9)

    def _update(self) -> None:
        self._rich.update(self._task, completed=self.done, rate=f"{self.rate():.1f} {self.unit}/s", note=self.note)

    def _line(self) -> None:
        self.last, self.lines, self.printed = time.monotonic(), self.lines + 1, self.done
        left = (self.total - self.done) / self.rate() if self.rate() and self.total > self.done else 0.0
        eta = f", about {left:.0f} s left" if left else ""
        note = f", {self.note}" if self.note else ""
        print(f"  {self.what}: {self.done}/{self.total} ({self.rate():.1f} {self.unit}/s{eta}){note}", flush=True)


REPORT_SECONDS = 1.0  # a worker sends its count at most this often


class ProgressReporter:
    """The worker's end of a `RemoteProgress`: counts sent to the driver's queue, batched in time.

    It travels to Ray workers inside their config (it holds only the queue's actor handle).
    """

    def __init__(self, queue):
        self.queue, self.pending, self.last = queue, 0, 0.0

    def restart(self, done: int) -> None:
        """The worker (re)starts with `done` items already behind it (a resumed run)."""
        self.pending = 0
        self.queue.put_nowait(("restart", done))

    def advance(self, n: int) -> None:
        self.pending += n
        if time.monotonic() - self.last >= REPORT_SECONDS:
            self.flush()

    def note(self, text: str) -> None:
        self.flush()
        self.queue.put_nowait(("note", text))

    def say(self, line: str) -> None:
        """A line for the driver's console (a worker's own output may not reach it)."""
        self.flush()
        self.queue.put_nowait(("line", line))

    def flush(self) -> None:
        if self.pending:
            self.queue.put_nowait(("advance", self.pending))
        self.pending, self.last = 0, time.monotonic()


def counted(batches, reporter: ProgressReporter | None, scale: int = 1):
    """`batches` ({"image": ...} dicts) as they are, each counted `scale` times (once per worker,
    when every worker reads as many) in `reporter`."""
    for batch in batches:
        if reporter:
            reporter.advance(len(batch["image"]) * scale)
        yield batch
    if reporter:
        reporter.flush()


class RemoteProgress:
    """Progress counted in Ray workers and shown by the driver: the workers put counts into a
    queue actor (`reporter()`), a driver thread drains it into a `Progress`."""

    def __init__(self, what: str, total: int, unit: str = "img"):
        self.progress = Progress(what, total, unit)

    def __enter__(self) -> "RemoteProgress":
        import threading

        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self.progress.__enter__()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._drain, name="cgi2real-progress", daemon=True)
        self.thread.start()
        return self

    def reporter(self) -> ProgressReporter:
        return ProgressReporter(self.queue)

    def _drain(self) -> None:
        from ray.util.queue import Empty

        while True:  # until stopped with nothing left in the queue: the last epoch's line comes too
            try:
                kind, value = self.queue.get(timeout=0.2)
            except Empty:
                if self.stopping.is_set():
                    return
                continue
            except Exception:  # the queue is gone (Ray shutting down): nothing more to show
                return
            if kind == "restart":
                self.progress.done = value
                self.progress.advance(0)
            elif kind == "note":
                self.progress.advance(0, value)
            elif kind == "line":
                self.progress.say(value)
            else:
                self.progress.advance(value)

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.progress.__exit__(*exc)
        try:
            self.queue.shutdown()
        except Exception:  # best effort: the actor dies with Ray anyway
            pass
