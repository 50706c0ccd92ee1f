"""Play a trained RAM run as a policy in the glimpse environment and print its error as JSON.

    python experiments/ram_policy.py <run folder> [--checkpoint best|last] [--split test|val] [--compare]

The run's best (or last) checkpoint is loaded with `glimpse.evaluate.load_run`
and played greedily (the location network's mean locations) through
`glimpse.env.GlimpseVectorEnv`, one observation at a time through RAM's own
glimpse, core, location and action networks (`glimpse.env.RAMPolicy`), on every
image of the split in the batches `glimpse.evaluate` uses. With the run's
`model.eval_start=centre` (the default) the error equals `python -m
glimpse.evaluate`'s greedy figure; `--compare` computes that figure too.
"""

from __future__ import annotations

import argparse
import json
import sys

from omegaconf import OmegaConf

from glimpse.data import seeded
from glimpse.env import ram_error
from glimpse.errors import UserError
from glimpse.evaluate import evaluate_model, load_run
from glimpse.models.ram import RAM


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="experiments/ram_policy.py", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder written by python -m glimpse.train with model=ram")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the run's own device key)")
    parser.add_argument("--compare", action="store_true", help="also compute glimpse.evaluate's greedy error")
    args = parser.parse_args(argv)
    try:
        model, state, data = load_run(args.run, args.checkpoint, args.device)
        cfg = OmegaConf.create(state["config"])
        if not isinstance(model, RAM):
            raise UserError(f"{args.run} trained model={cfg.model.name}; this script plays RAM (model=ram) runs")
        batch = cfg.trainer.eval_batch_size
        result = ram_error(model, data, args.split, batch)
        out = {"run": str(args.run), "checkpoint": args.checkpoint, "epoch": state.get("epoch"), "split": args.split,
               "start": model.eval_start, "episodes": result["episodes"],
               f"{args.split}_error_greedy_env": result["error_greedy"],
               f"{args.split}_accuracy_env": 100.0 - result["error_greedy"]}
        if args.compare:
            # samples=1: only the greedy figure is wanted; it does not depend on the sampled runs.
            evaluated = evaluate_model(model, data.eval_batches(args.split, batch), 1,
                                       seeded(cfg.seed, "eval", args.split, device=data.device))
            out[f"{args.split}_error_greedy_evaluate"] = evaluated["error_greedy"]
    except UserError as err:
        print(f"ram_policy: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
