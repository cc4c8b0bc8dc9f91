"""The benchmarks' clocks and their matmul peak.

Each timed call records wall seconds and this process's CPU seconds (``time.process_time``,
all threads). With the process pinned to N cores, CPU seconds are what the contender used,
robust to other load on a shared machine (wall time then measures the scheduler too); the
benchmarks report both ratios. MFU = model FLOPs / seconds / the matmul peak measured the
same way in the same run.
"""

from __future__ import annotations

import statistics
import time


class Clock:
    """Wall and CPU seconds per contender: ``with clock("rotax"): ...``."""

    def __init__(self, *names: str):
        self.wall = {n: [] for n in names}
        self.cpu = {n: [] for n in names}

    def __call__(self, name: str):
        clock = self

        class _Timed:
            def __enter__(self):
                self.wall, self.cpu = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                clock.cpu[name].append(time.process_time() - self.cpu)
                clock.wall[name].append(time.perf_counter() - self.wall)

        return _Timed()

    def clear(self) -> None:
        for runs in (*self.wall.values(), *self.cpu.values()):
            runs.clear()

    def median(self, name: str, kind: str = "wall") -> float:
        return statistics.median((self.wall if kind == "wall" else self.cpu)[name])


def matmul_peak(n: int = 1024, repeats: int = 5) -> dict:
    """Median GFLOP/s of a jitted fp32 ``n × n`` matmul on this process's thread budget, by
    wall and by CPU time: ``{"wall": ..., "cpu": ...}``."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    clock = Clock("mm")
    for _ in range(repeats):
        with clock("mm"):
            f(a).block_until_ready()
    flop = 2 * n ** 3 / 1e9
    return {kind: flop / clock.median("mm", kind) for kind in ("wall", "cpu")}


def mfu(flops: float, clock: Clock, name: str, peak: dict) -> dict:
    """Model FLOPs utilization of ``name`` against ``peak`` (GFLOP/s), by wall and CPU time."""
    return {kind: round(flops / clock.median(name, kind) / (peak[kind] * 1e9), 3) for kind in ("wall", "cpu")}


def forward_flops(c: dict, tokens: int, context: float, head_tokens: int) -> float:
    """Forward FLOPs of a Llama/Qwen2 decoder (HF config dict ``c``) over ``tokens`` tokens that
    attend to ``context`` keys on average (PaLM's count, no causal halving), with the LM head on
    ``head_tokens`` of them. Training (forward + backward) is 3x this."""
    h, layers = c["hidden_size"], c["num_hidden_layers"]
    head_dim = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * head_dim, c["num_key_value_heads"] * head_dim
    per_layer = h * q * 2 + h * kv * 2 + 3 * h * c["intermediate_size"]
    return (2 * layers * per_layer + 4 * layers * q * context) * tokens + 2 * h * c["vocab_size"] * head_tokens


def model_config(path) -> dict:
    """The HF ``config.json`` of a model directory (the text config of a vision model)."""
    import json
    from pathlib import Path

    config = json.loads((Path(path) / "config.json").read_text())
    return config.get("text_config", config)
