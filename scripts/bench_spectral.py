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
* torch_lean — the same loop with the k×k chordal identity
  everywhere, i.e. the leanest torch port: what is left is SVD kernel speed and per-call cost.

``ratio`` is rotax against the fastest of numpy, study and torch_lean (wall time);
``cpu_time_ratio_vs_fastest`` the same by CPU seconds (robust to other load).
``thin_svd_paths`` times the SVD drivers alone (gesdd through XLA, numpy, scipy, torch;
gesvd; a Gram-matrix eigh) with their singular-value errors.

Peak RSS: the process's high-water mark (VmHWM, reset through /proc/self/clear_refs) while one
contender runs, and its growth over the RSS before (trees already resident) — in-process with
``--quick``, or in a fresh process per contender with ``--memory-fresh`` (full mode measures
memory only then). Last line: one JSON object.
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
from _bench_timing import Clock

THREADS = pin_threads()  # BENCH_THREADS, default 1

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Full mode: SmolLM-class matrix shapes, 3 stacked layers (the per-matrix cost is what differs
#: between contenders; 12 layers took > 15 minutes here), so it finishes in a few minutes.
CONFIG = dict(hidden=768, layers=3, intermediate=2048, vocab=32000, heads=12, kv_heads=4)
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


def thin_svd_paths(ref) -> dict:
    """CPU seconds (median of 3) of each thin-SVD path on one layer's q/gate/down matrices plus
    the embedding's first 8000 rows, and each path's worst relative singular-value error against float64 LAPACK:
    XLA:CPU's ``jnp.linalg.svd`` (LAPACK gesdd through jaxlib), a Gram-matrix ``eigh`` in
    float32 and float64 (V and σ² from ``WᵀW``, U = W V / σ — what a top-k subspace needs),
    numpy (gesdd), scipy (gesdd and gesvd) and torch (gesdd)."""
    import jax
    import jax.numpy as jnp
    import scipy.linalg
    import torch

    items = [w for n, w in matrices(ref) if ".0." in n and n.split(".")[-2] in ("q_proj", "gate_proj", "down_proj")]
    items.append(ref["model"]["embed_tokens"]["weight"][:8000])  # 8000 rows: same shape class, 4x cheaper

    def gram(w, dtype):
        x = w.astype(dtype)
        tall = x.shape[0] >= x.shape[1]
        g = x.T @ x if tall else x @ x.T
        e, vecs = jnp.linalg.eigh(g)
        s = jnp.sqrt(jnp.maximum(e[::-1], 0.0))
        vecs = vecs[:, ::-1]
        other = (x @ vecs if tall else x.T @ vecs) / s
        return s.astype(w.dtype), vecs.astype(w.dtype), other.astype(w.dtype)

    jax_svd = jax.jit(lambda w: jnp.linalg.svd(w, full_matrices=False))
    with jax.enable_x64(True):
        paths = {
            "jax_gesdd": lambda w: jax.block_until_ready(jax_svd(w))[1],
            "jax_gram_eigh_f32": jax.jit(lambda w: gram(w, jnp.float32)[0]),
            "jax_gram_eigh_f64": jax.jit(lambda w: gram(w, jnp.float64)[0]),
            "numpy_gesdd": lambda w: np.linalg.svd(w, full_matrices=False)[1],
            "scipy_gesdd": lambda w: scipy.linalg.svd(w, full_matrices=False, lapack_driver="gesdd")[1],
            "scipy_gesvd": lambda w: scipy.linalg.svd(w, full_matrices=False, lapack_driver="gesvd")[1],
            "torch_gesdd": lambda w: torch.linalg.svd(torch.from_numpy(w), full_matrices=False)[1].numpy(),
        }
        exact = [np.linalg.svd(w.astype(np.float64), compute_uv=False) for w in items]
        out = {}
        for name, fn in paths.items():
            errors = [float(np.max(np.abs(np.asarray(fn(w), np.float64) - s) / s)) for w, s in zip(items, exact)]
            runs = []
            for _ in range(3):
                began = time.process_time()
                for w in items:
                    np.asarray(fn(w))
                runs.append(time.process_time() - began)
            out[name] = {"cpu_s": round(statistics.median(runs), 3), "max_rel_sigma_error": float(f"{max(errors):.2e}")}
    out["shapes"] = [list(w.shape) for w in items]
    return out


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
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick) or 2")
    parser.add_argument("--worker", choices=sorted(RUNNERS))
    parser.add_argument("--no-memory", action="store_true", help="--quick: skip the in-process memory figures")
    parser.add_argument("--memory-fresh", action="store_true",
                        help="full mode: peak RSS in a fresh process per contender (4 more runs; "
                             "otherwise full mode reports no memory)")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.quick)
    import torch

    torch.set_num_threads(THREADS)
    config = QUICK if args.quick else CONFIG
    args.repeats = args.repeats or (3 if args.quick else 2)
    ref, tgt = build_trees(config)
    n_params = sum(w.size for _, w in matrices(ref))
    start = time.perf_counter()
    outputs = {"rotax": run_rotax(ref, tgt)}
    first_rotax = time.perf_counter() - start  # includes jit compilation
    if args.quick:  # warm-up (full mode: the timed runs' outputs are compared instead)
        outputs.update({name: RUNNERS[name](ref, tgt) for name in RUNNERS if name != "rotax"})
    clock = Clock(*RUNNERS)
    order = list(RUNNERS)
    for rep in range(args.repeats):
        for name in order[rep % len(order):] + order[:rep % len(order)]:  # rotate who goes first
            with clock(name):
                outputs[name] = RUNNERS[name](ref, tgt)
            print(f"repeat {rep} {name:6s} {clock.wall[name][-1]:.2f} s wall, {clock.cpu[name][-1]:.2f} s CPU",
                  file=sys.stderr)
    median = {name: clock.median(name) for name in RUNNERS}
    cpu = {name: clock.median(name, "cpu") for name in RUNNERS}
    agreement = {}
    for name in ("numpy", "study", "torch_lean"):
        diffs = [max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(outputs["rotax"][t], outputs[name][t]))
                 for t in outputs[name]]
        agreement[name] = float(np.max(diffs))
    memory = {}
    if args.quick and not args.no_memory:
        memory = {name: peak_memory(RUNNERS[name], ref, tgt) for name in RUNNERS}
    elif args.memory_fresh:
        for name in RUNNERS:
            cmd = [sys.executable, __file__, "--worker", name] + (["--quick"] if args.quick else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            memory[name] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 \
                else {"error": proc.stderr[-300:]}
    kernels = thin_svd_paths(ref)
    baseline_name = min(("numpy", "study", "torch_lean"), key=median.get)  # the fastest
    fastest_cpu = min(("numpy", "study", "torch_lean"), key=cpu.get)
    record = {
        "bench": "spectral", "ratio": round(median["rotax"] / median[baseline_name], 4),
        "better": "lower", "rotax": round(median["rotax"], 3), "baseline": round(median[baseline_name], 3),
        "unit": "s",
        "config": {
            **config, "params": int(n_params), "matrices": len(outputs["rotax"]), "k_fraction": K_FRACTION,
            "threads": THREADS, "repeats": args.repeats, "quick": args.quick,
            "baseline_name": baseline_name, "cpu_time_ratio_vs_fastest": round(cpu["rotax"] / cpu[fastest_cpu], 4),
            "fastest_by_cpu_time": fastest_cpu, "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
            "ratio_vs_numpy": round(median["rotax"] / median["numpy"], 4),
            "ratio_vs_study_torch": round(median["rotax"] / median["study"], 4),
            "numpy_s": round(median["numpy"], 3), "study_torch_s": round(median["study"], 3),
            "torch_lean_s": round(median["torch_lean"], 3),
            "ratio_vs_torch_lean": round(median["rotax"] / median["torch_lean"], 4),
            "rotax_first_call_s": round(first_rotax, 3),
            "max_rel_disagreement": agreement, "memory_mb": memory,
            "memory_measured": "in-process" if args.quick else ("fresh process per contender" if args.memory_fresh else "not measured"),
            "thin_svd_paths": kernels,
        },
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
