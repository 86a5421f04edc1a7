"""mirrorhook: push-triggered rsync mirroring."""

from importlib.metadata import version

__version__ = version("mirrorhook")
