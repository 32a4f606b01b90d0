"""tau-lab: a command-line laboratory for softmax-temperature studies."""

__version__ = "0.1.0"
