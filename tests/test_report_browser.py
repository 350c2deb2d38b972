"""The HTML report renders in a real headless browser (Debian's Chromium) with every image loaded."""

import shutil
from pathlib import Path

import pytest
import torch

from robust_csc.models import create_model
from robust_csc.models.checkpoints import checkpoint_hash, save_checkpoint
from robust_csc.reports import write_report
from test_reports_store import demo_store

CHROMIUM = Path("/usr/bin/chromium")
SHARED_SCREENSHOT = Path("/tmp/briefs/report_screenshot.png")  # and report_first_screen.png, report_printed_page1.png
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_html_report_renders_with_every_image(tmp_path):
    # No silent skip: a missing browser is a set-up fault that `make test` fixes.
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing; `make test` installs Debian's chromium package (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "sdnet18.safetensors", create_model("sdnet18", num_classes=10, width=8),
                                 dataset="digits")
    demo_store(tmp_path / "results.sqlite", sdnet_sha=checkpoint_hash(checkpoint))
    page_path = write_report(tmp_path / "results.sqlite", tmp_path / "report", baseline="resnet18",
                             checkpoints=[checkpoint])
    html = page_path.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "<script" not in html  # offline, no JS

    shot, first_screen, pdf = tmp_path / "screenshot.png", tmp_path / "first_screen.png", tmp_path / "report.pdf"
    key_table = "table.key"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.resolve().as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => ({complete: e.complete, width: e.naturalWidth, alt: e.alt}))"
            )
            headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
            tables = page.eval_on_selector_all("table", "els => els.length")
            # The first screen holds the whole key-results table: its box inside the 1280 x 900 viewport.
            box = page.eval_on_selector(key_table, "t => { const r = t.getBoundingClientRect(); "
                                                   "return {left: r.left, right: r.right, bottom: r.bottom}; }")
            key_headers = page.eval_on_selector_all(f"{key_table} thead th", "els => els.map(e => e.textContent)")
            page.screenshot(path=str(first_screen))
            page.screenshot(path=str(shot), full_page=True)
            # Printed to A4: the table fits the printable width (no column cut off), and the PDF holds its text.
            page.emulate_media(media="print")
            printed = page.eval_on_selector(key_table, "t => [t.scrollWidth, t.parentElement.clientWidth]")
            page.pdf(path=str(pdf), format="A4", print_background=True, prefer_css_page_size=True)
        finally:
            browser.close()

    figures = sorted((tmp_path / "report" / "figures").glob("*.png"))
    # 2 severity plots, 5 heatmaps, epsilon, chosen lambda, lambda sweep, sparsity, atoms, examples
    assert len(images) == len(figures) == 13
    broken = [i["alt"] for i in images if not (i["complete"] and i["width"] > 0)]
    assert not broken, broken
    assert [r for r in requests if not r.startswith(("file:", "data:"))] == []  # nothing fetched from a network
    assert headings[0] == "Key results" and headings[-2:] == ["Run settings", "Notes"]  # the answer first, provenance last
    assert "Adversarial robustness" in headings and "Lambda tuning" in headings and "Glossary" in headings
    assert tables >= 8
    assert box["left"] >= 0 and box["right"] <= 1280 and box["bottom"] <= 900, box
    assert printed[0] <= printed[1], f"the key-results table is {printed[0]} px wide on a {printed[1]} px A4 page"
    assert shot.stat().st_size > 50_000

    import pypdfium2

    document = pypdfium2.PdfDocument(str(pdf))
    try:
        assert 1 < len(document) < 40
        first_page = document[0]
        text = " ".join(first_page.get_textpage().get_text_range().split())
        for header in key_headers:  # every column of the key table on the first printed page
            assert " ".join(header.split()) in text, header
        first_page.render(scale=1.5).to_pil().save(tmp_path / "printed_page1.png")
    finally:
        document.close()
    SHARED_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    for source in (shot, first_screen, tmp_path / "printed_page1.png"):  # for a person to look at
        shutil.copyfile(source, SHARED_SCREENSHOT.parent / f"report_{source.stem}.png")
