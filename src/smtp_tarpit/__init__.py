"""smtp-tarpit: a receiving SMTP server that tar pits spam runs and directory harvest attacks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("smtp-tarpit")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
