"""Where a sweep runs: starting or joining Ray, what the cluster has, and the preflight that
fails before any compute when a trial could never be placed or its results never stored.

Design choices:
- A local Ray starts with the dashboard off, quiet logs and no third-party noise; `--address`
  or `$RAY_ADDRESS` joins an existing cluster instead, shipping this package's code to its
  workers (`runtime_env` py_modules), so every node runs the driver's version.
- Trials asking for resources a cluster lacks stay PENDING forever in Ray, with no error; the
  preflight compares the request with `ray.cluster_resources()` and fails first, naming it.
- On a cluster of several nodes, a local `--storage` folder exists only on the driver's node:
  Ray fails at a trial's first checkpoint and leaves stray files on the others. The preflight
  refuses it, naming the fix (a URI, or `--shared-storage` for a folder every node mounts).
- Ray snapshots the experiment state only every >= 10 s by default; we set 1 s so a sweep killed
  mid-way resumes its trials from their checkpoints rather than from step 0.
- A local Ray listens on 127.0.0.1 only. Ray (2.41 to 2.60 at least) takes the address of the
  machine's default route as its node address, also when `_node_ip_address="127.0.0.1"` is
  given (`services.resolve_ip_for_localhost` turns it back into that address), and then binds
  GCS, raylet, object manager, workers and agents to it or to every interface, unauthenticated
  before Ray 2.52. Ray's single-machine mode (what it uses on macOS and Windows,
  `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read as `ray_constants.ENABLE_RAY_CLUSTER`) makes the
  node address 127.0.0.1, and every server then binds loopback only (ray-project/ray#55484 and
  #59852 bind to the node address). It is switched on only while the local head starts, so a
  later `--address` in the same process still joins a cluster by its own address. Should a Ray
  start elsewhere anyway, the sweep refuses to run unless that Ray requires its token
  (`RAY_AUTH_MODE=token`, Ray >= 2.52). Checked with `ss` in a network namespace with a default
  route: tests/test_loopback.py.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import sys
from contextlib import contextmanager

from ..spec.io import log
from ..training.runtime import local_gpus
from .options import SweepError

SNAPSHOT_PERIOD_S = "1"
# Ray and its libraries print these at every start; --verbose shows them again.
QUIET_ENV = {"RAY_AIR_NEW_OUTPUT": "0",  # the classic one-line-per-trial table
             "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
             "RAY_DEDUP_LOGS": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0",
             "RAY_TQDM": "0", "RAY_ENABLE_RECORD_ACTOR_TASK_LOGGING": "0",
             "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}


def quiet_third_parties(verbose: bool = False) -> None:
    """Silence third-party warnings and info logs (errors still show) unless `verbose`."""
    import warnings

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_PERIOD_S)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if verbose:
        return
    warnings.filterwarnings("ignore", module=r"(ray|optuna|torch|transformers|datasets)\b")
    warnings.filterwarnings("ignore", message=r".*experimental.*")
    for name in ("ray", "ray.tune", "ray.train", "ray.data", "optuna", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)


CLOUD_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
                     "AWS_SESSION_TOKEN")


def keep_credentials_home() -> None:
    """Ray Tune copies the driver's AWS credentials into every trial actor's runtime_env
    (`tune.execution.class_cache.ENV_VARS_TO_PROPAGATE`), which Ray's GCS keeps and each node's
    runtime-env agent logs. Not here: a local trial inherits them from the Ray it runs in, a
    cluster's nodes use their own environment (the cluster's credentials, as the recipe says)."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:
        return
    propagated = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if isinstance(propagated, set):
        propagated.difference_update(CLOUD_CREDENTIALS)


def init_ray(address: str | None, *, num_cpus: int | None = None, verbose: bool = False) -> None:
    import ray

    quiet_third_parties(verbose)
    keep_credentials_home()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    level = logging.WARNING if verbose else logging.ERROR
    if address:
        with redacted_entrypoint():
            ray.init(address=address, logging_level=level, log_to_driver=verbose,
                     runtime_env=job_runtime_env())
        return
    with single_machine(), redacted_entrypoint():  # "local": a new Ray, never one found here
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=local_gpus(),
                 include_dashboard=False, dashboard_host="127.0.0.1", logging_level=level,
                 log_to_driver=verbose, configure_logging=True)
    check_loopback()


SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def single_machine():
    """Ray's single-machine mode while a local head starts: node address 127.0.0.1, so every
    server it starts binds loopback only (see the module's design notes)."""
    from ray._private import ray_constants

    old_env, old_flag = os.environ.get(SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"  # for the processes Ray starts (agents, monitors)
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time; `import ray` already read env
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = old_env


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or an IPv4-mapped loopback address (`::ffff:127.0.0.1`)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return host == "localhost"
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def check_loopback() -> None:
    """Refuse a local Ray that started on a network address, unless it requires its token."""
    import ray

    node = ray.util.get_node_ip_address()
    if is_loopback(node):
        return
    if os.environ.get("RAY_AUTH_MODE") == "token":
        log(f"event=ray_not_loopback node={node} auth=token (its ports require the token)")
        return
    ray.shutdown()
    raise SweepError(f"the local Ray (version {ray.__version__}) started on {node}, not "
                     "127.0.0.1, so its ports are open to the network without authentication; "
                     "set RAY_AUTH_MODE=token (Ray >= 2.52 then requires its token on every "
                     "port), or start a head yourself and pass --address")


@contextmanager
def redacted_entrypoint():
    """Ray records the driver's command line (from /proc, not sys.argv) as the job's entrypoint,
    which its GCS keeps and its job server shows: give it the redacted one instead."""
    try:
        from ray._private import utils
    except ImportError:  # a Ray without it records nothing of ours
        yield
        return
    from ..spec.io import user_command

    original = getattr(utils, "get_entrypoint_name", None)
    if original is None:
        yield
        return
    utils.get_entrypoint_name = lambda: " ".join(user_command())
    try:
        yield
    finally:
        utils.get_entrypoint_name = original


def job_runtime_env() -> dict:
    """What every worker of a cluster job gets: this package's code (so each node runs the
    driver's version; dependencies come from the nodes' environment), unless it already runs
    from code Ray shipped; and the tests' hold point when set."""
    from pathlib import Path

    from .trainable import HOLD_ENV

    here = Path(__file__).resolve().parent.parent
    # A submitted job's driver already runs with the job's runtime env (Ray sets this
    # variable for it): the job shipped the code, and the two may not both name py_modules.
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ or "runtime_resources" in here.parts
    env: dict = {} if in_job else {"py_modules": [str(here)]}
    if os.environ.get(HOLD_ENV):
        env["env_vars"] = {HOLD_ENV: os.environ[HOLD_ENV]}
    return env


def available_gpus(address: str | None) -> int:
    """GPUs that trials can use: the cluster's (connecting to it) with --address or
    $RAY_ADDRESS, else this machine's. A CPU-only machine submitting to a GPU cluster gets the
    GPU defaults (preset `seed`, packed GPU shares)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return local_gpus()
    import ray

    init_ray(address)
    return int(ray.cluster_resources().get("GPU", 0))


def known_gpus() -> int:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return int(ray.cluster_resources().get("GPU", 0))
    return local_gpus()


def default_gpus_per_trial(n_trials: int, n_gpus: int) -> float:
    """Pack trials onto the GPUs: 1 / ceil(trials / gpus), at most 1, at least 1/8."""
    if n_gpus <= 0:
        return 0.0
    per_gpu = min(8, max(1, math.ceil(n_trials / n_gpus)))
    return round(1.0 / per_gpu, 4)


def check_local_resources(cpus: float, gpus: float, *, address: str | None) -> None:
    """Reject impossible requests that can be known before Ray starts (local runs only)."""
    ray = sys.modules.get("ray")
    if address is None and not os.environ.get("RAY_ADDRESS") and not (
            ray is not None and ray.is_initialized()):
        if gpus > 0 and local_gpus() == 0:
            raise SweepError(f"--gpus-per-trial={gpus} but this machine has no CUDA GPU; use "
                             "--gpus-per-trial 0 (the default without a GPU) or join a cluster "
                             "with GPUs via --address")
        if cpus > (os.cpu_count() or 1):
            raise SweepError(f"--cpus-per-trial={cpus} exceeds this machine's "
                             f"{os.cpu_count()} CPUs")


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def preflight(cpus: float, gpus: float, resources: dict[str, float] | None = None, *,
              local_storage: bool = False, shared: bool = False) -> None:
    """Fail now if the cluster cannot ever place one trial (Ray would wait forever), or cannot
    store its results, naming what it lacks."""
    import ray

    have = ray.cluster_resources()
    for key, amount in (resources or {}).items():
        if have.get(key, 0) < amount:
            raise SweepError(f"--trial-resource {key}={amount:g} but the Ray cluster has "
                             f"{have.get(key, 0):g} of {key!r} (it has: "
                             f"{', '.join(sorted(have)) or 'nothing'}): trials would stay "
                             "PENDING forever")
    if gpus > 0 and have.get("GPU", 0) < gpus:
        raise SweepError(f"--gpus-per-trial={gpus} but the Ray cluster has "
                         f"{have.get('GPU', 0):g} GPUs: trials would stay PENDING forever. Use "
                         "--gpus-per-trial 0 or a cluster with GPUs")
    if have.get("CPU", 0) < cpus:
        raise SweepError(f"--cpus-per-trial={cpus} but the Ray cluster has "
                         f"{have.get('CPU', 0):g} CPUs")
    nodes = alive_nodes()
    if local_storage and not shared and nodes > 1:
        raise SweepError(f"--storage is a local folder but the Ray cluster has {nodes} nodes: "
                         "trials on the other nodes cannot write there. Use a storage URI "
                         "every node reaches (s3://bucket/path, gs://...), or --shared-storage "
                         "if the folder is on a filesystem every node mounts at the same path")


def concurrency(cpus: float, gpus: float) -> int:
    """Trials that run at once on this cluster (or machine)."""
    if gpus:
        n = known_gpus()
        return max(1, int(n / gpus)) if n else 1
    ray = sys.modules.get("ray")
    total = ray.cluster_resources().get("CPU", 0) if ray is not None and ray.is_initialized() \
        else (os.cpu_count() or 1)
    return max(1, int(total // cpus))
