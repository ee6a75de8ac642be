"""Data sets the project generates itself; nothing here is downloaded.

`generator.data.shapes64` holds the `shapes64` captioned image set (see docs/shapes64.md).
This package file imports nothing, so that `python -m generator.data.shapes64 grid …`
runs the module once, without runpy's "found in sys.modules" warning.
"""
