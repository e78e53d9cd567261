"""What a run reports: a tqdm bar, a CSV log (``log.csv`` in the run folder), TensorBoard if installed.

Only the main process writes. Each logged row holds the step, the learning rate, every loss term by
name, samples/s and tokens/s over the logging interval, and cumulative counts (e.g. ``skipped``,
the corrupt samples dropped so far).
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path


class Monitor:
    def __init__(self, run_dir: str | os.PathLike, total_steps: int, start_step: int, enabled: bool,
                 progress: bool = True, tensorboard: bool = False):
        self.enabled = enabled
        self.path = Path(run_dir) / "log.csv"
        self._columns: list[str] | None = None
        self._bar = None
        self._tb = None
        self._last_time = time.perf_counter()
        self._pending = {"samples": 0.0, "tokens": 0.0}
        if not enabled:
            return
        if self.path.is_file():  # resumed run: keep appending under the same header
            with open(self.path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
            self._columns = header
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.fspath(Path(run_dir) / "tensorboard"))
            except ImportError:
                print("tensorboard is not installed; logging to log.csv only")

    def step(self, step: int, lr: float, logs: dict[str, float], counts: dict[str, float],
             cumulative: dict[str, float], write: bool) -> dict[str, float]:
        """Record one optimizer step; write a row when ``write``. Returns the row."""
        self._pending["samples"] += counts.get("samples", 0.0)
        self._pending["tokens"] += counts.get("tokens", 0.0)
        if not self.enabled:
            return {}
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        row = {"step": step, "lr": lr, **{k: float(v) for k, v in logs.items()},
               "samples_per_s": self._pending["samples"] / elapsed,
               "tokens_per_s": self._pending["tokens"] / elapsed,
               **{f"total_{k}": v for k, v in cumulative.items()}}
        if self._bar is not None:
            shown = {k: f"{v:.4g}" for k, v in logs.items()}
            shown["samples/s"] = f"{row['samples_per_s']:.1f}"
            shown["tokens/s"] = f"{row['tokens_per_s']:.0f}"
            if cumulative.get("skipped"):
                shown["skipped"] = str(int(cumulative["skipped"]))
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)
        if write:
            self._write(row)
            if self._tb is not None:
                for k, v in row.items():
                    if k != "step":
                        self._tb.add_scalar(k, v, step)
            self._last_time = now
            self._pending = {"samples": 0.0, "tokens": 0.0}
        return row

    def _write(self, row: dict[str, float]) -> None:
        new_file = self._columns is None
        if new_file:
            self._columns = list(row)
        extra = [k for k in row if k not in self._columns]
        if extra:  # a term seen for the first time (e.g. a task absent from earlier steps)
            self._columns += extra
            self._rewrite_header()
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns, restval="")
            if new_file:
                writer.writeheader()
            writer.writerow(row)

    def _rewrite_header(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
