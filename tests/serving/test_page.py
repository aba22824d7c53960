"""The web page at / in a real headless browser (Debian's chromium driven by Selenium): load it,
upload a real photo, read the rendered predictions and compare them with the JSON API."""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
from pathlib import Path

import pytest

import adaptformer as af

from .server import client, running

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def photo(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real Imagenette photo (a church), taken out of the shared archive."""
    with tarfile.open(shared_dir / "data" / "imagenette.tar") as tar:
        member = next(m for m in tar if m.name.startswith("imagenette/val/church/"))
        out = tmp_path_factory.mktemp("photo") / Path(member.name).name
        out.write_bytes(tar.extractfile(member).read())
    return out


@pytest.fixture(scope="module")
def open_page():
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "needs Debian's chromium and chromium-driver: apt-get install -y chromium "
            "chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,760",
                "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(arg)
    drivers = []

    def open_page(url: str):
        """A browser showing ``url``. Chromium started beside CPU-bound jobs sometimes closes
        its DevTools connection on the first navigation; it gets one fresh start, and a second
        crash skips the test with the browser's message (an environment fault, not the page)."""
        from selenium.common.exceptions import WebDriverException

        for attempt in (1, 2):
            driver = webdriver.Chrome(
                options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER)
            )
            drivers.append(driver)
            try:
                driver.get(url)
                return driver
            except WebDriverException as e:
                if attempt == 2:
                    pytest.skip(f"chromium crashed twice on start: {str(e).splitlines()[0]}")

    yield open_page
    for driver in drivers:
        with contextlib.suppress(Exception):  # a crashed browser has nothing left to close
            driver.quit()


def test_page_uploads_a_photo_and_shows_top_k_per_task(registry, photo, open_page, tmp_path):
    """On the test registry, or on $ADAPTFORMER_SERVE_REGISTRY (how docs/images/serve.png was
    taken, with $ADAPTFORMER_SCREENSHOT naming the file)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = Path(os.environ.get("ADAPTFORMER_SERVE_REGISTRY", registry.root))
    names = af.TaskRegistry(root).names()
    with running(root) as server:
        browser = open_page(server.url + "/")
        wait = WebDriverWait(browser, 60)
        boxes = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[name=task]"))
        assert sorted(b.get_attribute("value") for b in boxes) == names
        if len(names) > 2:  # untick one: only the ticked tasks are asked
            next(b for b in boxes if b.get_attribute("value") == names[1]).click()
            names.remove(names[1])
        top_k = browser.find_element(By.ID, "topk")
        top_k.clear()
        top_k.send_keys("2")
        browser.find_element(By.ID, "file").send_keys(str(photo))
        browser.find_element(By.ID, "submit").click()
        cards = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".task-result"))
        shown = {
            card.get_attribute("data-task"): [
                (row.find_element(By.CLASS_NAME, "label").text,
                 float(row.find_element(By.CLASS_NAME, "prob").get_attribute("data-prob")))
                for row in card.find_elements(By.CLASS_NAME, "pred")
            ]
            for card in cards
        }  # fmt: skip
        screenshot = Path(os.environ.get("ADAPTFORMER_SCREENSHOT", tmp_path / "serve.png"))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(screenshot))
        with client(server) as http:
            api = http.post(
                "/v1/predict",
                files={"image": (photo.name, photo.read_bytes())},
                data={"tasks": ",".join(names), "top_k": "2"},
            ).json()["results"][0]["tasks"]
    assert sorted(shown) == names
    for task, rows in shown.items():
        want = api[task]["top"]
        assert [label for label, _ in rows] == [p["label"] for p in want]
        assert [p for _, p in rows] == pytest.approx([p["prob"] for p in want], abs=1e-5)
    assert screenshot.stat().st_size > 10_000  # a real rendered page, not a blank image
