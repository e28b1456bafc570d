"""Document tools callable from a cell: OCR, barcodes, format conversion, data analysis.

    from pyxis_runtime import tools
    tools.ocr_extract("scan.png", lang="eng+chi_sim")   # {"text", "pages": [{"boxes": ...}]}
    tools.barcode_decode("label.png")                    # [{"type", "data", "rect", ...}]
    tools.convert("report.docx", "pdf")                  # path of report.pdf
    tools.analyze("sales.csv")                           # shape, dtypes, describe, missing
    tools.transform("sales.csv", "df[df.amount > 0]")    # a DataFrame (or any value)

The document-tools door of the server is a thin layer over these functions, run in a one-shot
sandbox. Each refuses what it cannot handle safely with a `ToolError` carrying a short code
and the HTTP status the door answers with (400 bad request, 413 too large, 415 unsupported
format, 422 unreadable file, 504 timed out), never a hang: every external program runs with a
time bound, images are sized before they are decoded, archives are sized before they are
opened, and XML with a DTD is refused.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

# Bounds (within a session's default 1 GiB of memory and its /tmp).
MAX_IMAGE_PIXELS = 64_000_000  # an A4 page at 600 dpi is 35 Mpx
MAX_PDF_PAGES = 50
OCR_DPI = 300
MAX_UNZIPPED_BYTES = 256 << 20  # an OOXML/ODF document's parts, added up
MAX_ZIP_RATIO = 200  # uncompressed / compressed, for archives above 1 MiB unzipped
MAX_ZIP_MEMBERS = 10_000
TOOL_TIMEOUT_S = 120
# An internal DTD subset, an entity declaration, or an XInclude (a plain DOCTYPE naming the
# SVG DTD is fine: librsvg loads no external DTD).
UNSAFE_XML_RE = re.compile(rb"<!DOCTYPE[^>\[]*\[|<!ENTITY|XInclude|xi:include", re.IGNORECASE)
OCR_LANG_RE = re.compile(r"^[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*$")

OFFICE_FORMATS = {"docx", "doc", "xlsx", "xls", "pptx", "ppt", "odt", "ods", "odp", "rtf"}
PANDOC_FORMATS = {
    "md": "markdown",
    "markdown": "markdown",
    "html": "html",
    "htm": "html",
    "docx": "docx",
}
IMAGE_FORMATS = {"png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp"}
PILLOW_NAMES = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "tiff": "TIFF"}
ZIP_FORMATS = {"docx", "xlsx", "pptx", "odt", "ods", "odp"}
TABLE_FORMATS = {"csv", "tsv", "xlsx", "xls", "json", "parquet"}


class ToolError(Exception):
    """A refused or failed tool call: `code` (short, stable), `status` (HTTP), message."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message

    def as_dict(self) -> dict:
        """The JSON error body of the door."""
        return {"code": self.code, "message": self.message, "status": self.status}


# --------------------------------------------------------------------------- helpers


def _ext(path: str | os.PathLike) -> str:
    return Path(path).suffix.lower().lstrip(".")


