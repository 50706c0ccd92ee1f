"""glimpse: hard (REINFORCE) and soft visual attention on images."""

__version__ = "0.1.0"
