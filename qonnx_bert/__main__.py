"""``python -m qonnx_bert`` runs the CLI."""

import sys

from qonnx_bert.cli import main

sys.exit(main())
