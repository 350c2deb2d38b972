"""Speed of the CSC layer and of sdnet18 against the ResNet-18 baseline.

Prints ratios measured in one process, interleaved to cancel drifts in load:
    python benchmarks/bench_csc_speed.py [--device cpu|cuda] [--batch 128] [--repeats 10]

Targets (issue 2): sdnet18 training >= 0.97x and evaluation >= 0.95x of
resnet18 on the 2-core CPU; >= 0.97x / 0.98x on a GPU.  For scale, a straight
re-implementation of the official layer (power iteration before every batch,
conv_transpose2d, separate soft-threshold and ReLU passes) is timed as well.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import ratio_of, time_rounds  # noqa: E402

from robust_csc.csc import CSCConv2d  # noqa: E402
from robust_csc.models import create_model  # noqa: E402
from robust_csc.runtime import keep_freed_memory  # noqa: E402


class StraightCSC(nn.Module):
    """The official layer's algorithm written plainly: the 'before' picture."""

    def __init__(self, layer: CSCConv2d) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        w = self.layer.weight
        w = w / w.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        with torch.no_grad():  # power iteration before every batch, with host syncs
            v = torch.randn(1, w.shape[0], x.shape[-2], x.shape[-1], device=x.device)
            lip_prev = 0.0
            for _ in range(50):
                av = F.conv_transpose2d(v, w, padding=1)
                lip = float(av.pow(2).sum())
                v = F.conv2d(av, w, padding=1)
                v = v / v.norm()
                if abs(lip - lip_prev) <= 1e-5 * lip:
                    break
                lip_prev = lip
        eta, lam = 0.9 / lip, self.layer.lam
        z = F.relu(F.softshrink(eta * F.conv2d(x, w, padding=1), lam * eta))
        r = x - F.conv_transpose2d(z, w, padding=1)
        return F.relu(F.softshrink(z + eta * F.conv2d(r, w, padding=1), lam * eta))


def synced(fn, device):
    def run():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def train_step(model, x, y):
    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    return step


def eval_step(model, x):
    def step():
        with torch.inference_mode():
            model(x)

    return step


def layer_step(module, x, train: bool):
    def step():
        if train:
            module.zero_grad(set_to_none=True)
            module(x).sum().backward()
        else:
            with torch.inference_mode():
                module(x)

    return step


def _ms(candidate: list[float], baseline: list[float]) -> str:
    return f"{statistics.median(candidate) * 1e3:.1f} ms vs {statistics.median(baseline) * 1e3:.1f} ms"


def _imgs(batch: int, candidate: list[float], baseline: list[float]) -> str:
    return f"{batch / statistics.median(candidate):.0f} vs {batch / statistics.median(baseline):.0f} img/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    print(f"device={device} batch={args.batch} threads={torch.get_num_threads()} torch={torch.__version__}")

    conv = nn.Conv2d(3, 64, 3, 1, 1, bias=False).to(device)
    csc = CSCConv2d(3, 64, 3, 1, 1).to(device)
    straight = StraightCSC(CSCConv2d(3, 64, 3, 1, 1).to(device))
    rows = []
    for mode in ("eval", "train"):
        train = mode == "train"
        for m in (conv, csc, straight):
            m.train(train)
        t_conv, t_csc, t_straight = time_rounds([synced(layer_step(m, x, train), device) for m in (conv, csc, straight)], args.repeats)
        rows.append((f"layer {mode}: CSCConv2d / Conv2d time", 1 / ratio_of(t_conv, t_csc), _ms(t_csc, t_conv)))
        rows.append((f"layer {mode}: straight CSC / Conv2d time", 1 / ratio_of(t_conv, t_straight), _ms(t_straight, t_conv)))

    resnet = create_model("resnet18").to(device)
    sdnet = create_model("sdnet18").to(device)
    straight_model = create_model("sdnet18").to(device)
    straight_model.load_state_dict(sdnet.state_dict())
    straight_model.stem[0] = StraightCSC(straight_model.stem[0])
    models = (resnet, sdnet, straight_model)
    with torch.no_grad():  # BatchNorm statistics of real activations, as in a trained model
        for m in models:
            m.train()
            for _ in range(3):
                m(x)
    for m in models:
        m.eval()
    t_r, t_s, t_st = time_rounds([synced(eval_step(m, x), device) for m in models], args.repeats)
    rows.append(("model eval: sdnet18 / resnet18 throughput", ratio_of(t_r, t_s), _imgs(args.batch, t_s, t_r)))
    rows.append(("model eval: straight-sdnet18 / resnet18 throughput", ratio_of(t_r, t_st), _imgs(args.batch, t_st, t_r)))
    for m in models:
        m.train()
    t_r, t_s = time_rounds([synced(train_step(m, x, y), device) for m in (resnet, sdnet)], args.repeats)
    rows.append(("model train: sdnet18 / resnet18 throughput", ratio_of(t_r, t_s), _imgs(args.batch, t_s, t_r)))
    if device.type == "cpu" and keep_freed_memory():  # what `robust-csc train` does on the CPU
        t_r, t_s = time_rounds([synced(train_step(m, x, y), device) for m in (resnet, sdnet)], args.repeats)
        rows.append(
            ("model train, freed memory kept: sdnet18 / resnet18", ratio_of(t_r, t_s), _imgs(args.batch, t_s, t_r))
        )

    width = max(len(r[0]) for r in rows)
    for name, ratio, detail in rows:
        print(f"{name:<{width}}  {ratio:6.3f}x   ({detail})")


if __name__ == "__main__":
    main()
