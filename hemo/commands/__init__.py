"""Subcommands of the ``hemo`` CLI.

Each module defines ``register(subparsers)`` which adds one subparser and sets
``func=run``. Module import must stay cheap: import TensorFlow/Keras inside ``run``.
"""
