"""Segment Any Cell: SAM with LoRA and an auto-prompt generator for automatic nuclei segmentation."""

__version__ = "0.1.0"
__all__ = ["SACConfig", "SegmentAnyCell", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import sac` (and the CLI's start-up) does not pay for torch and transformers.
    if name in ("SegmentAnyCell", "SACConfig"):
        from sac import model

        return getattr(model, name)
    raise AttributeError(f"module 'sac' has no attribute {name!r}")
