"""The demo's stages print their tables with the package's one printer, `sparsejax._table`."""

from sparsejax._table import print_table

__all__ = ["print_table"]
