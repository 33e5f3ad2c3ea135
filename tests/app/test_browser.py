"""End-to-end tests in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

Skipped, with the reason, where the browser is not installed; ``.ci/run`` installs it and
sets DISSECTJAX_REQUIRE_BROWSER=1, which turns a missing browser into a failure.
Screenshots go to $DISSECTJAX_ARTIFACTS (default: test-artifacts/ in the checkout).
"""

import os
import shutil

import numpy as np
import pytest
from conftest import CHECKPOINT, serve_in_thread
from test_server import library_ablation

from dissectjax.app import AppService, load_classifier
from dissectjax.report import Dissection

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = os.environ.get("DISSECTJAX_ARTIFACTS") or os.path.join(
    os.path.dirname(__file__), "..", "..", "test-artifacts"
)


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e .[test])"
    if not CHROMIUM or not CHROMEDRIVER:
        return "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _missing()
    if reason:
        if os.environ.get("DISSECTJAX_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests required but {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # no driver download
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> None:
    os.makedirs(ARTIFACTS, exist_ok=True)
    driver.save_screenshot(os.path.join(ARTIFACTS, name))


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def visible_cards(driver):
    from selenium.webdriver.common.by import By

    return [c for c in driver.find_elements(By.CSS_SELECTOR, ".card") if c.is_displayed()]


def test_report_opens_from_file_and_filters(browser, scene_dissection):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out, _ = scene_dissection
    dissection = Dissection.load(out)
    browser.get("file://" + os.path.abspath(os.path.join(out, "report.html")))
    assert console_errors(browser) == []
    units = sum(r.units for r in dissection.layers.values())
    assert len(visible_cards(browser)) == units
    assert browser.find_element(By.ID, "shown").text == f"{units} units shown"
    screenshot(browser, "report.png")

    # search: exactly the units whose label contains the text, in every layer
    r = dissection.layer("conv5")
    concept = r.concepts.names[int(r.labels.label[int(np.argmax(r.labels.score))])]
    browser.find_element(By.ID, "search").send_keys(concept)
    shown = visible_cards(browser)
    expected = sum(concept in res.concepts.names[c] for res in dissection.layers.values() for c in res.labels.label)
    assert len(shown) == expected > 0
    assert all(concept in card.get_attribute("data-label") for card in shown)
    screenshot(browser, "report-search.png")

    # sort by IoU: visible cards of each layer in non-increasing IoU
    browser.find_element(By.ID, "search").clear()
    Select(browser.find_element(By.ID, "sort")).select_by_value("iou")
    for layer in dissection.layers:
        cards = browser.find_elements(By.CSS_SELECTOR, f'.card[data-layer="{layer}"]')
        ious = [float(c.get_attribute("data-iou")) for c in cards]
        assert ious == sorted(ious, reverse=True)
        assert ious[0] == pytest.approx(dissection.layer(layer).labels.score.max(), abs=1e-6)

    # sort by label, then filter by category
    Select(browser.find_element(By.ID, "sort")).select_by_value("label")
    labels = [
        c.get_attribute("data-label") for c in browser.find_elements(By.CSS_SELECTOR, '.card[data-layer="conv5"]')
    ]
    assert labels == sorted(labels)
    Select(browser.find_element(By.ID, "category")).select_by_value("part")
    shown = visible_cards(browser)
    assert shown and all(c.get_attribute("data-category") == "part" for c in shown)
    assert console_errors(browser) == []


@pytest.fixture(scope="module")
def app_url(scene_dissection):
    service = AppService(Dissection.load(scene_dissection[0]), load_classifier(CHECKPOINT, "synthetic", 150))
    server, thread = serve_in_thread(service)
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}/", service
    server.shutdown()
    thread.join(10)


def ablate_in_the_page(browser, url: str, service, layer: str, units: list[int]) -> None:
    """Ticks ``units`` in the app, presses ablate, and checks the table against the library."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    console_errors(browser)  # drains what earlier pages logged
    browser.get(url)
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    for u in units:
        browser.find_element(By.ID, f"unit-{u}").click()
    assert browser.find_element(By.ID, "selected").text == f"{len(units)} selected"
    browser.find_element(By.ID, "ablate").click()
    WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.ID, "ablation-table"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#ablation-table tbody tr")
    cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    accuracy, balanced = library_ablation(service.classifier, layer, units)
    assert [c[0] for c in cells] == list(service.classifier.classes)
    shown = lambda x: "n/a" if np.isnan(x) else f"{x:.3f}"
    for k, c in enumerate(cells):
        assert c[1:3] == [shown(accuracy[0, k]), shown(accuracy[1, k])]
        assert c[4:6] == [shown(balanced[0, k]), shown(balanced[1, k])]
        change = accuracy[1, k] - accuracy[0, k]
        assert float(c[3]) == pytest.approx(change, abs=5e-4)


def test_app_ablation_table_equals_the_library(browser, app_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, service = app_url
    ablate_in_the_page(browser, url, service, "conv5", [2, 9, 40, 77])

    browser.find_element(By.ID, "concept").send_keys("triangle")
    browser.find_element(By.ID, "find").click()
    WebDriverWait(browser, 30).until(lambda d: "detectors of triangle" in d.find_element(By.ID, "concept-result").text)
    browser.find_element(By.ID, "show-unit").click()
    WebDriverWait(browser, 60).until(lambda d: "unit 0:" in d.find_element(By.ID, "unit-result").text)
    screenshot(browser, "app.png")
    browser.execute_script("document.getElementById('ablate-panel').scrollIntoView()")
    screenshot(browser, "app-ablation.png")
    assert console_errors(browser) == []


def test_app_shows_errors_from_the_api(browser, app_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = app_url
    browser.get(url)
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    browser.find_element(By.ID, "unit-number").clear()
    browser.find_element(By.ID, "unit-number").send_keys("5000")
    browser.find_element(By.ID, "show-unit").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#unit-result .error"))
    assert "out of range" in browser.find_element(By.ID, "unit-result").text


def test_app_ablates_a_converted_resnet18_on_class_folders(browser, tmp_path):
    """A torchvision-layout ResNet-18 (converted), dissected at layer4, ablated live on a
    20-class folder of JPEG files: the page's table equals the library's numbers."""
    from conftest import class_folders, convert_resnet18, random_broden

    from dissectjax.cli import main

    checkpoint = convert_resnet18(tmp_path, 0, classes=20, size=64)
    random_broden(tmp_path / "probe", seed=2, n=12, image_size=(64, 64))
    out = tmp_path / "dissection"
    assert main(["dissect", "--dataset", str(tmp_path / "probe"), "--checkpoint", checkpoint, "--layers", "layer4",
                 "--out", str(out), "--quantile", "0.05", "--quiet"]) == 0  # fmt: skip
    class_folders(tmp_path / "images", classes=20, per_class=4)
    service = AppService(Dissection.load(str(out)), load_classifier(checkpoint, str(tmp_path / "images"), 40))
    assert len(service.classifier.classes) == 20 and len(service.classifier.labels) == 40
    server, thread = serve_in_thread(service)
    try:
        host, port = server.server_address[:2]
        ablate_in_the_page(browser, f"http://{host}:{port}/", service, "layer4", [1, 100, 511])
        assert console_errors(browser) == []
    finally:
        server.shutdown()
        thread.join(10)
