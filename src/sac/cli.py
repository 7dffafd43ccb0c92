"""The ``sac`` command: ``weights``, ``train``, ``predict``, ``evaluate``."""

from __future__ import annotations

import argparse
import sys

from sac.io import InputError


def _weights(args: argparse.Namespace) -> int:
    from sac.weights import fetch_checkpoint

    print(fetch_checkpoint(args.name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sac", description="Segment Any Cell: automatic nuclei segmentation with SAM"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    weights = commands.add_parser("weights", help="official SAM checkpoints")
    weights_commands = weights.add_subparsers(dest="action", required=True)
    fetch = weights_commands.add_parser(
        "fetch", help="download an official checkpoint to the cache (sha256-checked)"
    )
    fetch.add_argument("name", choices=["vit_b", "vit_l", "vit_h"])
    fetch.set_defaults(run=_weights)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except InputError as error:
        print(f"sac: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
