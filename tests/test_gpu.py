"""GPU behaviour (skipped without CUDA): autocast dtype, synchronised timing, memory cap."""

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_tiny_run_on_gpu(tiny_cfg, tiny_data):
    from tune_ablations.spec.config import with_overrides
    from tune_ablations.training.runtime import autocast_dtype, resolve_device
    from tune_ablations.training.trainer import train

    cfg = with_overrides(tiny_cfg, {"device": "cuda", "precision": "auto"})
    assert autocast_dtype(cfg.precision, resolve_device(cfg.device)) in (torch.bfloat16,
                                                                         torch.float16)
    r = train(cfg, data=tiny_data)
    assert r["status"] == "completed" and r["device"].startswith("cuda")
    assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1


def test_fp16_uses_a_grad_scaler(tiny_cfg, tiny_data):
    from tune_ablations.spec.config import with_overrides
    from tune_ablations.training.trainer import train

    r = train(with_overrides(tiny_cfg, {"device": "cuda", "precision": "fp16"}), data=tiny_data)
    assert r["status"] == "completed" and r["precision"] == "float16"