def _existing(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ToolError("file_not_found", f"no such file: {p.name}", 400)
    return p


def _run(argv: list, timeout: float = TOOL_TIMEOUT_S, **kwargs) -> subprocess.CompletedProcess:
    """Runs a program with a time bound; a failure becomes a ToolError without host detail."""
    try:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=True,
            **kwargs,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(
            "timeout", f"{Path(argv[0]).name} took longer than {timeout:.0f} s", 504
        ) from exc
    except FileNotFoundError as exc:
        raise ToolError("tool_missing", f"{Path(argv[0]).name} is not installed", 500) from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        last = detail[-1][:300] if detail else f"exit status {exc.returncode}"
        raise ToolError("conversion_failed", f"{Path(argv[0]).name} failed: {last}", 422) from exc


def _check_image(path: Path):
    """Opens an image lazily and refuses one too large to decode; returns it."""
    # pylint: disable=import-outside-toplevel
    from PIL import Image

    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ToolError("image_too_large", str(exc), 413) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ToolError("unreadable_image", f"not a readable image: {exc}", 422) from exc
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ToolError(
            "image_too_large",
            f"image of {width}x{height} pixels is above the limit of {MAX_IMAGE_PIXELS} pixels",
            413,
        )
    return img


def _check_zip(path: Path) -> None:
    """Refuses an OOXML/ODF archive that is not a zip or would unpack into too much."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ToolError(
            "unreadable_document", f"not a valid {_ext(path)} file (bad zip)", 422
        ) from exc
    if len(infos) > MAX_ZIP_MEMBERS:
        raise ToolError("document_too_large", f"{len(infos)} parts in the archive", 413)
    unzipped = sum(i.file_size for i in infos)
    packed = max(sum(i.compress_size for i in infos), 1)
    if unzipped > MAX_UNZIPPED_BYTES or (
        unzipped > (1 << 20) and unzipped / packed > MAX_ZIP_RATIO
    ):
        raise ToolError(
            "document_too_large",
            f"the document unpacks to {unzipped} bytes (ratio {unzipped // packed}:1), "
            "above the limit",
            413,
        )


def _check_xml(path: Path) -> None:
    """Refuses XML (SVG, XHTML) that declares a DTD or entities (no XXE, no billion laughs)
    or includes other files (XInclude, which librsvg follows)."""
    head = path.read_bytes()[: 4 << 20]
    if UNSAFE_XML_RE.search(head):
        raise ToolError(
            "unsafe_xml", "XML with a DTD, entity declarations or XInclude is refused", 422
        )


def _pdf_pages(
    path: Path, dpi: int, out_dir: Path, first: int = 1, last: int | None = None
) -> list:
    """Renders PDF pages to PNG with pdftoppm; returns their paths in page order."""
    count = _pdf_page_count(path)
    last = min(last or count, count, first + MAX_PDF_PAGES - 1)
    prefix = out_dir / "page"
    _run(
        [
            "pdftoppm",
            "-r",
            str(dpi),
            "-png",
            "-f",
            str(first),
            "-l",
            str(last),
            str(path),
            str(prefix),
        ]
    )
    return sorted(out_dir.glob("page-*.png"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))


def _pdf_page_count(path: Path) -> int:
    try:
        info = _run(["pdfinfo", str(path)], timeout=30).stdout.decode("utf-8", "replace")
    except ToolError as exc:
        if exc.code != "conversion_failed":
            raise
        raise ToolError("unreadable_pdf", f"not a readable PDF: {exc.message}", 422) from exc
    match = re.search(r"^Pages:\s+(\d+)", info, re.MULTILINE)
    if not match or int(match.group(1)) < 1:
        raise ToolError("unreadable_pdf", "the PDF has no pages", 422)
    return int(match.group(1))


def _is_pdf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(5) == b"%PDF-"


# --------------------------------------------------------------------------- OCR


def ocr_extract(
    path: str | os.PathLike, lang: str = "eng", boxes: bool = True, dpi: int = OCR_DPI
) -> dict:
    """Text (and word boxes) of an image or a PDF, by Tesseract.

    Returns `{"lang", "text", "pages": [{"page", "width", "height", "text", "boxes":
    [{"text", "conf", "left", "top", "width", "height"}]}]}`; `lang` is Tesseract's
    (`eng`, `chi_sim`, `eng+chi_sim`).
    """
    src = _existing(path)
    if not OCR_LANG_RE.match(lang or ""):
        raise ToolError(
            "bad_lang", f"bad lang {lang!r}: names joined by '+', e.g. eng+chi_sim", 400
        )
    missing = [code for code in lang.split("+") if code not in ocr_languages()]
    if missing:
        raise ToolError("unknown_lang", f"OCR language not installed: {', '.join(missing)}", 400)
    with tempfile.TemporaryDirectory(prefix="pyxis-ocr-") as tmp:
        images = _pdf_pages(src, dpi, Path(tmp)) if _is_pdf(src) else [src]
        pages = [
            _ocr_page(Path(image), number, lang, boxes)
            for number, image in enumerate(images, start=1)
        ]
    return {"lang": lang, "text": "\n\n".join(p["text"] for p in pages), "pages": pages}


def _ocr_page(image: Path, number: int, lang: str, boxes: bool) -> dict:
    # pylint: disable=import-outside-toplevel
    import pytesseract

    img = _check_image(image)
    try:
        img.load()
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        page = {"page": number, "width": img.width, "height": img.height}
        if boxes:
            data = pytesseract.image_to_data(
                img, lang=lang, output_type=pytesseract.Output.DICT, timeout=TOOL_TIMEOUT_S
            )
            page["boxes"] = _words(data)
            page["text"] = _text_from_words(data, lang)
        else:
            text = pytesseract.image_to_string(img, lang=lang, timeout=TOOL_TIMEOUT_S)
            page["text"] = text.strip()
    except pytesseract.TesseractError as exc:
        raise ToolError("ocr_failed", f"tesseract failed: {exc.message[:300]}", 422) from exc
    except RuntimeError as exc:  # pytesseract's timeout
        raise ToolError("timeout", f"OCR took longer than {TOOL_TIMEOUT_S} s", 504) from exc
    except OSError as exc:
        raise ToolError("unreadable_image", f"not a readable image: {exc}", 422) from exc
    return page


def _words(data: dict) -> list:
    words = []
    for i, text in enumerate(data["text"]):
        if not text.strip():
            continue
        words.append(
            {
                "text": text,
                "conf": float(data["conf"][i]),
                "left": int(data["left"][i]),
                "top": int(data["top"][i]),
                "width": int(data["width"][i]),
                "height": int(data["height"][i]),
            }
        )
    return words


def _text_from_words(data: dict, lang: str) -> str:
    """Lines of text from image_to_data's words (CJK words joined without spaces)."""
    cjk = any(code.startswith("chi") or code in ("jpn", "kor") for code in lang.split("+"))
    lines: dict = {}
    for i, text in enumerate(data["text"]):
        if not text.strip():
            continue
        key = (data["block_num"][i], data["par_num"][i], data["line_num"][i])
        lines.setdefault(key, []).append(text)
    out = []
    for key in sorted(lines):
        words = lines[key]
        line = ""
        for word in words:
            if line and not (cjk and _is_cjk(line[-1]) and _is_cjk(word[0])):
                line += " "
            line += word
        out.append(line)
    return "\n".join(out)


def _is_cjk(ch: str) -> bool:
    return "\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\uff00" <= ch <= "\uffef"


@functools.lru_cache(maxsize=1)
def ocr_languages() -> tuple:
    """Tesseract's installed languages (asked once: tesseract takes a moment to start)."""
    try:
        out = _run(["tesseract", "--list-langs"], timeout=30).stdout.decode()
    except ToolError:
        return ()
    return tuple(line.strip() for line in out.splitlines()[1:] if line.strip())


# --------------------------------------------------------------------------- barcodes


def barcode_decode(path: str | os.PathLike) -> list:
    """Barcodes and QR codes in an image (or a PDF's pages), by ZBar.

    Returns `[{"type": "QRCODE" | "CODE128" | ..., "data": str, "page",
    "rect": {"left", "top", "width", "height"}, "polygon": [[x, y], ...]}]`.
    """
    # pylint: disable=import-outside-toplevel
    from pyzbar import pyzbar

    src = _existing(path)
    found = []
    with tempfile.TemporaryDirectory(prefix="pyxis-zbar-") as tmp:
        images = _pdf_pages(src, 200, Path(tmp)) if _is_pdf(src) else [src]
        for number, image_path in enumerate(images, start=1):
            img = _check_image(Path(image_path))
            try:
                img = img.convert("L")
            except OSError as exc:
                raise ToolError("unreadable_image", f"not a readable image: {exc}", 422) from exc
            for sym in pyzbar.decode(img):
                found.append(
                    {
                        "type": sym.type,
                        "data": sym.data.decode("utf-8", "replace"),
                        "page": number,
                        "rect": {
                            "left": sym.rect.left,
                            "top": sym.rect.top,
                            "width": sym.rect.width,
                            "height": sym.rect.height,
                        },
                        "polygon": [[p.x, p.y] for p in sym.polygon],
                    }
                )
    return found


# --------------------------------------------------------------------------- conversion


def convert(path: str | os.PathLike, to: str, out_dir: str | os.PathLike | None = None) -> list:
    """Converts a file; returns the paths written (several for PDF → PNG pages).

    docx/doc/xlsx/xls/pptx/ppt/odt/ods/odp/rtf → pdf (LibreOffice); md/html ↔ docx and
    md → html (pandoc); pdf → png (one file per page, poppler); between image formats
    (Pillow); svg → png (librsvg; SVG without a DTD or XInclude).
    """
    src = _existing(path)
    to = to.lower().lstrip(".")
    src_ext = _ext(src)
    out = Path(out_dir) if out_dir is not None else src.parent
    out.mkdir(parents=True, exist_ok=True)
    stem = src.stem or "output"
    if src_ext in ZIP_FORMATS:
        _check_zip(src)
    if to == "pdf" and src_ext in OFFICE_FORMATS:
        return [_office_to_pdf(src, out)]
    if (
        src_ext in PANDOC_FORMATS
        and to in PANDOC_FORMATS
        and PANDOC_FORMATS[src_ext] != PANDOC_FORMATS[to]
    ):
        if src_ext in ("html", "htm"):
            _check_xml(src)
        target = out / f"{stem}.{to}"
        # pandoc's --sandbox cannot write docx (its own data files are refused); the
        # kernel's sandbox bounds what a document may pull in.
        sandbox = [] if to == "docx" else ["--sandbox"]
        _run(
            [
                "pandoc",
                *sandbox,
                "-f",
                PANDOC_FORMATS[src_ext],
                "-t",
                PANDOC_FORMATS[to],
                "-o",
                str(target),
                str(src),
            ]
        )
        return [target]
    if src_ext == "pdf" and to == "png":
        if not _is_pdf(src):
            raise ToolError("unreadable_pdf", "not a PDF file", 422)
        with tempfile.TemporaryDirectory(prefix="pyxis-pdf-") as tmp:
            pages = _pdf_pages(src, 150, Path(tmp))
            written = []
            for page in pages:
                _check_image(page)
                target = out / f"{stem}-{page.stem.rsplit('-', 1)[1].lstrip('0') or '0'}.png"
                shutil.move(str(page), target)
                written.append(target)
        return written
    if src_ext == "svg" and to == "png":
        _check_xml(src)
        target = out / f"{stem}.png"
        _run(["rsvg-convert", "--format", "png", "--output", str(target), str(src)])
        _check_image(target)
        return [target]
    if src_ext in IMAGE_FORMATS and to in IMAGE_FORMATS:
        img = _check_image(src)
        target = out / f"{stem}.{to}"
        try:
            if PILLOW_NAMES.get(to) == "JPEG" and img.mode not in ("RGB", "L"):
                img = img.convert("RGB")
            img.save(target, format=PILLOW_NAMES.get(to, to.upper()))
        except (OSError, ValueError, KeyError) as exc:
            raise ToolError("conversion_failed", f"image conversion failed: {exc}", 422) from exc
        return [target]
    raise ToolError(
        "unsupported_conversion", f"no conversion from {src_ext or 'unknown'} to {to}", 415
    )


def _office_to_pdf(src: Path, out: Path) -> Path:
    """LibreOffice headless with a profile of its own in /tmp, removed after (HOME too:
    LibreOffice makes an empty ~/.config even with its profile elsewhere)."""
    profile = tempfile.mkdtemp(prefix="pyxis-lo-")
    env = dict(os.environ, HOME=profile)
    try:
        with tempfile.TemporaryDirectory(prefix="pyxis-lo-out-") as tmp:
            _run(
                [
                    "soffice",
                    f"-env:UserInstallation=file://{profile}",
                    "--headless",
                    "--norestore",
                    "--nolockcheck",
                    "--convert-to",
                    "pdf",
                    "--outdir",
                    tmp,
                    str(src),
                ],
                env=env,
            )
            made = Path(tmp) / f"{src.stem}.pdf"
            if not made.is_file():
                raise ToolError(
                    "conversion_failed", f"LibreOffice could not convert this {_ext(src)} file", 422
                )
            target = out / made.name
            shutil.move(str(made), target)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- data


def read_table(path: str | os.PathLike, sheet: str | int | None = None):
    """A CSV/TSV/Excel/JSON/Parquet file as a DataFrame."""
    # pylint: disable=import-outside-toplevel
    import pandas as pd

    src = _existing(path)
    ext = _ext(src)
    if ext in ZIP_FORMATS:
        _check_zip(src)
    try:
        if ext == "csv":
            return pd.read_csv(src)
        if ext == "tsv":
            return pd.read_csv(src, sep="\t")
        if ext in ("xlsx", "xls"):
            return pd.read_excel(src, sheet_name=sheet if sheet is not None else 0)
        if ext == "json":
            return pd.read_json(src)
        if ext == "parquet":
            return pd.read_parquet(src)
    except (ValueError, OSError, UnicodeDecodeError, KeyError, zipfile.BadZipFile) as exc:
        raise ToolError(
            "unreadable_table", f"could not read the {ext} file: {str(exc)[:300]}", 422
        ) from exc
    except Exception as exc:  # pylint: disable=broad-except
        # pandas' parsers raise their own error types (ParserError, EmptyDataError, XLRDError).
        raise ToolError(
            "unreadable_table", f"could not read the {ext} file: {str(exc)[:300]}", 422
        ) from exc
    raise ToolError("unsupported_format", f"not a table format: {ext or 'unknown'}", 415)


def analyze(path: str | os.PathLike, sheet: str | int | None = None) -> dict:
    """A question-free summary of a table: shape, columns, dtypes, describe, missing, head."""
    frame = read_table(path, sheet)
    return summarize(frame)


def summarize(frame) -> dict:
    """The summary `analyze` returns, of a DataFrame already loaded."""
    # pylint: disable=import-outside-toplevel
    import json

    describe = frame.describe(include="all").transpose() if len(frame.columns) else None
    return {
        "shape": [int(frame.shape[0]), int(frame.shape[1])],
        "columns": [str(c) for c in frame.columns],
        "dtypes": {str(c): str(t) for c, t in frame.dtypes.items()},
        "missing": {str(c): int(n) for c, n in frame.isna().sum().items()},
        "describe": (
            json.loads(describe.to_json(orient="index", default_handler=str))
            if describe is not None
            else {}
        ),
        "head": json.loads(
            frame.head(5).to_json(orient="records", date_format="iso", default_handler=str)
        ),
    }


def transform(path: str | os.PathLike, expression: str, sheet: str | int | None = None):
    """Evaluates a pandas expression over the table `df` (with `pd` and `np` in scope)."""
    # pylint: disable=import-outside-toplevel
    import numpy as np
    import pandas as pd

    if not isinstance(expression, str) or not expression.strip():
        raise ToolError("bad_expression", "expression must be a non-empty string", 400)
    frame = read_table(path, sheet)
    try:
        code = compile(expression, "<expression>", "eval")
    except SyntaxError as exc:
        raise ToolError("bad_expression", f"not a Python expression: {exc.msg}", 400) from exc
    try:
        return eval(code, {"pd": pd, "np": np, "df": frame})  # pylint: disable=eval-used
    except Exception as exc:  # pylint: disable=broad-except
        raise ToolError(
            "expression_failed", f"{type(exc).__name__}: {str(exc)[:500]}", 422
        ) from exc
