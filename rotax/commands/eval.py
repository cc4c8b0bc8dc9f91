"""`rotax eval --model DIR --split id|ood`: GeneralPoints revision-episode accuracy with 95%
Wilson intervals, over one or more seeded hand sets; prints a table, optionally writes JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the sampler loads jax, which the CLI imports lazily
    from rotax.sampling.sampler import SamplingOptions


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model on GeneralPoints revision episodes")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="HF model directory (config.json + safetensors + tokenizer)")
    p.add_argument("--split", required=True, choices=("id", "ood"), help="face-card rule of the hands")
    p.add_argument("--seeds", type=int, default=1, help="number of hand-set seeds (default 1)")
    p.add_argument("--seed", type=int, default=42, help="first seed; seeds are seed, seed+1, ...")
    p.add_argument("--n", type=int, default=234, help="hands per seed (default 234)")
    p.add_argument("--attempts", type=int, default=5, help="graded attempts per hand (default 5)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--greedy", action="store_true", help="greedy decoding (default: sample with "
                   "the model's generation_config.json, overridable below)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32, help="rows per sampler call")
    p.add_argument("--renderer", choices=("auto", "json", "compact"), default="auto",
                   help="prompt format (auto: compact for the toy tokenizer, else json)")
    p.add_argument("--template", default=None, help="prompt template file for the json renderer")
    p.add_argument("--mesh", default=None, help="mesh shape data,fsdp,tensor (default: all fsdp)")
    p.add_argument("--dtype", default=None, help="parameter dtype (default: as stored)")
    p.add_argument("--out", default=None, metavar="FILE.json", help="write the report as JSON")
    p.add_argument("--episodes", default=None, metavar="FILE.jsonl",
                   help="also write every turn (prompt text excluded) as JSON lines")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def load_model(path, *, mesh=None, dtype=None):
    """``(cfg, params, tokenizer)`` of a model directory.

    An HF directory (``config.json``) loads with :func:`rotax.load_hf`. Hook for rotax
    training checkpoints: detect them here and restore params plus the tokenizer saved with
    the run (not implemented yet — raises ValueError)."""
    import rotax
    from rotax.io.tokenizer import load_tokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model directory")
    if (path / "config.json").is_file():
        cfg, params = rotax.load_hf(path, mesh=mesh, dtype=dtype)
        return cfg, params, load_tokenizer(path)
    raise ValueError(f"{path}: not an HF model directory (no config.json); evaluating rotax "
                     f"checkpoints directly is not supported yet — export one with `rotax export`")


def sampling_options(args, model_dir) -> "SamplingOptions":
    """Greedy with ``--greedy``; else the model's ``generation_config.json`` (temperature,
    top_p, top_k, repetition_penalty; ``do_sample: false`` means greedy) overridden by the flags.
    (A file without ``top_k`` means no top-k here; Hugging Face's ``generate`` would use 50.)"""
    from rotax.sampling.sampler import SamplingOptions

    if args.greedy:
        return SamplingOptions(temperature=0.0, max_new_tokens=args.max_new_tokens)
    gen = {}
    gen_file = Path(model_dir) / "generation_config.json"
    if gen_file.is_file():
        gen = json.loads(gen_file.read_text())
    sample = gen.get("do_sample", True) or args.temperature is not None
    temperature = args.temperature if args.temperature is not None else \
        (gen.get("temperature", 1.0) if sample else 0.0)
    top_p = args.top_p if args.top_p is not None else (gen.get("top_p") or 1.0)
    top_k = args.top_k if args.top_k is not None else (gen.get("top_k") or 0)
    penalty = gen.get("repetition_penalty") or 1.0  # HF applies it to greedy decoding too
    return SamplingOptions(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
                           max_new_tokens=args.max_new_tokens, repetition_penalty=float(penalty))


def make_renderer(kind: str, tokenizer, template=None):
    from rotax.tasks.points import CompactRenderer, JsonChatRenderer
    from rotax.tasks.points.toy_tokenizer import is_toy_tokenizer

    if kind == "auto":
        kind = "compact" if is_toy_tokenizer(tokenizer) else "json"
    if kind == "compact":
        if template:
            raise ValueError("--template applies to the json renderer only")
        return CompactRenderer()
    return JsonChatRenderer.from_template_file(template) if template else JsonChatRenderer()


def run(args) -> int:
    from rotax.tasks.points import evaluation
    from rotax.runtime.sharding import make_mesh
    from rotax.tasks.points import Rule

    if args.seeds < 1 or args.n < 1 or args.attempts < 1:
        raise ValueError("--seeds, --n and --attempts must be at least 1")
    mesh = make_mesh(tuple(int(x) for x in args.mesh.split(",")) if args.mesh else None)
    cfg, params, tokenizer = load_model(args.model, mesh=mesh, dtype=args.dtype)
    options = sampling_options(args, args.model)
    renderer = make_renderer(args.renderer, tokenizer, args.template)
    rule = {"id": Rule.ID, "ood": Rule.OOD}[args.split]
    seeds = [args.seed + i for i in range(args.seeds)]
    report = evaluation.evaluate(cfg, params, tokenizer, renderer, rule, seeds=seeds, n=args.n,
                                 attempts=args.attempts, options=options, batch_size=args.batch_size,
                                 mesh=mesh, progress=not args.no_progress)
    decoding = "greedy" if options.greedy else \
        f"temperature {options.temperature}, top_p {options.top_p}, top_k {options.top_k}"
    print(f"{args.model} | split {args.split} | {args.n} hands x seeds {seeds} | "
          f"{args.attempts} attempts | {decoding}")
    print(evaluation.format_table(report))
    if args.out:
        out = evaluation.to_json(report)
        out["settings"] = {"model": str(args.model), "split": args.split, "seeds": seeds, "n": args.n,
                           "attempts": args.attempts, "renderer": type(renderer).__name__,
                           "sampling": dataclasses.asdict(options)}
        Path(args.out).write_text(json.dumps(out, indent=2))
    if args.episodes:
        with open(args.episodes, "w") as handle:
            for seed, batch in report["batches"].items():
                for turn in batch.turns:
                    handle.write(json.dumps({
                        "seed": seed, "hand": list(batch.hands[turn.hand_index]),
                        "hand_index": turn.hand_index, "attempt": turn.attempt,
                        "response": turn.response_text, "reward": turn.reward, "kind": turn.kind,
                        "reasons": turn.reasons, "done": turn.done, "truncated": turn.truncated}) + "\n")
    return 0
