"""Building blocks of a report page: sections, blocks, figures, tables, rendering.

A page is a list of :class:`Section`, each a list of :class:`Block` rendered by the macros in
``templates/blocks.html``. :class:`FigureMaker` draws one figure, writes its PNG under the
figures folder and embeds it as base64; a figure that fails becomes a visible ``error`` block
(and a log warning) instead of an exception. :func:`guarded_section` does the same for a whole
section, so one broken part of a report never loses the others.
"""

from __future__ import annotations

import base64
import io
import math
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from bids_dnn import __version__
from bids_dnn.io import derivatives as drv
from bids_dnn.console import logger

#: dots per inch of every figure (figure sizes are given in inches)
DPI = 110


# ---------------------------------------------------------------------------------------
# Blocks and sections
# ---------------------------------------------------------------------------------------


@dataclass
class Column:
    key: str
    label: str
    title: str = ""


@dataclass
class Cell:
    key: str
    text: str
    css: str = ""
    href: str = ""


@dataclass
class Block:
    """One piece of a section; ``kind`` selects the template macro."""

    kind: str
    text: str = ""
    id: str = ""
    html: str = ""
    src: str = ""
    alt: str = ""
    caption: str = ""
    file: str = ""
    width: int = 0
    height: int = 0
    rows: list[Any] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    body: str = ""
    open: bool = False
    css: str = ""
    children: list["Block"] = field(default_factory=list)


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def has_error(self) -> bool:
        return any(b.kind == "error" for b in self.blocks)

    def heading(self, text: str, id: str = "") -> None:
        self.blocks.append(Block("heading", text=text, id=id))

    def paragraph(self, text: str) -> None:
        self.blocks.append(Block("paragraph", text=text))

    def note(self, text: str) -> None:
        self.blocks.append(Block("note", text=text))

    def warning(self, text: str) -> None:
        self.blocks.append(Block("warning", text=text))

    def error(self, text: str) -> None:
        self.blocks.append(Block("error", text=text))

    def kv(self, rows: Sequence[tuple[str, Any]], id: str = "") -> None:
        self.blocks.append(Block("kv", id=id, rows=[(str(k), _text(v)) for k, v in rows]))

    def add(self, block: Block | None) -> None:
        if block is not None:
            self.blocks.append(block)


def guarded_section(section_id: str, title: str, build: Callable[[Section], None]) -> Section:
    """Run ``build(section)``; an exception becomes a visible note in that section only."""
    section = Section(section_id, title)
    try:
        build(section)
    except Exception as exc:  # noqa: BLE001 - one section must never lose the others
        logger.warning("report section '%s' failed: %s", title, exc)
        logger.debug("%s", traceback.format_exc())
        section.error(f"this section could not be built ({exc.__class__.__name__}: {exc}). "
                      "The results files are not affected.")
    return section


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


class FigureMaker:
    """Draws figures into ``folder`` (PNG) and returns embeddable blocks.

    ``draw(fig)`` receives an empty matplotlib figure of ``size`` inches. Failures are recorded
    in :attr:`failures` and returned as error blocks.
    """

    def __init__(self, folder: Path, root: Path) -> None:
        self.folder = Path(folder)
        self.root = Path(root)
        self.failures: list[str] = []
        self.count = 0

    def figure(self, name: str, draw: Callable[[Any], None], size: tuple[float, float], alt: str,
               caption: str = "") -> Block:
        plt = _pyplot()
        name = re.sub(r"[^A-Za-z0-9_.-]", "", name)
        path = self.folder / f"{name}.png"
        fig = None
        try:
            fig = plt.figure(figsize=size, dpi=DPI)
            draw(fig)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight",
                        facecolor="white")
            data = buffer.getvalue()
        except Exception as exc:  # noqa: BLE001 - a figure must never lose the run's results
            message = f'figure "{alt}" could not be drawn ({exc.__class__.__name__}: {exc})'
            logger.warning("report: %s", message)
            logger.debug("%s", traceback.format_exc())
            self.failures.append(message)
            return Block("error", text=message + ". The results files are not affected.")
        finally:
            if fig is not None:
                plt.close(fig)
        return self.embed_png(path, data, alt, caption, write=True)

    def figures(self, name: str, items: Sequence[Any], chunk: int, draw: Callable[[Any, list[Any]], None],
                size: Callable[[list[Any]], tuple[float, float]], alt: str, caption: str = "") -> list[Block]:
        """One figure per ``chunk`` items (``draw(fig, part)``); several get ``_part-K`` names and
        '(K of N)' alt texts, one keeps ``name`` and ``alt``."""
        parts = [list(items[i:i + chunk]) for i in range(0, len(items), chunk)] or [[]]
        blocks = []
        for k, part in enumerate(parts):
            suffix_name, suffix_alt = ("", "") if len(parts) == 1 else (f"_part-{k + 1}", f" ({k + 1} of {len(parts)})")
            blocks.append(self.figure(name + suffix_name, lambda fig, p=part: draw(fig, p), size(part),
                                      alt + suffix_alt, caption if k == len(parts) - 1 else ""))
        return blocks

    def embed_png(self, path: Path, data: bytes, alt: str, caption: str = "", write: bool = False) -> Block:
        """An image block for PNG ``data`` (written to ``path`` when ``write``)."""
        from PIL import Image

        if write:
            drv.write_bytes(path, data)
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        self.count += 1
        try:
            file = str(Path(path).relative_to(self.root))
        except ValueError:
            file = Path(path).name
        return Block("figure", id=f"fig-{Path(path).stem}", src="data:image/png;base64," + base64.b64encode(data).decode(),
                     alt=alt, caption=caption, file=file, width=width, height=height)


