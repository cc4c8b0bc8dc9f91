"""Benchmark: spectral analysis of every 2-D matrix of two random Llama-shaped trees.

Task per matrix (reference vs target): singular values of both and Σ drift, principal angles of
the top-k left and right singular subspaces, chordal distance, best-match alignment and the
energy split of ΔW in the reference basis. Contenders, same process, same thread count,
interleaved repeats, medians:

* rotax — ``rotax.analysis.spectral.analyze`` (thin SVD once per matrix, vmapped over the layer stack,
  jit per shape; it also computes sine-based angles and band metrics the baselines do not);
* numpy — a plain loop: ``np.linalg.svd(W)`` with numpy's defaults (``full_matrices=True``)
  per layer matrix, then arccos angles; embed/head use ``full_matrices=False`` because their
  full ``U`` would be ``[vocab, vocab]`` (4 GB at vocab 32000);
* study — the study's torch analysis (RL_Heals_SFT ``analysis/raw_metrics_angle.py``) per
  matrix: thin ``torch.linalg.svd`` of base and target, ``arccos(svdvals(U_bᵀU_t))``, the
  chordal distance from explicit projectors ``‖U_bU_bᵀ − U_tU_tᵀ‖_F`` as its main loop does
  (k×k identity for embed/head, whose projectors would be 4 GB), best match and top-k energy
  split. Its extra SVD of ΔW is left out (rotax does not report σ(ΔW));
* torch_lean (context only, not in ``ratio``) — the same loop with the k×k chordal identity
  everywhere, i.e. the leanest torch port: what is left is SVD kernel speed and per-call cost.

Peak RSS: the process's high-water mark (VmHWM, reset through /proc/self/clear_refs) while one
contender runs, and its growth over the RSS before (trees already resident) — in a fresh process
per contender, or in-process with ``--quick``. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _bench_threads import pin_threads  # before numpy/jax/torch: their pools inherit the pinning

THREADS = pin_threads()  # BENCH_THREADS, default 1

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIG = dict(hidden=768, layers=12, intermediate=2048, vocab=32000, heads=12, kv_heads=4)
QUICK = dict(hidden=192, layers=2, intermediate=512, vocab=3000, heads=3, kv_heads=1)
K_FRACTION = 0.2


def build_trees(c: dict, seed: int = 0):
    """Reference and target canonical trees (float32 numpy); target = reference + a low-rank
    update + small noise, roughly what fine-tuning does."""
    rng = np.random.default_rng(seed)
    head_dim = c["hidden"] // c["heads"]
    shapes = {"q_proj": (c["heads"] * head_dim, c["hidden"]), "k_proj": (c["kv_heads"] * head_dim, c["hidden"]),
              "v_proj": (c["kv_heads"] * head_dim, c["hidden"]), "o_proj": (c["hidden"], c["heads"] * head_dim),
              "gate_proj": (c["intermediate"], c["hidden"]), "up_proj": (c["intermediate"], c["hidden"]),
              "down_proj": (c["hidden"], c["intermediate"])}

    def pair(shape):
        f32 = np.float32
        ref = f32(0.02) * rng.standard_normal(shape, dtype=f32)
        lead, (m, n) = shape[:-2], shape[-2:]
        low = rng.standard_normal((*lead, m, 4), dtype=f32) @ rng.standard_normal((*lead, 4, n), dtype=f32)
        tgt = ref + f32(2e-4) * low + f32(1e-3) * rng.standard_normal(shape, dtype=f32)
        return ref, tgt

    ref, tgt = {"model": {"layers": {"self_attn": {}, "mlp": {}}}}, {"model": {"layers": {"self_attn": {}, "mlp": {}}}}
    for name, (m, n) in shapes.items():
        group = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
        r, t = pair((c["layers"], m, n))
        ref["model"]["layers"][group][name] = {"weight": r}
        tgt["model"]["layers"][group][name] = {"weight": t}
    for path in (("model", "embed_tokens"), ("lm_head",)):
        r, t = pair((c["vocab"], c["hidden"]))
        for tree, leaf in ((ref, r), (tgt, t)):
            node = tree
            for key in path:
                node = node.setdefault(key, {})
            node["weight"] = leaf
    return ref, tgt


def matrices(tree):
    """``(name, [m, n] array)`` for every matrix, unstacked (what the loops iterate over)."""
    layers = tree["model"]["layers"]
    for group in ("self_attn", "mlp"):
        for name, leaf in layers[group].items():
            for i, w in enumerate(leaf["weight"]):
                yield f"model.layers.{i}.{group}.{name}.weight", w
    yield "model.embed_tokens.weight", tree["model"]["embed_tokens"]["weight"]
    yield "lm_head.weight", tree["lm_head"]["weight"]


def run_rotax(ref, tgt):
    import jax

    from rotax.analysis import spectral

    # Compiled programs persist across runs (the first run of a shape pays ~4 s per program).
    jax.config.update("jax_compilation_cache_dir", os.environ.get("BENCH_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "rotax-jax-cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

    result = spectral.analyze(ref, tgt, k=K_FRACTION, null_seeds=0)
    return {r["tensor"]: (r["sigma_drift"], r["chordal_u"], r["chordal_v"], r["magnitude_share_topk"])
            for r in result.rows}


def run_numpy(ref, tgt):
    out = {}
    for (name, w_r), (_, w_t) in zip(matrices(ref), matrices(tgt)):
        full = name.startswith("model.layers.")  # embed/head: a [vocab, vocab] U is too big
        u_r, s_r, vh_r = np.linalg.svd(w_r, full_matrices=full)
        u_t, s_t, vh_t = np.linalg.svd(w_t, full_matrices=full)
        k = int(np.floor(K_FRACTION * len(s_r) + 0.5))
        drift = np.mean(np.abs(s_t - s_r) / s_r)
        chordal = []
        for a, b in ((u_r[:, :k], u_t[:, :k]), (vh_r[:k].T, vh_t[:k].T)):
            cross = a.T @ b
            cos = np.linalg.svd(cross, compute_uv=False)
            np.arccos(np.clip(cos, -1, 1))
            np.mean(np.max(np.abs(cross), axis=1))
            chordal.append(np.sqrt(max(2 * k - 2 * np.sum(cross**2), 0.0)))
        delta = w_t - w_r
        c = u_r[:, :k].T @ delta @ vh_r[:k].T
        share = np.sum(np.diag(c) ** 2) / np.sum(delta**2)
        out[name] = (drift, chordal[0], chordal[1], share)
    return out


def run_study(ref, tgt, explicit_projectors=True):
    import torch

    out = {}
    with torch.no_grad():
        for (name, w_r), (_, w_t) in zip(matrices(ref), matrices(tgt)):
            b, t = torch.from_numpy(w_r), torch.from_numpy(w_t)
            u_b, s_b, vh_b = torch.linalg.svd(b, full_matrices=False)
            u_t, s_t, vh_t = torch.linalg.svd(t, full_matrices=False)
            k = int(np.floor(K_FRACTION * len(s_b) + 0.5))
            u_b, u_t, v_b, v_t = u_b[:, :k], u_t[:, :k], vh_b.T[:, :k], vh_t.T[:, :k]
            rel = (s_t - s_b) / (s_b + 1e-12)
            torch.arccos(torch.linalg.svdvals(u_b.T @ u_t).clamp(-1, 1))
            torch.arccos(torch.linalg.svdvals(v_b.T @ v_t).clamp(-1, 1))
            chordal = []
            for x, y in ((u_b, u_t), (v_b, v_t)):
                if explicit_projectors and x.shape[0] < 8192:  # the study's main loop
                    chordal.append(torch.linalg.matrix_norm(x @ x.T - y @ y.T, ord="fro").item())
                else:  # its proj_F_distance helper
                    chordal.append(torch.sqrt(2 * k - 2 * torch.norm(x.T @ y) ** 2).item())
            torch.abs(u_b.T @ u_t).max(dim=1).values.mean()
            torch.abs(v_b.T @ v_t).max(dim=1).values.mean()
            delta = t - b
            c = u_b.T @ delta @ v_b
            share = (torch.diag(c).norm() ** 2 / (delta.norm() ** 2 + 1e-12)).item()
            out[name] = (rel.abs().mean().item(), chordal[0], chordal[1], share)
    return out


def svd_only(framework: str, ref) -> float:
    """Seconds for thin SVDs of one layer's matrices plus the embedding (kernel speed check)."""
    items = [(n, w) for n, w in matrices(ref) if ".0." in n or "embed" in n]
    start = time.perf_counter()
    if framework == "numpy":
        for _, w in items:
            np.linalg.svd(w, full_matrices=False)
    elif framework == "torch":
        import torch

        for _, w in items:
            torch.linalg.svd(torch.from_numpy(w), full_matrices=False)
    else:
        import jax
        import jax.numpy as jnp

        fn = jax.jit(lambda w: jnp.linalg.svd(w, full_matrices=False))
        for _, w in items:
            jax.block_until_ready(fn(w))  # compile excluded below
        start = time.perf_counter()
        for _, w in items:
            jax.block_until_ready(fn(w))
    return time.perf_counter() - start


