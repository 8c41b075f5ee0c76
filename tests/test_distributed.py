"""`earlytag train` under torchrun: the DistributedDataParallel code path, as a 1-process CPU run (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from earlytag import Tagger


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_under_torchrun(tmp_path, tiny_encoder_dirs, shared_data):
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(free_port()),
           "-m", "earlytag.cli", "train", "--train", "uner-en-ewt:train", "--dev", "uner-en-ewt:dev",
           "--encoder", str(tiny_encoder_dirs["bert"]), "--output", str(out), "--epochs", "2", "--freeze-epochs", "1",
           "--train-limit", "64", "--dev-limit", "32", "--batch-size", "16", "--quiet", "--data-dir", str(shared_data)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads((out / "training_log.json").read_text())
    assert log["processes"] == 1 and len(log["epochs"]) == 2
    assert Tagger.from_pretrained(out).config.training["processes"] == 1
