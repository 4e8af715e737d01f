"""One module per subcommand, each with ``register(subparsers)``; listed in pipeline order."""

from . import bench, build, evaluate, export, generate, loadtest, prompts, quantize, reference, serve, train, ui, verify

COMMANDS = [export, quantize, build, verify, generate, prompts, reference, evaluate, train, bench, serve, ui, loadtest]
