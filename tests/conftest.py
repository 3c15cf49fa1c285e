"""Shared fixtures: a small corpus made here, a private token cache, a tiny config, one Ray."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pytest

WORDS = ("model token layer window batch learning rate schedule warmup cosine attention head "
         "residual norm embedding vocabulary corpus document split train validation loss "
         "gradient step seed sweep trial metric report checkpoint resume budget").split()


def make_corpus(folder: Path, n_docs: int = 60, words_per_doc: int = 300, seed: int = 0) -> Path:
    """A folder of .txt documents with Zipf-ish word statistics and some repeated phrases."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    weights = [1 / (i + 1) for i in range(len(WORDS))]
    for i in range(n_docs):
        words = rng.choices(WORDS, weights=weights, k=words_per_doc)
        text = " ".join(words)
        (folder / f"doc{i:03d}.txt").write_text(f"Document {i}. {text}.\n")
    return folder


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """A real S3-compatible server (moto's server mode) on 127.0.0.1 with a bucket `sweeps`;
    yields the environment (endpoint, dummy credentials) that S3 clients read."""
    server_mod = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="sweeps")
    yield env
    server.stop()


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("token_cache")
    old = os.environ.get("TUNE_ABLATIONS_CACHE")
    os.environ["TUNE_ABLATIONS_CACHE"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network at test time
    yield cache
    if old is None:
        os.environ.pop("TUNE_ABLATIONS_CACHE", None)
    else:
        os.environ["TUNE_ABLATIONS_CACHE"] = old


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_cfg(corpus_dir):
    """2 layers, d_model 32, on the made-up corpus."""
    from tune_ablations.spec.presets import build_ablation

    return build_ablation("baseline", "tiny", corpus=str(corpus_dir), vocab_size=300,
                          max_steps=30, eval_every=10, eval_tokens=512, text_samples=1)


@pytest.fixture(scope="session")
def tiny_data(tiny_cfg):
    from tune_ablations.training.data import prepare_data

    return prepare_data(tiny_cfg.data, log=lambda s: None)


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray in this process, started on first use and again if a module that starts
    clusters of its own shut it down; num_gpus=1 is logical, so fractional-GPU scheduling is
    testable without CUDA."""
    ray = pytest.importorskip("ray")
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "1"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    if not ray.is_initialized():
        # address="local": always this session's own Ray, never a cluster that another
        # process on the machine started (its "current cluster" file would be joined).
        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
                 log_to_driver=False, logging_level="WARNING")
    yield ray


@pytest.fixture(autouse=True, scope="session")
def _ray_shutdown_at_the_end():
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """Markers match reality: every test that uses the Ray session starts Ray, so it is slow."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
