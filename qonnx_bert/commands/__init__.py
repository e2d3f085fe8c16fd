"""One module per ``qonnx`` subcommand: ``register(subparsers)`` adds it."""
