"""One module per subcommand, each with ``register(subparsers)``; listed in pipeline order."""

from . import evaluate, export, generate, reference, train

COMMANDS = [export, generate, reference, evaluate, train]
