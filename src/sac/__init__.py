"""Segment Any Cell."""

__version__ = "0.1.0"
