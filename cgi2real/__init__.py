"""cgi2real: learn to label photographs from computer-generated images."""

__version__ = "0.1.0"
