"""Segment Any Cell: SAM with LoRA and an auto-prompt generator for automatic nuclei segmentation."""

__version__ = "0.1.0"
__all__ = ["InputError", "SACConfig", "SegmentAnyCell", "SegmentOptions", "Segmenter", "__version__"]
_HOMES = {
    "InputError": "io",  # every refusal of bad input, in one line
    "SACConfig": "model",
    "SegmentAnyCell": "model",
    "SegmentOptions": "options",
    "Segmenter": "segmenter",
}


def __getattr__(name: str):
    # Lazy, so that `import sac` (and the CLI's start-up) does not pay for torch and transformers.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"sac.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'sac' has no attribute {name!r}")
