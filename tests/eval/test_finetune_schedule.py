"""Fine-tuning's length in optimizer updates, its lr steps and evaluations in batches: the authors'
schedule, value by value, and a tiny real run that counts what it did."""

import json

import pytest
import torch
from torch import nn

from fasthpt.eval import paper
from fasthpt.eval.finetune import Schedule, finetune
from fasthpt.eval.selection import candidates

# The authors' 1,000-label fine-tune, as their code runs it (cjrd/self-supervised-pretraining).
CONFIG = "OpenSelfSup/configs/hpt-pretrain/resisc/finetune/1000-labels/2500-iter-0_01-lr-finetune.py"
RUNNER = "OpenSelfSup/openselfsup/apis/train.py, lines 98-102"
AUTHORS = [
    # (what, value, source)
    ("total_iters", 2500, CONFIG),
    ("update_interval", 4, CONFIG + " (optimizer_config)"),
    ("batch_size", 64, CONFIG + " (data)"),
    ("lr steps, in runner iterations", [833, 1667], CONFIG + " (lr_config step)"),
    ("evaluation interval, in runner iterations", 100, CONFIG + " (custom_hooks interval, initial=False)"),
    ("runner iterations = total_iters x update_interval", 10_000, RUNNER),
]
A = {what: value for what, value, _ in AUTHORS}


def test_the_default_schedule_is_the_authors():
    """mmcv's hooks count runner iterations, i.e. batches: the lr drops after batches 833 and 1667 of
    10,000, val and test are evaluated after every 100th batch, and the reported point is chosen among
    the second half of those 100 evaluations, all of them at the last lr."""
    s = Schedule(paper.PAPER["finetune"]["iters"], paper.PAPER["finetune"]["accum_steps"],
                 paper.PAPER["finetune"]["eval_every"])
    assert (s.iters, s.accum_steps) == (A["total_iters"], A["update_interval"])
    assert paper.PAPER["finetune"]["batch_size"] == A["batch_size"]
    assert s.batches == A["runner iterations = total_iters x update_interval"]
    assert list(s.lr_steps) == A["lr steps, in runner iterations"]
    # mmcv's StepLrUpdaterHook: the lr of a batch is set from runner.iter = its 0-based index
    factors = {b: s.lr_factor(b) for b in (1, 833, 834, 1667, 1668, 10_000)}
    assert factors == pytest.approx({1: 1.0, 833: 1.0, 834: 0.1, 1667: 0.1, 1668: 0.01, 10_000: 0.01})
    every = A["evaluation interval, in runner iterations"]
    assert s.eval_points == list(range(every, 10_001, every))  # initial=False: none at 0
    window = [s.eval_points[i] for i in candidates(len(s.eval_points))]
    assert window == list(range(5200, 10_001, 100)) and min(window) > max(s.lr_steps)
    assert [b for b in range(1, 10_001) if s.updates_after(b)] == list(range(4, 10_001, 4))  # 2,500 updates


def test_lr_steps_follow_the_updates_and_are_counted_in_batches():
    """round(ITERS/3), round(2*ITERS/3): the rule that gives 833 and 1667 for 2,500."""
    assert Schedule(5000, 4, 100).lr_steps == (1667, 3333) and Schedule(8, 4, 100).lr_steps == (3, 5)
    assert Schedule(1, 4, 100).lr_steps == (1,)  # round(1/3) = 0: no step there
    short = Schedule(8, 4, 100)
    assert short.batches == 32 and short.eval_points == [32]  # a run shorter than one interval: its end


class _Recorder(torch.optim.SGD):
    """SGD that records the lr of each update."""

    def __init__(self, params, lr):
        super().__init__([{"params": params, "lr": lr, "base_lr": lr}], lr=lr)
        self.lrs = []

    def step(self, closure=None):
        self.lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


def test_the_loop_updates_every_accum_steps_batches_at_the_batch_counted_lr():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    batches = iter([(torch.randn(4, 12), torch.randint(0, 3, (4,)))] * 100)
    evals = {s: [(torch.randn(5, 12), torch.randint(0, 3, (5,)))] for s in ("val", "test")}
    opt = _Recorder(model.parameters(), lr=1.0)
    done = finetune(model, opt, batches, evals, Schedule(6, 2, 4), device=torch.device("cpu"))
    assert (done.batches, done.updates, done.samples) == (12, 6, 48)
    # lr steps after batches 2 and 4: updates after batches 2, 4, 6, ..., 12 run at 1, 0.1, 0.01, ...
    assert opt.lrs == pytest.approx([1.0, 0.1, 0.01, 0.01, 0.01, 0.01])
    assert done.curves.iters == [4, 8, 12]


def test_a_real_run_records_its_updates_and_batches(tiny_data, tmp_path, capsys):
    """`fasthpt eval finetune --iters 8 --accum-steps 4`: 8 updates of 4 batches each, in the JSON."""
    from fasthpt.cli import main

    out = tmp_path / "r.jsonl"
    code = main(["eval", "finetune", "--backbone", "random", "--arch", "resnet_tiny", "--data", str(tiny_data),
                 "--labels", "8", "--batch-size", "4", "--iters", "8", "--accum-steps", "4", "--eval-every", "16",
                 "--res", "32", "--workers", "0", "--backend", "torch", "--no-progress", "--json", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    assert (r["options"]["updates"], r["options"]["batches"], r["options"]["iters"]) == (8, 32, 8)
    assert r["curves"]["iter"] == [16, 32] and r["curve_unit"] == "batches" and r["options"]["lr_steps"] == [3, 5]
    assert r["at_paper_settings"] is False and r["settings_vs_paper"]["iters"] == [2500, 8]
