# How tests/data/old_run_v1 was made, with the code before the population package was split into
# config/forward/objective/trainer/rundir/execute (run format version 1).
# Usage: python make_old_run_v1.py DIR

import shutil
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from engine.population import fit, iter_fit  # noqa: E402 - after torch.set_num_threads(1)
from engine.population.flow import FlowConfig  # noqa: E402 - likewise
from engine.population.toy import make_toy_catalog  # noqa: E402 - likewise

base = Path(sys.argv[1])
cat = make_toy_catalog(400, seed=11)[0]
KW = dict(forward="engine.population.toy:ToyForwardModel", members=2, steps=12, batch=64,
          selection="toy-r<20.5", flow=FlowConfig(layers=2, hidden=8, bins=4), val_every=3,
          population_samples=100, checkpoint_every=4, entropy=0.003, seed=4)
# an interrupted run: stop after member 0 step 6
out = base / "old_run_v1"
it = iter_fit(cat, out, **KW)
for ev in it:
    if ev["event"] == "step" and ev["member"] == 0 and ev["step"] == 6:
        break
it.close()
# its completion by the original code: the expected numbers
done = base / "old_run_v1_completed"
shutil.copytree(out, done)
fit(cat, done, resume=True, forward=KW["forward"])
