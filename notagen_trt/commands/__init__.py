"""One module per subcommand, each with ``register(subparsers)``; listed in pipeline order."""

from . import bench, build, evaluate, export, generate, reference, train, verify

COMMANDS = [export, build, verify, generate, reference, evaluate, train, bench]
