"""One prepared check of rotax on a GPU/TPU machine (or, with ``--cpu``, a small smoke run here).

Runs from a checkout with whatever jax the machine has (it may be newer than the pin; no
install step, no network):

    PYTHONPATH=. python scripts/accelerator_check.py [--model SMOLLM2_DIR] [--budget-s 480]
    PYTHONPATH=. python scripts/accelerator_check.py --cpu     # small shapes, < 1 minute

Prints one JSON object per line and figure, each with ``"check"``; the last line is a summary
``{"check": "summary", "ok": ..., "failed": [...], "seconds": ...}`` and the exit status is 1
when a check failed. A check that errors prints ``{"check": ..., "ok": false, "error": ...}``
and the others still run; a check that would overrun ``--budget-s`` prints ``"skipped"``.

Checks: environment (jax/jaxlib/flax versions, devices); matmul peak (fp32, bf16) measured
here; fp32 and bf16 logit parity against transformers (torch on the same kind of device when
it has one) on tiny random Llama and Qwen2 models and on ``--model``; forward, SFT-step and
generate throughput with MFU against that peak; one SFT step sharded over all local devices
against the same step on one device; the smoke study (``--cpu``: its first stage only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

#: Throughput model on an accelerator (~110M params, Llama-shaped) and in --cpu mode.
ACCEL = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
             num_attention_heads=12, num_key_value_heads=4, batch=16, seq=512, new=128)
CPU = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2, batch=2, seq=32, new=8)
FAILED: list[str] = []


def emit(record: dict) -> None:
    print(json.dumps(record, default=float), flush=True)


def check(name: str, budget: "Budget", needs_s: float):
    """Decorator: runs the check unless ``needs_s`` exceeds what is left, prints its records
    (the function returns a dict or a list of dicts), or an error record."""
    def wrap(fn):
        def run(*args):
            if budget.left() < needs_s:
                emit({"check": name, "skipped": f"needs ~{needs_s:.0f} s, {budget.left():.0f} s left"})
                return None
            began = time.perf_counter()
            try:
                out = fn(*args)
            except Exception as exc:  # noqa: BLE001  (report, keep checking)
                FAILED.append(name)
                emit({"check": name, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "trace": traceback.format_exc()[-1500:]})
                return None
            for record in out if isinstance(out, list) else [out]:
                if record.get("ok") is False:
                    FAILED.append(f"{name}:{record.get('case', '')}")
                emit({"check": name, **record, "seconds": round(time.perf_counter() - began, 2)})
            return out
        return run
    return wrap


class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def environment(jax) -> dict:
    import flax
    import jaxlib

    devices = jax.local_devices()
    try:
        import torch

        torch_info = {"torch": torch.__version__, "torch_cuda": torch.cuda.is_available()}
    except ImportError:
        torch_info = {"torch": None}
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "backend": jax.default_backend(), "devices": len(devices), "processes": jax.process_count(),
            "device_kind": devices[0].device_kind, **torch_info}


def matmul_peaks(jax, jnp, n: int) -> dict:
    """GFLOP/s of a jitted ``n × n`` matmul, median of 5, per dtype."""
    from _bench_timing import Clock

    out = {}
    for dtype in ("float32", "bfloat16"):
        a = jnp.ones((n, n), dtype)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        clock = Clock("mm")
        for _ in range(5):
            with clock("mm"):
                f(a).block_until_ready()
        out[dtype] = round(2 * n ** 3 / clock.median("mm") / 1e9, 1)
    return out


def parity_cases(model_dir) -> list[tuple[str, Path]]:
    from tests.support import hf_fixtures

    tmp = Path(tempfile.mkdtemp(prefix="rotax-check-"))
    cases = [("tiny-llama", hf_fixtures.llama(tmp / "llama")), ("tiny-qwen2", hf_fixtures.qwen2(tmp / "qwen2"))]
    if model_dir:
        cases.append((Path(model_dir).name, Path(model_dir)))
    return cases


def parity(jax, name: str, path: Path) -> list[dict]:
    """rotax logits vs transformers in fp32 (relative max error) and bf16 (rotax's error vs
    the fp32 oracle next to torch-bf16's own error)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    import rotax

    device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
    cfg, _ = rotax.load_hf(path, dtype="float32")
    tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (2, 48), dtype=np.int32)
    t_tokens = torch.as_tensor(tokens, dtype=torch.long, device=device)
    oracle = {}
    for dtype in ("float32", "bfloat16"):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
        with torch.no_grad():
            oracle[dtype] = model(input_ids=t_tokens).logits.float().cpu().numpy()
        del model
    scale = float(np.max(np.abs(oracle["float32"])))
    records = []
    for dtype, tolerance in (("float32", 2e-4), ("bfloat16", None)):
        cfg, params = rotax.load_hf(path, dtype=dtype)
        with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
            got = np.asarray(rotax.forward(cfg, params, tokens), np.float32)
        error = float(np.max(np.abs(got - oracle["float32"]))) / scale
        record = {"case": f"{name}/{dtype}", "rel_max_error": error, "torch_device": device}
        if tolerance is None:  # bf16: within 2x (+ 1%) of torch-bf16's own error
            torch_error = float(np.max(np.abs(oracle["bfloat16"] - oracle["float32"]))) / scale
            record.update(torch_bf16_rel_max_error=torch_error, ok=error <= 2 * torch_error + 0.01)
        else:
            record.update(ok=error <= tolerance, tolerance=tolerance)
        records.append(record)
    return records


