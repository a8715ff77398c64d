"""The commands: each module is one `btxrd-cam` command that explains, then keeps, scores or draws.

A command reads its settings, walks the shared road (pipeline → engine → records) once, and writes one report
atomically. Commands import the library below them, never each other's internals, and nothing imports cli.py.
"""
