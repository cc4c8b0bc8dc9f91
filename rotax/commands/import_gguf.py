"""`rotax import-gguf FILE.gguf --out DIR`: a GGUF checkpoint as an HF safetensors directory."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import-gguf", help="convert a GGUF file (llama.cpp) into an HF directory rotax can study",
        description="Dequantizes a GGUF checkpoint (Llama or Qwen2 architecture) into float32 "
                    "safetensors with config.json and the tokenizer (incl. chat template). "
                    "Needs the extra: pip install 'rotax[gguf]'.")
    p.add_argument("file", metavar="FILE.gguf", help="the GGUF file")
    p.add_argument("--out", required=True, metavar="DIR", help="new output directory")
    p.set_defaults(run=run)


def run(args) -> int:
    from rotax.io.gguf_import import import_gguf

    report = import_gguf(args.file, args.out)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.quantization.items()))
    print(f"imported {report.tensors} tensors ({kinds}) of a {report.architecture} model to "
          f"{report.out_dir} (float32)")
    return 0
