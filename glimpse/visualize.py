"""`python -m glimpse.visualize <run folder> [--images N] [--out DIR] [--checkpoint best|last]`: pictures as files.

Draws, for the first N validation images of the run (the ones training logs to
TensorBoard), the same pictures as glimpse.visual.log_pictures, without TensorBoard:
per image i, `{i}_trajectory.png`, `{i}_patches.png` and `{i}_episode.gif`
(one frame per glimpse) for ram, dram and draw, with `trajectories.png` holding all
the trajectories in a row; `{i}_attention.png` for soft. On canvases the trajectories
show the target box, where the image is on the canvas.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image
from torch import Tensor

from glimpse.errors import UserError
from glimpse.evaluate import load_run
from glimpse.visual import film_strip, pictures

FRAME_MS, LAST_FRAME_MS = 600, 1800  # the last frame, with the prediction, stays up longer


def _image(picture: Tensor) -> Image.Image:
    return Image.fromarray(picture.permute(1, 2, 0).contiguous().numpy())


def write_pictures(run: str | Path, out: str | Path | None = None, images: int = 8, which: str = "best",
                   device: str = "cpu") -> list[Path]:
    """Draw a run's checkpoint on its first `images` validation images into `out` (default <run>/pictures); the
    paths written."""
    model, state, data = load_run(run, which, device)
    x, y = next(data.eval_batches("val", images))
    boxes = data.eval_boxes("val")
    drawn = pictures(model, x, y, class_names=data.class_names, targets=None if boxes is None else boxes[:images])
    if not drawn:
        raise UserError(f"{run}: model {state['config']['model']['name']!r} looks at the whole image; "
                        "there are no glimpses to draw")
    out = Path(out) if out is not None else Path(run) / "pictures"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, batch in drawn.items():
        for i, picture in enumerate(batch):
            if name == "frames":
                frames = [_image(frame) for frame in picture]
                path = out / f"{i}_episode.gif"
                durations = [FRAME_MS] * (len(frames) - 1) + [LAST_FRAME_MS]
                frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
            else:
                path = out / f"{i}_{name}.png"
                _image(picture).save(path)
            written.append(path)
        if name == "trajectory":  # and all of them in a row, to see the policy at a glance
            path = out / "trajectories.png"
            _image(film_strip(batch)).save(path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glimpse.visualize", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder written by python -m glimpse.train")
    parser.add_argument("--images", type=int, default=8, help="how many validation images to draw (default 8)")
    parser.add_argument("--out", help="folder for the pictures (default: <run>/pictures)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be at least 1")
    try:
        written = write_pictures(args.run, args.out, args.images, args.checkpoint, args.device)
    except UserError as err:
        print(f"glimpse.visualize: {err}", file=sys.stderr)
        return 2
    print(f"{len(written)} files in {written[0].parent}")
    return 0


def cli() -> None:
    """The console script glimpse-visualize (pyproject.toml)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
