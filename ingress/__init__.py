"""mta-ingress: the front end of a Kubernetes mail cluster."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mta-ingress")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
