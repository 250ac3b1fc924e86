"""`speechkit audiogen prepare|train|judge|eval`: the text-to-music family's training side
(codec tokens of a music corpus, MAGNeT and the AR baseline on the one engine, the judges)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("audiogen", help="text-to-music (MAGNeT, AR baseline): prepare tokens, train, judge, eval")
    a.add_subparsers(dest="audiogen", metavar="ACTION", required=True)
