"""The ``hf-sae-steer`` command: argument parsing and printing over the public API.

Importing this package (and ``hf-sae-steer --help``) loads no torch: each command imports what
it needs when it runs.
"""
