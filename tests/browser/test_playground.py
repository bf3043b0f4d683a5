"""The playground at ``/`` in a real headless chromium against the live stack (tiny 16x checkpoint).

One session, as a person would use it: key, prompt, size, run, progress logs, the image at the
chosen size, seed reuse, the API tab, a 422 at its field, a cancelled run, the history; then
``/docs`` and ``/redoc`` with no network. Screenshots of the finished page (desktop and phone
width) are saved under ``test-artifacts/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser.conftest import DESKTOP, PHONE, save_full_page
from tests.conftest import KEY_A, LiveStack

T = TypeVar("T")
PROMPT = "a lighthouse at dusk, seen from the playground"
# The tiny 16x checkpoint serves 512-px-area sizes: 384x640 exists as such (no snapping). Its
# 24x40 tokens of 16 px are decoded 16 per step: 60 patches.
WIDTH, HEIGHT = 384, 640
PATCHES = (WIDTH // 16) * (HEIGHT // 16) // 16


def wait_for(driver: Any, check: Callable[[Any], T], timeout_s: float = 60.0, what: str = "") -> T:
    def ignoring_stale(d: Any) -> T | bool:
        try:
            return check(d)
        except StaleElementReferenceException:
            return False

    return WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(ignoring_stale, what)  # type: ignore[no-any-return]


def field(driver: Any, name: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'#input-form [name="{name}"]')


def set_value(driver: Any, name: str, value: str) -> None:
    element = field(driver, name)
    element.clear()
    element.send_keys(value)


def text(driver: Any, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def run_button(driver: Any) -> Any:
    return driver.find_element(By.CSS_SELECTOR, '#input-form button[type="submit"]')


def log_lines(driver: Any) -> list[str]:
    return [str(item.text) for item in driver.find_elements(By.CSS_SELECTOR, "#logs li")]


def no_horizontal_overflow(driver: Any) -> bool:
    return bool(driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"))


def only_local_resources(driver: Any, origin: str) -> list[str]:
    names = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [name for name in names if not name.startswith(origin) and not name.startswith("data:")]


@pytest.fixture
def page(browser: Any, live_stack: LiveStack, artifacts_dir: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    browser.set_window_size(*DESKTOP)
    browser.get(live_stack.url + "/")
    browser.execute_script("localStorage.clear()")
    browser.get(live_stack.url + "/")
    wait_for(browser, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"), 60, "form built")
    yield browser
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        browser.save_screenshot(str(artifacts_dir / f"failed-{request.node.name}.png"))


def test_playground_run_progress_image_api_422_cancel_history(
    page: Any, live_stack: LiveStack, artifacts_dir: Path
) -> None:
    driver = page
    # The banner names the model and says plainly that the weights are random.
    banner = wait_for(driver, lambda d: text(d, "model-banner") if "tiny-16x" in text(d, "model-banner") else None)
    assert "Random tiny checkpoint" in banner and "noise" in banner and "MODEL=" in banner

    # Every input of the schema, named as the schema names it.
    for name in ("prompt", "image_size", "num_inference_steps", "guidance_scale", "seed", "num_images",
                 "enable_safety_checker", "output_format", "sync_mode"):  # fmt: skip
        assert field(driver, name) is not None
    assert field(driver, "num_inference_steps").get_attribute("min") == "10"
    assert field(driver, "num_inference_steps").get_attribute("max") == "100"
    assert field(driver, "num_inference_steps").get_attribute("value") == "25"

    # The server has keys: the key field is shown and kept in local storage.
    key_input = driver.find_element(By.ID, "api-key")
    assert key_input.is_displayed()
    key_input.send_keys(KEY_A)

    set_value(driver, "prompt", PROMPT)
    Select(field(driver, "image_size")).select_by_value("custom")
    set_value(driver, "width", str(WIDTH))
    set_value(driver, "height", str(HEIGHT))
    set_value(driver, "num_inference_steps", "10")
    run_button(driver).click()

    # Progress logs arrive from the status stream while it runs; the image loads at the chosen size.
    progress = re.compile(rf"patch \d+/{PATCHES}, 10 sampling steps each")
    wait_for(driver, lambda d: any(progress.search(line) for line in log_lines(d)), 60, "progress logs")
    image = wait_for(
        driver,
        lambda d: next(
            (i for i in d.find_elements(By.CSS_SELECTOR, "img.result-image") if d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", i)),
            None,
        ),
        90,
        "image loaded",
    )  # fmt: skip
    natural = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    assert natural == [WIDTH, HEIGHT]
    assert text(driver, "run-status") == "Done"
    assert f"{WIDTH}×{HEIGHT}" in driver.find_element(By.CSS_SELECTOR, ".image-card figcaption").text
    assert "NSFW: no" in driver.find_element(By.CSS_SELECTOR, ".image-card figcaption").text
    assert driver.find_element(By.CSS_SELECTOR, ".image-card a.download").get_attribute("download")
    assert driver.find_element(By.CSS_SELECTOR, ".image-card a.open-full").get_attribute("target") == "_blank"
    lines = log_lines(driver)
    assert "Done: 1 image(s) ready" in lines[-1], lines  # the last log comes once the image is stored

    # The seed used, and "reuse seed" puts it into the form.
    seed = text(driver, "result-seed")
    assert seed.isdigit()
    driver.find_element(By.ID, "reuse-seed").click()
    assert field(driver, "seed").get_attribute("value") == seed

    save_full_page(driver, artifacts_dir / "playground-desktop.png")
    driver.set_window_size(*PHONE)
    wait_for(driver, lambda d: d.execute_script("return window.innerWidth") <= PHONE[0], 10, "phone width")
    assert no_horizontal_overflow(driver), "the page is wider than a phone screen"
    save_full_page(driver, artifacts_dir / "playground-phone.png")
    driver.set_window_size(*DESKTOP)

    # The API tab: the three clients' code for the current input, pointed at this server.
    driver.find_element(By.ID, "tab-api").click()
    python_code, js_code, curl_code = (text(driver, f"code-{kind}") for kind in ("python", "js", "curl"))
    host = live_stack.url.split("://", 1)[1]
    assert PROMPT in python_code and f"FAL_QUEUE_RUN_HOST={host}/queue" in python_code
    assert f'"seed": {seed}' in python_code and '"enable_safety_checker": True' in python_code
    assert PROMPT in js_code and f"{live_stack.url}/api/fal/proxy" in js_code
    assert PROMPT in curl_code and f"{live_stack.url}/fal-ai/bitdance" in curl_code
    save_full_page(driver, artifacts_dir / "playground-api-tab.png")
    driver.find_element(By.ID, "tab-result").click()

    # A 422 from the server is shown at the field it names.
    set_value(driver, "num_inference_steps", "5")
    run_button(driver).click()
    error = wait_for(
        driver,
        lambda d: (e := d.find_element(By.CSS_SELECTOR, '.field-error[data-error-for="num_inference_steps"]'))
        .is_displayed() and e,
        30,
        "422 at its field",
    )  # fmt: skip
    assert "10" in error.text, error.text
    wrapper = driver.find_element(By.CSS_SELECTOR, '.field[data-field="num_inference_steps"]')
    assert "invalid" in wrapper.get_attribute("class")
    assert not driver.find_element(By.CSS_SELECTOR, '.field-error[data-error-for="prompt"]').is_displayed()
    save_full_page(driver, artifacts_dir / "playground-422.png")

    # A long run, cancelled while it generates.
    set_value(driver, "num_inference_steps", "100")
    set_value(driver, "num_images", "2")
    run_button(driver).click()
    assert wait_for(driver, lambda d: not d.find_element(By.ID, "cancel-button").get_attribute("disabled"), 30)
    wait_for(driver, lambda d: any(f"patch 1/{PATCHES}, 100 sampling steps each" in line for line in log_lines(d)), 60)
    driver.find_element(By.ID, "cancel-button").click()
    wait_for(driver, lambda d: text(d, "run-status") == "Cancelled", 60, "cancelled")
    assert not any(line.endswith("decoding to pixels") or "Done" in line for line in log_lines(driver))
    assert run_button(driver).is_enabled()

    # The history: newest first, with inputs and images.
    driver.find_element(By.ID, "tab-history").click()
    items = driver.find_elements(By.CSS_SELECTOR, "#history .history-item")
    assert len(items) == 2  # the 422 never became a request
    assert "CANCELLED" in items[0].text and "100 steps" in items[0].text
    assert "COMPLETED" in items[1].text and PROMPT in items[1].text and f"{WIDTH}×{HEIGHT}" in items[1].text
    assert items[1].find_elements(By.CSS_SELECTOR, "img.thumb")
    assert only_local_resources(driver, live_stack.url) == []


@pytest.mark.parametrize("path,rendered", [("/docs", ".swagger-ui .info .title"), ("/redoc", ".api-info h1")])
def test_api_docs_render_without_network(browser: Any, live_stack: LiveStack, path: str, rendered: str) -> None:
    browser.get(live_stack.url + path)
    title = wait_for(browser, lambda d: (e := d.find_elements(By.CSS_SELECTOR, rendered)) and e[0].text, 60, path)
    assert "BitDance" in title
    # Redoc's sidebar shows its maker's logo from a CDN: the page's CSP blocks it before any request leaves
    blocked = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    for url in only_local_resources(browser, live_stack.url):
        assert any(url in message for message in blocked), f"{path} requested {url}"
