"""The HTML page: tables and figures as plain data, rendered by templates/report.html.j2.

Autoescape is on, so run names, paths and ensemble keys reach the page as text. The template
inlines report.css and image_check.js from beside it: the page is one self-contained file with its
PNG figures next to it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE = "report.html.j2"


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str]]


def cell(value) -> str:
    """A table cell as the page shows it: a float to 4 decimals (NaN empty), anything else as str()."""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def tabulate(table: pd.DataFrame) -> Table:
    """A DataFrame as header and cell texts (without its index)."""
    return Table([str(c) for c in table.columns], [[cell(v) for v in row] for row in table.itertuples(index=False)])


@dataclass(frozen=True)
class FigureFile:
    name: str  # the PNG beside index.html
    alt: str  # its alt text and caption


class FigureWriter:
    """Draws the page's PNG figures into its folder; names lists them in drawing order."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.names: list[str] = []

    def draw(self, name: str, alt: str, draw: Callable, *args) -> FigureFile:
        """draw(*args, path) writes the PNG `name`."""
        draw(*args, self.folder / name)
        self.names.append(name)
        return FigureFile(name, alt)


_ENV = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                   trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
_ENV.globals["tabulate"] = tabulate


def render_page(**context) -> str:
    """The page's HTML from the template, given its sections (see src.reporting.build)."""
    return _ENV.get_template(TEMPLATE).render(**context)