def throughput(jax, jnp, c: dict, dtype: str, peak: float, model_dir) -> list[dict]:
    """Forward, SFT step and generate tokens/s with MFU against ``peak`` (GFLOP/s, this dtype)."""
    import numpy as np

    import rotax
    from _bench_timing import Clock, forward_flops, model_config
    from rotax.models import decoder
    from rotax.models.config import ModelConfig
    from rotax.sampling.sampler import SamplingOptions, sample
    from rotax.sft import step as sft
    from rotax.sft.data import Batch
    from rotax.training.train_state import abstract_train_state, init_train_state, make_optimizer, optimizer_config

    # float32 parameters (and AdamW state), compute in ``dtype``
    if model_dir:
        hf = model_config(model_dir)
        cfg, params = rotax.load_hf(model_dir, dtype="float32", compute_dtype=dtype)
    else:
        hf = {k: v for k, v in c.items() if k not in ("batch", "seq", "new")}
        cfg = ModelConfig.from_hf_dict({**hf, "model_type": "llama", "max_position_embeddings": 4096,
                                        "rms_norm_eps": 1e-5, "tie_word_embeddings": False})
        cfg = cfg.replace(dtype=dtype)
        params = decoder.init_params(cfg, jax.random.key(0))
    b, s, new = c["batch"], c["seq"], c["new"]
    tokens = np.random.default_rng(0).integers(3, hf["vocab_size"], (b, s), dtype=np.int32)
    clock = Clock("forward", "sft", "generate")

    def timed(name, fn, repeats=3):
        jax.block_until_ready(fn())  # compile
        for _ in range(repeats):
            with clock(name):
                jax.block_until_ready(fn())

    records = []
    timed("forward", lambda: rotax.forward(cfg, params, tokens))
    flops = forward_flops(hf, b * s, s, b * s)
    records.append({"case": f"forward/{dtype}", "tokens_per_s": b * s / clock.median("forward"),
                    "mfu": flops / clock.median("forward") / (peak * 1e9), "batch": b, "seq": s})

    section = optimizer_config()
    section.update(learning_rate=1e-5, warmup_steps=0)
    optimizer, schedule = make_optimizer(section, 100)
    mesh = rotax.make_mesh((1, 1, 1), devices=jax.local_devices()[:1])
    abstract = abstract_train_state(params, optimizer, mesh)
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    state = [init_train_state(params, optimizer, 0, shardings)]
    step = sft.make_train_step(cfg, optimizer, schedule, mesh, shardings)
    mask = np.zeros((b, s), np.float32)
    mask[:, -s // 4:] = 1.0
    batch = jax.device_put(sft.prepare_batch(Batch(tokens, mask, np.ones((b, s), bool))))

    def train():
        state[0], metrics = step(state[0], batch)
        return metrics

    timed("sft", train)
    flops = 3 * forward_flops(hf, b * s, s, int(mask[:, 1:].sum()))
    records.append({"case": f"sft_step/{dtype}", "tokens_per_s": b * s / clock.median("sft"),
                    "mfu": flops / clock.median("sft") / (peak * 1e9), "batch": b, "seq": s,
                    "loss": float(train()["loss"])})
    del state

    prompt = min(s, 64)
    options = SamplingOptions(temperature=1.0, max_new_tokens=new)
    prompts, prompt_mask = tokens[:, :prompt], np.ones((b, prompt), bool)
    timed("generate", lambda: sample(cfg, params, prompts, prompt_mask, jax.random.key(0), options, eos_ids=()))
    flops = forward_flops(hf, b * prompt, prompt, b) + forward_flops(hf, b * new, prompt + new / 2, b * new)
    records.append({"case": f"generate/{dtype}", "tokens_per_s": b * new / clock.median("generate"),
                    "mfu": flops / clock.median("generate") / (peak * 1e9), "batch": b,
                    "prompt": prompt, "new_tokens": new})
    return records


def sharded_step(jax, c: dict) -> dict:
    """One SFT step with the batch and state sharded over every local device (fsdp axis) vs
    the same step on one device: same loss and updated weights up to reassociation."""
    import numpy as np

    import rotax
    from rotax.models import decoder
    from rotax.models.config import ModelConfig
    from rotax.sft import step as sft
    from rotax.sft.data import Batch
    from rotax.training.train_state import abstract_train_state, init_train_state, make_optimizer, optimizer_config

    devices = jax.local_devices()
    hf = {k: v for k, v in c.items() if k not in ("batch", "seq", "new")}
    cfg = ModelConfig.from_hf_dict({**hf, "model_type": "llama", "max_position_embeddings": 4096,
                                    "rms_norm_eps": 1e-5, "tie_word_embeddings": False})
    params = decoder.init_params(cfg, jax.random.key(0))
    b, s = max(c["batch"], len(devices)) // len(devices) * len(devices), c["seq"]
    tokens = np.random.default_rng(1).integers(3, cfg.vocab_size, (b, s), dtype=np.int32)
    mask = np.zeros((b, s), np.float32)
    mask[:, s // 2:] = 1.0
    section = optimizer_config()
    section.update(learning_rate=1e-3, warmup_steps=0)
    optimizer, schedule = make_optimizer(section, 100)
    results = {}
    for label, mesh in (("one", rotax.make_mesh((1, 1, 1), devices=devices[:1])),
                        ("all", rotax.make_mesh((1, len(devices), 1), devices=devices))):
        shardings = jax.tree.map(lambda a: a.sharding, abstract_train_state(params, optimizer, mesh))
        state = init_train_state(params, optimizer, 0, shardings)
        step = sft.make_train_step(cfg, optimizer, schedule, mesh, shardings, donate=False)
        batch = sft.prepare_batch(Batch(tokens, mask, np.ones((b, s), bool)))
        with jax.default_matmul_precision("highest"):  # no TF32 on GPUs: compare arithmetic, not precision
            new_state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            began = time.perf_counter()
            jax.block_until_ready(step(state, batch))
        results[label] = (float(metrics["loss"]), float(metrics["grad_norm"]),
                          jax.device_get(new_state.params), b * s / (time.perf_counter() - began))
    start = jax.device_get(params)
    one, all_ = results["one"], results["all"]
    loss_gap = abs(one[0] - all_[0]) / abs(one[0])
    grad_norm_gap = abs(one[1] - all_[1]) / abs(one[1])
    leaves = list(zip(jax.tree.leaves(start), jax.tree.leaves(one[2]), jax.tree.leaves(all_[2])))
    update = max(float(np.max(np.abs(np.asarray(x1, np.float32) - np.asarray(x0, np.float32)))) for x0, x1, _ in leaves)
    gap = max(float(np.max(np.abs(np.asarray(x1, np.float32) - np.asarray(x2, np.float32)))) for _, x1, x2 in leaves)
    return {"devices": len(devices), "loss": all_[0], "rel_loss_gap": loss_gap, "rel_grad_norm_gap": grad_norm_gap,
            "max_weight_gap_over_max_update": gap / update, "tokens_per_s_all": all_[3],
            "tokens_per_s_one": one[3],
            "ok": loss_gap < 1e-4 and grad_norm_gap < 1e-3 and gap / update < 1e-2}


def smoke_study(cpu: bool, timeout: float) -> dict:
    """``rotax study`` with the smoke preset in a fresh run directory (``--cpu``: the base stage)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "rotax.cli", "study", f"--config.run_dir={tmp}/smoke",
               "--config.study.preset=smoke", "--config.study.progress=False"]
        if cpu:
            cmd += ["--only", "base"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        began = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        stages = sorted(p.stem for p in (Path(tmp) / "smoke" / "stages").glob("*.json"))
        return {"ok": proc.returncode == 0, "stages": stages, "study_seconds": time.perf_counter() - began,
                **({} if proc.returncode == 0 else {"output": (proc.stdout + proc.stderr)[-2000:]})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="CPU smoke mode: tiny shapes, < 1 minute")
    parser.add_argument("--model", default=None, help="an HF directory (e.g. SmolLM2-135M) for parity and speed")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting checks after this")
    parser.add_argument("--no-study", action="store_true")
    args = parser.parse_args()
    if args.cpu:  # before jax is imported: fast, unoptimized CPU compiles (figures are only a smoke test)
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"])
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    began = time.perf_counter()
    budget = Budget(args.budget_s)

    import jax
    import jax.numpy as jnp

    if args.cpu:
        jax.config.update("jax_num_cpu_devices", 2)  # so the sharded check shards
    c = CPU if args.cpu else ACCEL
    check("environment", budget, 0)(environment)(jax)
    peaks = check("matmul_peak_gflops", budget, 5)(matmul_peaks)(jax, jnp, 256 if args.cpu else 8192) or {}
    try:
        import torch  # noqa: F401

        cases = parity_cases(args.model)
    except ImportError:
        emit({"check": "parity", "skipped": "torch/transformers not installed"})
        cases = []
    for name, path in cases:
        check("parity", budget, 10 if args.cpu else 30)(parity)(jax, name, path)
    # most telling first: bf16 speed, sharding, the study; fp32 speed last (skipped if late)
    speed = check("throughput", budget, 15 if args.cpu else 90)(throughput)
    first = "float32" if args.cpu else "bfloat16"
    speed(jax, jnp, c, first, peaks.get(first) or float("nan"), args.model)
    check("sharded_step", budget, 10 if args.cpu else 60)(sharded_step)(jax, c)
    if not args.no_study:
        check("smoke_study", budget, 20 if args.cpu else 150)(smoke_study)(args.cpu, max(budget.left(), 30))
    if not args.cpu:
        speed(jax, jnp, c, "float32", peaks.get("float32") or float("nan"), args.model)
    emit({"check": "summary", "ok": not FAILED, "failed": FAILED,
          "seconds": round(time.perf_counter() - began, 1)})
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
