"""Run logging: ``metrics.jsonl`` + TensorBoard event files per run, and a tqdm progress bar.

One :class:`RunLogger` per stage of a run (``"sft"``, ``"ppo"``, ...). Rows go to
``<run_dir>/metrics.jsonl`` as ``{"stage", "step", "time", "<group>/<name>": value, ...}``;
scalars go to ``<run_dir>/tensorboard/<stage>/``. Resuming from step ``n`` drops the stage's
rows with ``step > n`` (they are about to be recomputed) and purges TensorBoard events after
``n``, so a resumed run's logs read like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Mapping

import jax

from rotax.runtime.run_config import write_text_atomic

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir, stage: str | None = None) -> list[dict]:
    """Rows of ``<run_dir>/metrics.jsonl`` (only ``stage``'s when given)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if stage is None or r.get("stage") == stage]


def summary_writer_class():
    """``tensorboardX.SummaryWriter``, imported without importing torch.

    tensorboardX imports torch when it is installed (2+ s and a large footprint; rotax never
    needs it). While tensorboardX loads, ``torch`` is hidden (unless already imported), so its
    optional torch support falls back to numpy."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _scalar(value):
    value = float(value)
    return value if math.isfinite(value) else str(value)  # JSON has no NaN/inf


class RunLogger:
    """Writes metrics of one stage; shows a progress bar over ``[start_step, total_steps]``.

    Only process 0 writes (every process may call). ``progress=False`` hides the bar
    (tests, non-interactive logs).
    """

    def __init__(self, run_dir, stage: str, *, start_step: int = 0, total_steps: int | None = None,
                 progress: bool = True, tensorboard: bool = True):
        self.run_dir, self.stage = Path(run_dir), stage
        self.writer_process = jax.process_index() == 0
        self._bar = None
        self._tb = None
        if not self.writer_process:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._drop_rows_after(start_step)
        self._file = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")
        if tensorboard:
            self._tb = summary_writer_class()(str(self.run_dir / "tensorboard" / stage),
                                     purge_step=start_step + 1 if start_step else None)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=stage, unit="step",
                             dynamic_ncols=True)

    def _drop_rows_after(self, step: int) -> None:
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        keep = [line for line in lines if line.strip() and not (
            (row := json.loads(line)).get("stage") == self.stage and row.get("step", 0) > step)]
        if len(keep) != len(lines):
            write_text_atomic(path, "".join(line + "\n" for line in keep))

    def log(self, step: int, metrics: Mapping[str, float], group: str = "train") -> None:
        """Appends one row (keys prefixed ``<group>/``) and the TensorBoard scalars."""
        if not self.writer_process:
            return
        values = {f"{group}/{k}": _scalar(v) for k, v in metrics.items()}
        row = {"stage": self.stage, "step": int(step), "time": time.time(), **values}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, float):
                    self._tb.add_scalar(key, value, int(step))

    def progress(self, step: int, **shown) -> None:
        """Moves the bar to ``step`` and shows ``shown`` (e.g. loss, tokens/s)."""
        if self._bar is None:
            return
        self._bar.update(int(step) - self._bar.n)
        self._bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in shown.items()},
                              refresh=False)

    def message(self, text: str) -> None:
        """Prints ``text`` without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(text)
        elif self.writer_process:
            print(text, flush=True)

    def close(self) -> None:
        if not self.writer_process:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def tokens_per_second(tokens: float, seconds: float) -> float:
    """``tokens / seconds`` (0 when no time passed)."""
    return tokens / seconds if seconds > 0 else 0.0


__all__ = ["RunLogger", "read_metrics", "tokens_per_second", "METRICS_FILE"]
