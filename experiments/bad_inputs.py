"""Every bad input a user may give, tried for real: the message each gets and the exit code, as a Markdown table.

    python experiments/bad_inputs.py > experiments/results/bad_inputs.md

Each case runs the command line in a fresh temporary folder (MNIST from GLIMPSE_DATA or
../shared/datasets) and records the last line on stderr, the exit code, whether a traceback
was printed and whether a run folder was left behind. The config cases are the ones
tests/test_cli.py checks; the others damage a dataset, a run folder or a checkpoint first.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import data_root  # noqa: E402
from tests.test_cli import BAD_CONFIG  # noqa: E402


def copy_mnist(folder: Path, damage: str) -> Path:
    raw = folder / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_root() / "MNIST" / "raw").glob("*-ubyte"):
        if damage == "truncated files":
            (raw / f.name).write_bytes(f.read_bytes()[:1000])
        elif f.name.startswith("train"):  # "test files missing"
            (raw / f.name).write_bytes(f.read_bytes())
    return folder / "data"


def run_folder_with(folder: Path, what: str) -> str:
    """A folder that looks like a run folder whose best checkpoint is `what`."""
    ckpt = folder / "run" / "checkpoints" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    if what == "truncated checkpoint":
        import torch

        torch.save({"model": {"w": torch.zeros(1000)}, "config": {}}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:300])
    elif what == "random bytes":
        ckpt.write_bytes(os.urandom(4096))
    elif what == "code-running pickle":
        class Exploit:
            def __reduce__(self):
                return (os.system, ("touch pwned",))

        ckpt.write_bytes(pickle.dumps({"model": Exploit()}))
    elif what == "empty file":
        ckpt.write_bytes(b"")
    elif what == "foreign checkpoint":
        import torch

        torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, ckpt)
    return "run"


def resume_with_other_config(folder: Path) -> list[str]:
    from omegaconf import OmegaConf

    from glimpse import checkpoint
    from glimpse.config import compose_config

    saved = OmegaConf.to_container(compose_config([f"data.root={data_root()}", "model.hidden=64"]), resolve=True)
    checkpoint.save({"config": saved, "model": {}, "optimizer": {}, "scheduler": {}, "progress": {}},
                    folder / "run" / "checkpoints" / "last.pt")
    return ["glimpse.train", "hydra.run.dir=run", "trainer.resume=true"]


# (what the user did, how to set it up in the folder -> the command's module and arguments)
Case = tuple[str, Callable[[Path], list[str]]]
# the outer lambda takes o as its argument, so the inner one closes over that, not over the loop variable
CASES: list[Case] = [(f"`{o}`", (lambda o: lambda f: ["glimpse.train", o])(o)) for o in BAD_CONFIG]  # noqa: B023
CASES += [
    ("`data.canvas=20` (smaller than the digit)", lambda f: ["glimpse.train", "data.canvas=20", "hydra.run.dir=run"]),
    ("`data.position=[50,50]` (digit off the 60x60 canvas)",
     lambda f: ["glimpse.train", "data=translated_mnist", "data.position=[50,50]", "hydra.run.dir=run"]),
    ("`experiment=paper_table` without `-m`", lambda f: ["glimpse.train", "experiment=paper_table"]),
    ("dataset folder missing", lambda f: ["glimpse.train", f"data.root={f / 'nowhere'}", "hydra.run.dir=run"]),
    ("dataset with the test files missing",
     lambda f: ["glimpse.train", f"data.root={copy_mnist(f, 'test files missing')}", "hydra.run.dir=run"]),
    ("dataset files truncated",
     lambda f: ["glimpse.train", f"data.root={copy_mnist(f, 'truncated files')}", "hydra.run.dir=run"]),
    ("`data=cifar10` without its files",
     lambda f: ["glimpse.train", "data=cifar10", f"data.root={f}", "hydra.run.dir=run"]),
    ("resume with a different model config", resume_with_other_config),
    ("evaluate: an empty folder", lambda f: (f / "empty").mkdir() or ["glimpse.evaluate", "empty"]),
    ("evaluate: a folder that does not exist", lambda f: ["glimpse.evaluate", "no/such/folder"]),
    ("visualize: a folder that is not a run", lambda f: (f / "empty").mkdir() or ["glimpse.visualize", "empty"]),
    ("evaluate: `--split train`", lambda f: ["glimpse.evaluate", "run", "--split", "train"]),
]
BAD_CHECKPOINTS = {"truncated checkpoint": "a truncated checkpoint", "random bytes": "random bytes",
                   "code-running pickle": "a pickle that would run code", "empty file": "nothing (empty file)",
                   "foreign checkpoint": "another program's checkpoint"}
CASES += [(f"evaluate: best.pt holds {label}", (lambda w: lambda f: ["glimpse.evaluate", run_folder_with(f, w)])(what))
          for what, label in BAD_CHECKPOINTS.items()]
CASES += [
    ("bench: `mode=fast`", lambda f: ["glimpse.bench", "mode=fast"]),
    ("bench: `--models ram,transformer` in `mode=scaling`",
     lambda f: ["glimpse.bench", "mode=scaling", "--models", "ram,transformer"]),
]


def main() -> int:
    env = {**os.environ, "GLIMPSE_DATA": str(data_root()), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    print("| # | bad input | message (stderr) | exit | traceback | folder left |")
    print("| --- | --- | --- | --- | --- | --- |")
    for i, (what, setup) in enumerate(CASES, 1):
        folder = Path(tempfile.mkdtemp(prefix="glimpse-bad-"))
        try:
            module, *args = setup(folder)
            before = set(folder.iterdir())
            out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=folder,
                                 env=env, timeout=600)
            lines = out.stderr.strip().splitlines() or [""]
            left = sorted(str(p.relative_to(folder)) for p in set(folder.iterdir()) - before)
            if (folder / "pwned").exists():
                left.append("pwned (the pickle ran code!)")
            message = lines[-1].replace("|", "\\|")
            extra = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
            print(f"| {i} | {what} | {message}{extra} | {out.returncode} "
                  f"| {'yes' if 'Traceback' in out.stderr else 'no'} "
                  f"| {', '.join(left) or 'none'} |", flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
