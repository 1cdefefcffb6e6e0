"""What :func:`h2aseg.cpu_allocator.keep_freed_memory` saves in a CPU training step.

Each variant runs in a fresh interpreter (``mallopt`` changes the whole process), trains the phantom
H2ASeg (channels 4…64, no dropout) for a few steps and reports, per step after the warm-up, wall
seconds, user and system CPU seconds and minor page faults.
"""

from __future__ import annotations

import json

from h2aseg.bench.harness import run_fresh

STEP_SCRIPT = """
import json, sys, torch
from h2aseg.bench.harness import report_result, time_steps
from h2aseg.cpu_allocator import keep_freed_memory
from h2aseg.models import build_model
tuned, size, batch, steps, threads = json.loads(sys.argv[1])
if tuned:
    assert keep_freed_memory()
torch.set_num_threads(threads)
torch.manual_seed(0)
model = build_model("h2aseg", channels=[4, 8, 16, 32, 64], dropout=0.0, attention_dropout=0.0)
optimiser = torch.optim.Adam(model.parameters())
x, y = torch.randn(batch, 2, *size), torch.randint(0, 2, (batch, *size))
def step():
    optimiser.zero_grad()
    sum(torch.nn.functional.cross_entropy(o, y) for o in model.forward_deep(x)).backward()
    optimiser.step()
report_result(time_steps(step, steps, warmup=2).means())  # warm-up: the heap grows to its working size
"""


def step_costs(
    tuned: bool, size: tuple[int, int, int] = (64, 64, 32), batch: int = 2, steps: int = 2, threads: int = 1
) -> dict[str, float]:
    """Per-step ``seconds``, ``user_s``, ``system_s`` and ``page_faults`` of a fresh process."""
    arguments = json.dumps([tuned, list(size), batch, steps, threads])
    return run_fresh(["-c", STEP_SCRIPT, arguments], timeout_s=1800)
