"""FPTT vs BPTT: peak memory and time of one training pass as the slice count grows.

Each (trainer, slices) point runs in a fresh process, so the peak resident set it reports
(VmHWM after the pass minus the resident set before it) belongs to that pass alone. FPTT
updates every ``window`` slices with the state detached (memory flat in the sequence length);
BPTT keeps the whole sequence's graph for one backward pass.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, time
import torch
from spikeseg.runtime.system import peak_rss_mb, reset_peak_rss
from spikeseg.snn.models import ModelConfig, build_model
from spikeseg.training.fptt import FPTT
from spikeseg.training.losses import bce_dice_loss
trainer, slices, batch, h, w, window, preset = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
torch.manual_seed(0)
model = build_model(ModelConfig.preset("spiking-useg", preset))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
fptt = FPTT(model.parameters(), opt) if trainer == "fptt" else None
x = torch.rand(batch, slices, 4, h, w)
y = (torch.rand(batch, slices, 3, h, w) > 0.95).float()
def one_pass():
    k = window if trainer == "fptt" else slices
    state = None
    for s in range(0, slices, k):
        if state is not None:
            state = [t.detach() for t in state]
        logits, state = model(x[:, s:s + k], state)
        loss = bce_dice_loss(logits, y[:, s:s + k])
        opt.zero_grad()
        loss.backward()
        if fptt:
            fptt.step(0.3)
        else:
            opt.step()
# no warm-up pass: its memory would stay resident and hide the measured pass's growth
reset_peak_rss()
base = peak_rss_mb()
t0 = time.perf_counter()
one_pass()
secs = time.perf_counter() - t0
print(json.dumps({"trainer": trainer, "slices": slices, "peak_increase_mb": peak_rss_mb() - base, "seconds": secs}))
"""


def measure(trainer: str, slices: int, batch: int, h: int, w: int, window: int, preset: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, trainer, str(slices), str(batch), str(h), str(w),
                          str(window), preset], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(slices: list[int], batch: int = 4, h: int = 80, w: int = 96, window: int = 1, preset: str = "tiny",
        log=print) -> list[dict]:
    rows = []
    for n in slices:
        pair = {t: measure(t, n, batch, h, w, window, preset) for t in ("fptt", "bptt")}
        rows.append({"slices": n, "fptt_mb": pair["fptt"]["peak_increase_mb"], "bptt_mb": pair["bptt"]["peak_increase_mb"],
                     "fptt_s": pair["fptt"]["seconds"], "bptt_s": pair["bptt"]["seconds"]})
        r = rows[-1]
        log(f"{n:>4} slices  FPTT {r['fptt_mb']:7.0f} MB {r['fptt_s']:6.2f} s   BPTT {r['bptt_mb']:7.0f} MB "
            f"{r['bptt_s']:6.2f} s   BPTT/FPTT memory x{r['bptt_mb'] / max(r['fptt_mb'], 1):.1f}")
    return rows


def markdown(rows: list[dict], batch: int, h: int, w: int, window: int, preset: str) -> str:
    head = (f"Training pass, spiking-useg `{preset}`, batch {batch}, {h}x{w} slices, FPTT window {window}\n\n"
            "| slices | FPTT peak MB | BPTT peak MB | FPTT s | BPTT s |\n|---|---|---|---|---|\n")
    return head + "".join(f"| {r['slices']} | {r['fptt_mb']:.0f} | {r['bptt_mb']:.0f} | {r['fptt_s']:.2f} | "
                          f"{r['bptt_s']:.2f} |\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", default="8,32,76,152")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--height", type=int, default=80)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--window", type=int, default=1, help="FPTT update every K slices (paper: 1)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    rows = run([int(s) for s in a.slices.split(",")], a.batch, a.height, a.width, a.window, a.preset)
    md = markdown(rows, a.batch, a.height, a.width, a.window, a.preset)
    print(md)
    if a.out:
        from spikeseg.runtime.atomic import write_json, write_text
        a.out.mkdir(parents=True, exist_ok=True)
        write_json(a.out / "train_memory.json", rows)
        write_text(a.out / "train_memory.md", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
