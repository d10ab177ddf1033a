"""The pages in a real headless Chromium (Debian's, driven by Playwright): the library's filters and search, an
adapter page, a generation on the toy base showing its image and recipe, a short training that lands in the library.
Screenshots go to each test's temporary folder."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")

from web_helpers import fill_library  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from lorastack.web.app import create_app

    root = tmp_path_factory.mktemp("browser")
    fill_library(root / "registry", root / "files").close()
    app = create_app(root / "registry", default_base="toy", folders=[tmp_path_factory.getbasetemp()])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    running = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", root
    running.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, errors


def cards(page) -> list[str]:
    return page.locator(".card").evaluate_all("cards => cards.map(c => c.dataset.ref)")


def shows(page, refs: list[str]) -> None:
    """Wait until the gallery shows exactly ``refs`` (the filters reload it after a short pause)."""
    wanted = ",".join(refs)
    page.wait_for_function(f"[...document.querySelectorAll('.card')].map(c => c.dataset.ref).join() === '{wanted}'")


def test_library_filters_search_and_the_adapter_page(page, server, tmp_path):
    url, _ = server
    page.goto(url + "/")
    page.wait_for_selector(".card")
    assert cards(page) == ["me/blue@1", "me/red@2", "other/green@1"]
    thumb = page.locator('.card[data-ref="me/red@2"] .thumb')
    assert "/api/thumbnails/" in thumb.evaluate("t => t.style.backgroundImage")
    page.screenshot(path=str(tmp_path / "library.png"), full_page=True)
    page.fill("#f-q", "bluish")
    shows(page, ["me/blue@1"])
    page.fill("#f-q", "")
    page.fill("#f-lineage", "Pony")
    shows(page, ["me/red@2"])
    page.fill("#f-lineage", "")
    page.select_option("#f-family", "sd1")
    shows(page, ["me/blue@1", "me/red@2", "other/green@1"])
    page.click('.card[data-ref="me/red@2"] a.name')
    page.wait_for_selector("#adapter-ref")
    assert page.text_content("#adapter-ref") == "me/red@2"
    assert "Pony" in page.text_content("#metadata")
    assert page.locator(".images img").count() == 1
    # edit a metadata value from the page: it is saved as the user's
    page.select_option("#edit-field", "notes")
    page.fill("#edit-value", "edited in the browser")
    page.click("text=Save")
    page.wait_for_function("document.querySelector('#metadata').textContent.includes('edited in the browser')")
    page.screenshot(path=str(tmp_path / "adapter.png"), full_page=True)
    assert (tmp_path / "library.png").stat().st_size > 10_000


@pytest.mark.slow  # loads the toy base in the server and generates twice
def test_generate_shows_the_image_with_its_recipe(page, server, tmp_path):
    url, _ = server
    page.goto(url + "/#/generate?add=toy-style")
    page.wait_for_selector("#generate")
    page.fill("#steps", "8")
    page.click("#generate")
    page.wait_for_selector("figure.result img")
    page.wait_for_function("document.querySelector('figure.result img').naturalWidth > 0")
    recipe = page.locator("figure.result pre.recipe").first.text_content()
    assert '"toy-style"' in recipe and '"seed": 1' in recipe
    # a slider change makes a new image on the same seed
    page.locator("input.weight").evaluate(
        "s => { s.value = '0.3'; s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change')); }"
    )
    page.wait_for_function("document.querySelectorAll('figure.result').length === 2")
    assert '"scale": 0.3' in page.locator("figure.result pre.recipe").first.text_content()
    page.wait_for_selector('.job[data-state="done"]')
    page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)


@pytest.mark.slow  # trains a few steps on the toy base: about half a minute on 2 cores
def test_a_short_training_finishes_in_the_library(page, server, tmp_path):
    from lorastack import toy

    url, _ = server
    data = toy.write_dataset(tmp_path / "data", 4, seed=1)
    page.goto(url + "/#/train")
    page.wait_for_selector("#start-training")
    page.select_option("#trainer", "lora")
    page.fill("#train-data", str(data))
    page.fill("#train-name", "me/browser-trained")
    for option, value in (("steps", "4"), ("resolution", "64"), ("rank", "2"), ("batch_size", "2")):
        page.fill(f'[data-option="{option}"]', value)
    page.click("#start-training")
    page.wait_for_selector("#trained", timeout=300_000)
    page.screenshot(path=str(tmp_path / "train.png"), full_page=True)
    page.click("#trained")
    page.wait_for_selector("#training")
    assert page.text_content("#adapter-ref") == "me/browser-trained@1"
    page.goto(url + "/#/library")
    page.wait_for_selector('.card[data-ref="me/browser-trained@1"]')
