"""The document tools (`pyxis_runtime.tools`) on inputs the tests render themselves, and on
hostile ones: each ends in a clear ToolError (code and HTTP status), never a hang."""

from __future__ import annotations

import difflib
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from pyxis_runtime import tools
from pyxis_runtime.tools import ToolError

CJK_FONT = "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"
EN_TEXT = "The quick brown fox jumps over the lazy dog 1234567890"
ZH_TEXT = "我们在北京学习中文和数学"


def render_text(path: Path, lines: list, size: int = 48) -> Path:
    """A white page with black text, drawn with the CJK font (it has Latin glyphs too)."""
    font = ImageFont.truetype(CJK_FONT, size)
    width = max(int(font.getlength(line)) for line in lines) + 80
    img = Image.new("RGB", (width, (size + 30) * len(lines) + 60), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((40, 30 + i * (size + 30)), line, font=font, fill="black")
    img.save(path)
    return path


def similarity(got: str, want: str) -> float:
    """Share of the wanted characters found in order (whitespace ignored)."""
    got, want = "".join(got.split()), "".join(want.split())
    matcher = difflib.SequenceMatcher(None, got, want, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()) / len(want)


# --------------------------------------------------------------------------- OCR


def test_ocr_english(tmp_path):
    image = render_text(tmp_path / "en.png", [EN_TEXT])
    result = tools.ocr_extract(image, lang="eng")
    assert similarity(result["text"], EN_TEXT) >= 0.9, result["text"]
    (page,) = result["pages"]
    words = {box["text"] for box in page["boxes"]}
    assert "quick" in words and "fox" in words
    box = next(b for b in page["boxes"] if b["text"] == "quick")
    assert box["width"] > 0 and box["height"] > 0 and 0 <= box["top"] < page["height"]


def test_ocr_chinese_and_english(tmp_path):
    image = render_text(tmp_path / "zh.png", [ZH_TEXT, "Hello 世界 2024"])
    result = tools.ocr_extract(image, lang="chi_sim+eng")
    assert similarity(result["text"].splitlines()[0], ZH_TEXT) >= 0.9, result["text"]
    assert "Hello" in result["text"]


def test_ocr_of_a_pdf_page(tmp_path):
    image = render_text(tmp_path / "page.png", [EN_TEXT])
    pdf = tmp_path / "scan.pdf"
    Image.open(image).save(pdf, "PDF", resolution=150)
    result = tools.ocr_extract(pdf, lang="eng")
    assert len(result["pages"]) == 1
    assert similarity(result["text"], EN_TEXT) >= 0.9, result["text"]


@pytest.mark.parametrize("lang", ["eng; rm -rf /", "../eng", ""])
def test_ocr_bad_lang_is_400(tmp_path, lang):
    image = render_text(tmp_path / "x.png", ["x"])
    with pytest.raises(ToolError) as err:
        tools.ocr_extract(image, lang=lang)
    assert err.value.status == 400


def test_ocr_unknown_lang_is_400(tmp_path):
    image = render_text(tmp_path / "x.png", ["x"])
    with pytest.raises(ToolError) as err:
        tools.ocr_extract(image, lang="klingon")
    assert (err.value.code, err.value.status) == ("unknown_lang", 400)


# --------------------------------------------------------------------------- barcodes


def test_qr_and_code128_are_decoded(tmp_path):
    # pylint: disable=import-outside-toplevel
    import barcode
    import qrcode
    from barcode.writer import ImageWriter

    qr = qrcode.make("https://example.com/订单/42")
    code = barcode.get("code128", "PYXIS-2026-0042", writer=ImageWriter()).render()
    page = Image.new("RGB", (qr.size[0] + code.width + 60, max(qr.size[1], code.height) + 40))
    page.paste((255, 255, 255), (0, 0, page.width, page.height))
    page.paste(qr.convert("RGB"), (20, 20))
    page.paste(code, (qr.size[0] + 40, 20))
    page.save(tmp_path / "label.png")
    found = {(b["type"], b["data"]): b for b in tools.barcode_decode(tmp_path / "label.png")}
    assert ("QRCODE", "https://example.com/订单/42") in found
    assert ("CODE128", "PYXIS-2026-0042") in found
    rect = found[("CODE128", "PYXIS-2026-0042")]["rect"]
    assert rect["left"] >= qr.size[0]  # the position is where it was pasted


def test_no_barcode_is_an_empty_list(tmp_path):
    image = render_text(tmp_path / "plain.png", ["no codes here"])
    assert not tools.barcode_decode(image)


# --------------------------------------------------------------------------- conversion


def test_docx_to_pdf_text_reads_back(tmp_path):
    # pylint: disable=import-outside-toplevel
    import docx
    import pdfplumber

    document = docx.Document()
    document.add_heading("Quarterly report", level=1)
    document.add_paragraph("Revenue grew by 12 percent. 收入增长了百分之十二。")
    document.save(tmp_path / "report.docx")
    (pdf,) = tools.convert(tmp_path / "report.docx", "pdf", tmp_path / "out")
    assert pdf.name == "report.pdf"
    with pdfplumber.open(pdf) as doc:
        text = "".join(page.extract_text() or "" for page in doc.pages)
    assert "Quarterly report" in text
    assert "Revenue grew by 12 percent" in text
    assert "收入增长" in text


def test_xlsx_to_pdf(tmp_path):
    # pylint: disable=import-outside-toplevel
    import openpyxl
    import pdfplumber

    book = openpyxl.Workbook()
    book.active.append(["city", "people"])
    book.active.append(["Oslo", 709000])
    book.save(tmp_path / "t.xlsx")
    (pdf,) = tools.convert(tmp_path / "t.xlsx", "pdf")
    with pdfplumber.open(pdf) as doc:
        assert "Oslo" in doc.pages[0].extract_text()


def test_markdown_to_docx_and_back_to_html(tmp_path):
    # pylint: disable=import-outside-toplevel
    import docx

    (tmp_path / "notes.md").write_text(
        "# Title 标题\n\nSome *text* and a list:\n\n- one\n- two\n", encoding="utf-8"
    )
    (out,) = tools.convert(tmp_path / "notes.md", "docx")
    paragraphs = [p.text for p in docx.Document(out).paragraphs]
    assert "Title 标题" in paragraphs and "one" in paragraphs
    (html,) = tools.convert(out, "html", tmp_path / "html")
    assert "<h1" in html.read_text(encoding="utf-8")


def test_pdf_to_png_pages(tmp_path):
    pages = [Image.new("RGB", (400, 300), color) for color in ("red", "green", "blue")]
    pages[0].save(tmp_path / "three.pdf", "PDF", save_all=True, append_images=pages[1:])
    written = tools.convert(tmp_path / "three.pdf", "png", tmp_path / "png")
    assert [p.name for p in written] == ["three-1.png", "three-2.png", "three-3.png"]
    green = Image.open(written[1]).convert("RGB")
    r, g, b = green.getpixel((green.width // 2, green.height // 2))
    assert g > 100 and r < 60 and b < 60


def test_image_to_image(tmp_path):
    Image.new("RGBA", (30, 20), (0, 0, 255, 128)).save(tmp_path / "a.png")
    (jpg,) = tools.convert(tmp_path / "a.png", "jpg")
    with Image.open(jpg) as img:
        assert img.format == "JPEG" and img.size == (30, 20)


def test_svg_to_png(tmp_path):
    svg = tmp_path / "c.svg"
    svg.write_text(
        '<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
        '"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">'
        '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40">'
        '<rect width="40" height="40" fill="red"/></svg>'
    )
    (png,) = tools.convert(svg, "png")
    with Image.open(png) as img:
        assert img.size == (40, 40)
        assert img.convert("RGB").getpixel((20, 20))[0] > 200


def test_unsupported_conversion_is_415(tmp_path):
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(ToolError) as err:
        tools.convert(tmp_path / "x.csv", "mp3")
    assert err.value.status == 415


def test_missing_file_is_400(tmp_path):
    with pytest.raises(ToolError) as err:
        tools.convert(tmp_path / "nope.docx", "pdf")
    assert err.value.status == 400


# --------------------------------------------------------------------------- hostile files


def test_truncated_pdf_is_422(tmp_path):
    image = render_text(tmp_path / "p.png", [EN_TEXT])
    Image.open(image).save(tmp_path / "ok.pdf", "PDF")
    data = (tmp_path / "ok.pdf").read_bytes()
    (tmp_path / "cut.pdf").write_bytes(data[: len(data) // 3])
    for call in (
        lambda: tools.ocr_extract(tmp_path / "cut.pdf"),
        lambda: tools.convert(tmp_path / "cut.pdf", "png"),
        lambda: tools.barcode_decode(tmp_path / "cut.pdf"),
    ):
        with pytest.raises(ToolError) as err:
            call()
        assert err.value.status == 422, err.value.message


def zip_bomb_docx(path: Path) -> Path:
    """A docx whose one part unpacks to 512 MiB of zeros (under 3 MB packed)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        with zf.open("word/document.xml", "w", force_zip64=True) as part:
            block = b"\0" * (1 << 20)
            for _ in range(512):
                part.write(block)
    return path


def test_zip_bomb_docx_is_413(tmp_path):
    bomb = zip_bomb_docx(tmp_path / "bomb.docx")
    assert bomb.stat().st_size < 8 << 20
    with pytest.raises(ToolError) as err:
        tools.convert(bomb, "pdf")
    assert (err.value.code, err.value.status) == ("document_too_large", 413)


def huge_png(path: Path, side: int = 30_000) -> Path:
    """A valid grayscale PNG of side × side white pixels (a few hundred kB on disk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    packer = zlib.compressobj(1)
    rows = (b"\0" + b"\xff" * side) * 1000
    body = b"".join(packer.compress(rows) for _ in range(side // 1000)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


def test_huge_png_is_413_before_decoding(tmp_path):
    png = huge_png(tmp_path / "huge.png")
    for call in (
        lambda: tools.ocr_extract(png),
        lambda: tools.barcode_decode(png),
        lambda: tools.convert(png, "jpg"),
    ):
        with pytest.raises(ToolError) as err:
            call()
        assert (err.value.code, err.value.status) == ("image_too_large", 413)


def test_svg_with_external_entity_is_refused(tmp_path):
    svg = tmp_path / "xxe.svg"
    svg.write_text(
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE svg [<!ENTITY leak SYSTEM "file:///etc/passwd">]>\n'
        '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="50">'
        "<text y='20'>&leak;</text></svg>"
    )
    with pytest.raises(ToolError) as err:
        tools.convert(svg, "png")
    assert (err.value.code, err.value.status) == ("unsafe_xml", 422)


def test_svg_with_xinclude_is_refused(tmp_path):
    svg = tmp_path / "xi.svg"
    svg.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xi="http://www.w3.org/2001/XInclude">'
        '<text y="20"><xi:include href="/etc/hostname" parse="text"/></text></svg>'
    )
    with pytest.raises(ToolError) as err:
        tools.convert(svg, "png")
    assert err.value.code == "unsafe_xml"


def test_not_an_image_is_422(tmp_path):
    (tmp_path / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ToolError) as err:
        tools.ocr_extract(tmp_path / "fake.png")
    assert err.value.status == 422


def test_not_a_docx_is_422(tmp_path):
    (tmp_path / "fake.docx").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ToolError) as err:
        tools.convert(tmp_path / "fake.docx", "pdf")
    assert err.value.status == 422


# --------------------------------------------------------------------------- data


def test_analyze_csv(tmp_path):
    (tmp_path / "sales.csv").write_text("region,amount,note\nnorth,10,\nsouth,20,x\nnorth,,y\n")
    summary = tools.analyze(tmp_path / "sales.csv")
    assert summary["shape"] == [3, 3]
    assert summary["columns"] == ["region", "amount", "note"]
    assert summary["dtypes"]["amount"] == "float64"
    assert summary["missing"] == {"region": 0, "amount": 1, "note": 1}
    assert summary["describe"]["amount"]["mean"] == 15.0
    assert summary["head"][0]["region"] == "north"


def test_analyze_xlsx(tmp_path):
    # pylint: disable=import-outside-toplevel
    import pandas as pd

    pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]}).to_excel(tmp_path / "t.xlsx", index=False)
    summary = tools.analyze(tmp_path / "t.xlsx")
    assert summary["shape"] == [3, 2] and summary["missing"]["b"] == 1


def test_transform_expression(tmp_path):
    (tmp_path / "s.csv").write_text("region,amount\nnorth,10\nsouth,20\nnorth,5\n")
    out = tools.transform(tmp_path / "s.csv", "df.groupby('region')['amount'].sum().to_dict()")
    assert out == {"north": 15, "south": 20}


@pytest.mark.parametrize(
    "expression, status", [("df[", 400), ("", 400), ("df['missing']", 422), ("1/0", 422)]
)
def test_transform_bad_expression(tmp_path, expression, status):
    (tmp_path / "s.csv").write_text("a\n1\n")
    with pytest.raises(ToolError) as err:
        tools.transform(tmp_path / "s.csv", expression)
    assert err.value.status == status


def test_unreadable_table_is_422(tmp_path):
    (tmp_path / "bad.xlsx").write_bytes(b"not a workbook")
    with pytest.raises(ToolError) as err:
        tools.analyze(tmp_path / "bad.xlsx")
    assert err.value.status == 422


# --------------------------------------------------------------------------- media, text


def test_ffmpeg_transcodes_a_generated_tone(tmp_path):
    # pylint: disable=import-outside-toplevel
    import subprocess

    import numpy as np
    import soundfile

    rate = 16_000
    t = np.arange(rate) / rate
    soundfile.write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), rate)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", tmp_path / "tone.wav", tmp_path / "tone.ogg"],
        check=True,
        timeout=60,
    )
    data, got_rate = soundfile.read(tmp_path / "tone.ogg")
    assert got_rate == rate and abs(len(data) - rate) < rate // 20
    spectrum = np.abs(np.fft.rfft(data[:rate]))
    peak_hz = np.argmax(spectrum) * got_rate / len(data[:rate])
    assert abs(peak_hz - 440) < 5


def test_chinese_word_cloud(tmp_path):
    # pylint: disable=import-outside-toplevel
    import jieba
    from wordcloud import WordCloud

    text = "数据分析 数据 可视化 机器学习 数据 分析 中文 分词 数据 图表 " * 5
    words = " ".join(jieba.cut(text))
    cloud = WordCloud(font_path=CJK_FONT, width=300, height=200, background_color="white")
    cloud.generate(words)
    assert "数据" in cloud.words_ and cloud.words_["数据"] == 1.0
    cloud.to_file(str(tmp_path / "cloud.png"))
    with Image.open(tmp_path / "cloud.png") as img:
        colors = img.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 2  # something was drawn
