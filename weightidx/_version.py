"""The version, in its own module so that no module imports the package root."""

__version__ = "0.1.0"
