"""Run cgi2real commands on a Ray cluster as Ray Jobs: the runtime_env, the logs, the exit status.

The job runs `python jobs/<command>.py ARGS` with this project's folder as its working_dir, so the
cluster runs the code you have here. S3 settings (endpoint, region) travel in the job's env_vars;
AWS keys only with `--pass-aws-credentials` (on a cluster, prefer an instance role: env_vars are
visible to anyone who can read the dashboard).
"""

import asyncio
import os
import shlex
import time

import cgi2real
from cgi2real.core.errors import InputError
from cgi2real.storage.locations import first_line

COMMANDS = ("train", "adapt", "label", "synth")
PASSED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
AGENT_WAIT_SECONDS = 60


def project_root() -> str:
    """The folder holding jobs/ and cgi2real/: what a job ships as its working_dir."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(cgi2real.__file__)))
    if not os.path.isfile(os.path.join(root, "jobs", "label.py")):
        raise InputError(f"submit needs the cgi2real source folder (with jobs/); {root} has none: run it from a checkout")
    return root


def runtime_env(pass_credentials: bool) -> dict:
    names = PASSED_ENV + (CREDENTIAL_ENV if pass_credentials else ())
    return {"working_dir": project_root(), "env_vars": {k: os.environ[k] for k in names if os.environ.get(k)}}


def entrypoint(command: str, args: list[str]) -> str:
    if command not in COMMANDS:
        raise InputError(f"cannot submit {command!r}: choose one of {', '.join(COMMANDS)}")
    return " ".join(shlex.quote(part) for part in ["python", f"jobs/{command}.py", *args])


def submit(command: str, args: list[str], address: str | None = None, pass_credentials: bool = False, echo=print) -> bool:
    """Submit a job, stream its logs through `echo`, and return whether it succeeded."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    line = entrypoint(command, args)
    env = runtime_env(pass_credentials)
    deadline = time.monotonic() + AGENT_WAIT_SECONDS
    while True:
        try:
            client = JobSubmissionClient(address, headers=_auth_headers())
            job_id = client.submit_job(entrypoint=line, runtime_env=env)
            break
        except Exception as e:  # connection refused, auth, a bad runtime_env: all one line for the user
            if "No available agent" in str(e) and time.monotonic() < deadline:
                time.sleep(1)  # a head that has just started: its job agent registers within seconds
                continue
            raise InputError(f"cannot submit to the Ray Jobs API at {address}: {first_line(e)}") from None
    echo(f"submitted {job_id} to {address}: {line}")
    echo(f"(Ctrl-C stops following the logs, not the job: `ray job stop --address {address} {job_id}`)")
    asyncio.run(_follow(client, job_id, echo))
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    while (status := client.get_job_status(job_id)) not in terminal:
        time.sleep(0.5)
    echo(f"job {job_id}: {status.value}")
    return status == JobStatus.SUCCEEDED


def _auth_headers() -> dict[str, str]:
    """The bearer token a Ray 2.60 head asks for: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.

    Passed explicitly rather than through RAY_AUTH_MODE, which Ray reads once per process.
    """
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = os.path.expanduser(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"))
    if not token and os.path.isfile(path):
        with open(path) as f:
            token = f.read().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _follow(client, job_id: str, echo) -> None:
    async for chunk in client.tail_job_logs(job_id):
        echo(chunk.rstrip("\n"))
