"""glimpse: hard (REINFORCE) and soft visual attention on images."""

__version__ = "0.1.0"

import glimpse.env  # noqa: E402,F401  registers glimpse/*-v0 with gymnasium (cheap: no torch, no data)
