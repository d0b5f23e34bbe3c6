"""The ``attnlab`` command: thin argparse subcommands over the library (see :mod:`attnlab.cli.main`)."""
