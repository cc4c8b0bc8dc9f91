"""`rotax gate --base DIR --tuned DIR --probe PROBE [--id-probe PROBE] --out DIR`: the
directional QA gate — diagnose what the tuning moved, search cheap resets under a time budget,
and decide ``reset`` / ``rl`` / ``none`` from intervals on a held-out half of the probe.

PROBE is ``general-points:ood`` / ``general-points:id`` (built in) or a JSONL file of
``{"messages": [...], "answer": "..."}`` scored by answer NLL (``--score nll``, no generation)
or exact match of the greedy answer (``--score match``). Writes OUT/gate.json, OUT/gate.md,
OUT/gate.html, diagnosis heatmaps and OUT/model/ (the repaired HF directory).
"""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("gate", help="diagnose a fine-tuned model, pick a reset, decide "
                              "whether RL is needed")
    p.add_argument("--base", required=True, metavar="DIR", help="base HF model directory")
    p.add_argument("--tuned", required=True, metavar="DIR", help="fine-tuned HF model directory, or "
                   "a rotax training checkpoint of the base's model (e.g. RUN/sft/checkpoints/sft/500)")
    p.add_argument("--probe", required=True, help="general-points:ood|general-points:id or a "
                   "JSONL file of {messages, answer}")
    p.add_argument("--id-probe", default=None, help="probe of the tuned task (shows the ID cost)")
    p.add_argument("--score", choices=("nll", "match"), default="nll",
                   help="how JSONL probes are scored (default nll: answer likelihood)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--budget-s", type=float, default=600.0, help="seconds for the whole run")
    p.add_argument("--target", type=float, default=0.7,
                   help="recovered share the interval's lower bound must reach (default 0.7)")
    p.add_argument("--max-id-cost", type=float, default=0.05,
                   help="ID score a reset may lose (interval upper bound; default 0.05)")
    p.add_argument("--operators", default=None, help="comma list of layer-reset, uv-merge, "
                   "module-reset, swap, sigma (default: the first three)")
    p.add_argument("--hands", type=int, default=256, help="hands per half of a built-in probe")
    p.add_argument("--attempts", type=int, default=1, help="GeneralPoints attempts per hand")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="GeneralPoints answer length (default 40 toy / 256)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe split")
    p.add_argument("--mesh", default=None, help="mesh shape data,fsdp,tensor (default: all fsdp)")
    p.add_argument("--dtype", default=None, help="parameter dtype (default: as stored)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args) -> int:
    from rotax.gate.pipeline import GateSettings, run_gate
    from rotax.gate.report import sentence
    from rotax.runtime.sharding import make_mesh

    settings = GateSettings(probe=args.probe, id_probe=args.id_probe, score=args.score,
                            budget_s=args.budget_s, target=args.target,
                            max_id_cost=args.max_id_cost, operators=args.operators,
                            seed=args.seed, hands=args.hands, attempts=args.attempts,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            dtype=args.dtype, progress=not args.no_progress)
    mesh = make_mesh(tuple(int(x) for x in args.mesh.split(",")) if args.mesh else None)
    result = run_gate(args.base, args.tuned, args.out, settings, mesh=mesh)
    print(sentence(result))
    low, high = result["recovered_interval"]
    recovered = ("recovered n/a (nothing lost)" if result["recovered"] != result["recovered"] else
                 f"recovered {result['recovered']:.3f} (95% interval [{low:.3f}, {high:.3f}])")
    print(f"{recovered}; {result['seconds']:.1f} s; wrote {args.out}/gate.json, gate.md, gate.html, "
          "model/")
    return 0
