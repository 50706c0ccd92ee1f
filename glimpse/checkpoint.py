"""Checkpoints: written atomically (temp file + rename), read with weights_only=True."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import torch

from glimpse.config import flatten
from glimpse.errors import UserError

FORMAT = "glimpse-checkpoint-1"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(file)` on a temp file beside `path`, then rename it over `path`: readers see old or new,
    never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private (0600); the result follows the umask like any file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def remove_stale_temp_files(folder: str | Path) -> None:
    """Temp files a killed writer left behind (the file they were meant to replace is intact)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def save(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` to `path` atomically, with the glimpse format marker."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **payload}, f))


def load(path: str | Path, map_location: str | torch.device = "cpu",
         required: tuple[str, ...] = ("config", "model")) -> dict[str, Any]:
    """Read a checkpoint written by `save`; anything else is refused with one line naming the file.

    weights_only=True: a pickle that would run code, a truncated file or random bytes are refused, not executed.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is enough
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        first_line = next(iter(str(err).splitlines()), "")[:160]
        with path.open("rb") as f:
            head = f.read(4)
        if not head:
            why = "empty file"
        elif head[:2] != b"PK" and head[:1] != b"\x80":
            why = "not a PyTorch file: its bytes are neither a zip archive nor a pickle"
        elif "Weights only load failed" in str(err):  # a pickle of arbitrary objects: refused, nothing in it was run
            why = "it holds Python objects other than tensors and plain data; weights_only loading refused them"
        elif head[:2] == b"PK":  # torch.save's zip archive, cut short or damaged
            why = ("a truncated or damaged zip archive; glimpse writes checkpoints atomically, "
                   "so another program wrote or cut it")
        else:
            why = f"{type(err).__name__}: {first_line}"
        raise UserError(f"checkpoint {path} is unreadable or not a glimpse checkpoint ({why})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not a glimpse checkpoint (no '{FORMAT}' marker)")
    missing = [k for k in required if k not in payload]
    if missing:
        raise UserError(f"checkpoint {path} is incomplete: it lacks {', '.join(missing)}")
    return payload


def config_differences(saved: dict[str, Any], current: dict[str, Any], ignore: Iterable[str] = (),
                       absent: dict[str, Any] | None = None) -> list[str]:
    """'key: saved -> current' for every config key that differs (nested keys dotted), `ignore`d keys left out.

    `absent` maps keys added to the config after `saved` may have been written to the value that
    computes what a config without them did: a saved config lacking one of them holds that value, where
    `current` has the key at all (RAM's keys are no difference for a model without them).
    """
    b, skip = flatten(current), set(ignore)
    a = {**{k: v for k, v in (absent or {}).items() if k in b}, **flatten(saved)}
    return [f"{k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}" for k in sorted(a.keys() | b.keys())
            if k not in skip and a.get(k, "<absent>") != b.get(k, "<absent>")]