def run_torch_lean(ref, tgt):
    """The study's loop with its k×k chordal helper everywhere: a lean torch loop, reported
    for context (not one of the two named baselines)."""
    return run_study(ref, tgt, explicit_projectors=False)


RUNNERS = {"rotax": run_rotax, "numpy": run_numpy, "study": run_study, "torch_lean": run_torch_lean}


def worker(name: str, quick: bool) -> None:
    """Fresh process: build trees, run one contender once, print its memory (MB)."""
    if name == "study":
        import torch

        torch.set_num_threads(THREADS)
    elif name == "rotax":
        import rotax.analysis.spectral  # noqa: F401
    ref, tgt = build_trees(QUICK if quick else CONFIG)
    print(json.dumps(peak_memory(RUNNERS[name], ref, tgt)))


def peak_memory(fn, *args) -> dict:
    """VmHWM (MB) while ``fn(*args)`` runs, and its growth over the RSS before the call."""
    gc.collect()
    before = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS
    fn(*args)
    peak = _status_mb("VmHWM")
    return {"peak_rss_mb": round(peak, 1), "growth_mb": round(peak - before, 1)}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=sorted(RUNNERS))
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.quick)
    import torch

    torch.set_num_threads(THREADS)
    config = QUICK if args.quick else CONFIG
    ref, tgt = build_trees(config)
    n_params = sum(w.size for _, w in matrices(ref))
    start = time.perf_counter()
    outputs = {"rotax": run_rotax(ref, tgt)}
    first_rotax = time.perf_counter() - start  # includes jit compilation
    outputs.update({name: RUNNERS[name](ref, tgt) for name in RUNNERS if name != "rotax"})  # warm-up
    times = {name: [] for name in RUNNERS}
    order = list(RUNNERS)
    for rep in range(args.repeats):
        for name in order[rep % len(order):] + order[:rep % len(order)]:  # rotate who goes first
            start = time.perf_counter()
            RUNNERS[name](ref, tgt)
            times[name].append(time.perf_counter() - start)
            print(f"repeat {rep} {name:6s} {times[name][-1]:.2f} s", file=sys.stderr)
    median = {name: statistics.median(v) for name, v in times.items()}
    agreement = {}
    for name in ("numpy", "study", "torch_lean"):
        diffs = [max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(outputs["rotax"][t], outputs[name][t]))
                 for t in outputs[name]]
        agreement[name] = float(np.max(diffs))
    memory = {}
    if args.quick and not args.no_memory:
        memory = {name: peak_memory(RUNNERS[name], ref, tgt) for name in RUNNERS}
    elif not args.no_memory:
        for name in RUNNERS:
            cmd = [sys.executable, __file__, "--worker", name] + (["--quick"] if args.quick else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            memory[name] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 \
                else {"error": proc.stderr[-300:]}
    kernels = {fw: round(svd_only(fw, ref), 3) for fw in ("jax", "numpy", "torch")}
    baseline_name = min(("numpy", "study"), key=median.get)
    record = {
        "bench": "spectral", "ratio": round(median["rotax"] / median[baseline_name], 4),
        "better": "lower", "rotax": round(median["rotax"], 3), "baseline": round(median[baseline_name], 3),
        "unit": "s",
        "config": {
            **config, "params": int(n_params), "matrices": len(outputs["rotax"]), "k_fraction": K_FRACTION,
            "threads": THREADS, "repeats": args.repeats, "quick": args.quick,
            "baseline_name": baseline_name,
            "ratio_vs_numpy": round(median["rotax"] / median["numpy"], 4),
            "ratio_vs_study_torch": round(median["rotax"] / median["study"], 4),
            "numpy_s": round(median["numpy"], 3), "study_torch_s": round(median["study"], 3),
            "torch_lean_s": round(median["torch_lean"], 3),
            "ratio_vs_torch_lean": round(median["rotax"] / median["torch_lean"], 4),
            "rotax_first_call_s": round(first_rotax, 3),
            "max_rel_disagreement": agreement, "memory_mb": memory,
            "memory_measured": "in-process" if args.quick else "fresh process per contender",
            "thin_svd_kernel_s_layer0_plus_embed": kernels,
        },
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
