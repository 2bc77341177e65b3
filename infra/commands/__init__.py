"""One module per `incept` verb; each exposes `add_parser(subparsers)` (see `infra/cli.py`)."""