# ---------------------------------------------------------------------------------------
# Numbers and tables
# ---------------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _text(value: Any) -> str:
    return "n/a" if _missing(value) else str(value)


def fmt_fixed(digits: int) -> Callable[[Any], str]:
    def fmt(value: Any) -> str:
        return "n/a" if _missing(value) else f"{float(value):.{digits}f}"

    return fmt


def fmt_sig(digits: int = 3) -> Callable[[Any], str]:
    """Significant digits, never in exponent notation above 1e-4 (p-values)."""

    def fmt(value: Any) -> str:
        if _missing(value):
            return "n/a"
        value = float(value)
        if value == 0 or not math.isfinite(value):
            return f"{value:g}"
        if abs(value) < 1e-4:
            return f"{value:.{digits - 1}e}"
        decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
        return f"{value:.{decimals}f}"

    return fmt


def fmt_int(value: Any) -> str:
    return "n/a" if _missing(value) else f"{int(round(float(value)))}"


def fmt_bool(value: Any) -> str:
    if _missing(value):
        return "n/a"
    if isinstance(value, str):
        return "yes" if value.strip().lower() in ("true", "1", "yes") else "no"
    return "yes" if bool(value) else "no"


fmt_score = fmt_fixed(3)
fmt_p = fmt_sig(3)


def fmt_text(value: Any) -> str:
    return _text(value)


@dataclass
class Col:
    """A table column: source key, header, formatter, optional CSS rule and tooltip."""

    key: str
    label: str
    fmt: Callable[[Any], str] = fmt_text
    css: Callable[[pd.Series], str] | None = None
    title: str = ""
    link: Callable[[pd.Series], str] | None = None  # a relative link (another file of the output folder)


def table_block(table: pd.DataFrame, columns: Sequence[Col], id: str, caption: str = "") -> Block:
    """A data table from ``table`` with the given columns (those missing in ``table`` are skipped)."""
    columns = [c for c in columns if c.key in table.columns]
    rows = []
    for _, record in table.iterrows():
        cells = []
        for col in columns:
            css = col.css(record) if col.css is not None else ""
            if col.fmt is fmt_text or col.fmt is fmt_bool:
                css = (css + " txt").strip()
            href = col.link(record) if col.link is not None else ""
            cells.append(Cell(col.key, col.fmt(record[col.key]), css, href))
        rows.append(cells)
    return Block("table", id=id, caption=caption, columns=[Column(c.key, c.label, c.title) for c in columns], rows=rows)


def generic_table(table: pd.DataFrame, id: str, caption: str = "") -> Block:
    """Every column of ``table``, numbers with 4 significant digits."""
    cols = []
    for name in table.columns:
        series = table[name]
        if pd.api.types.is_bool_dtype(series):
            fmt: Callable[[Any], str] = fmt_bool
        elif pd.api.types.is_integer_dtype(series):
            fmt = fmt_int
        elif pd.api.types.is_float_dtype(series):
            fmt = fmt_sig(4)
        else:
            fmt = fmt_text
        cols.append(Col(str(name), str(name), fmt))
    return table_block(table, cols, id, caption)


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def _env() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(loader=PackageLoader("bids_dnn", "report/templates"),
                       autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                       trim_blocks=False, lstrip_blocks=False)


def render_page(path: Path, title: str, subtitle: Sequence[str], sections: list[Section], run_id: str,
                figures_dir: str) -> Path:
    """Render ``base.html`` and write it atomically to ``path``."""
    page = _env().get_template("base.html").render(
        title=title, subtitle=list(subtitle), sections=sections, version=__version__, run_id=run_id,
        figures_dir=figures_dir)
    return drv.write_text(path, page)


def finite(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]
