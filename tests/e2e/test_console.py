"""The memory console in a real Chromium (Debian's chromium and chromium-driver, driven by
Selenium) against the real system: a fact added in the page trains into a module, the
page's job bar reaches published, the page's question is answered by that module with
the routing decision shown; the fact edited in the page is retrained and the question
then gets the new value from the module's next version; cancelling from the jobs list
stops an add job and shows the gateway's refusal for the edit job; and the fact deleted
in the page is gone. A screenshot of each view is saved under the test's tmp_path
(docs/console/ holds one such set)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException as StaleElementReference
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

from loramem.datasets import PhoneEntry, phonebook
from tests.e2e.support import JOB_TIMEOUT_S, System

TENANT = "console"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    driver_path, chromium = shutil.which("chromedriver"), shutil.which("chromium")
    assert driver_path and chromium, (
        "install Debian's chromium and chromium-driver (scripts/test-services.sh does, as root)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1100,1000")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """The page, read through JavaScript in one step each: its views redraw while they
    poll, which would leave a Selenium element handle stale between two reads."""

    def __init__(self, driver: webdriver.Chrome, shots: Path) -> None:
        self.driver, self.shots = driver, shots

    def text(self, css: str) -> str | None:
        script = "const e = document.querySelector(arguments[0]); return e && e.innerText;"
        return self.driver.execute_script(script, css)  # type: ignore[no-any-return]

    def attr(self, css: str, name: str) -> str | None:
        script = (
            "const e = document.querySelector(arguments[0]);"
            "return e && e.getAttribute(arguments[1]);"
        )
        return self.driver.execute_script(script, css, name)  # type: ignore[no-any-return]

    def fact_rows(self) -> dict[str, str]:
        script = (
            "return Array.from(document.querySelectorAll('#facts tbody tr'))"
            ".map(r => [r.dataset.factId, r.cells[0].innerText]);"
        )
        return dict(self.driver.execute_script(script))

    def wait(self, timeout_s: float = 60) -> WebDriverWait:
        return WebDriverWait(
            self.driver, timeout_s, poll_frequency=0.5, ignored_exceptions=[StaleElementReference]
        )

    def click(self, css: str) -> None:
        self.wait().until(lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True)

    def type(self, css: str, text: str, clear: bool = False) -> None:
        field = self.driver.find_element(By.CSS_SELECTOR, css)  # a form: never redrawn
        if clear:
            field.clear()
        field.send_keys(text)

    def job_ids(self) -> list[str]:
        script = "return Array.from(document.querySelectorAll('.job')).map(c => c.dataset.jobId);"
        return list(self.driver.execute_script(script))

    def new_job(self, known: set[str]) -> str:
        """The id of the first job card on the jobs view that is not in `known`."""
        self.wait().until(lambda _: set(self.job_ids()) - known)
        return next(j for j in self.job_ids() if j not in known)

    def open(self, view: str) -> None:
        self.click(f'nav a[data-view="{view}"]')
        self.wait().until(ready.visibility_of_element_located((By.ID, f"view-{view}")))

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(self.shots / f"{name}.png"))

    def wait_job(self, job_id: str, until: tuple[str, ...]) -> str | None:
        card = f'.job[data-job-id="{job_id}"]'
        self.wait(JOB_TIMEOUT_S).until(lambda _: self.attr(card, "data-status") in until)
        return self.attr(card, "data-status")


def test_the_console_adds_trains_answers_edits_cancels_and_deletes_a_fact(
    system: System, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    person, other, spare = phonebook(system.settings.data_dir, 3)
    edited = PhoneEntry(person.name, other.phone)  # the same person, a new number
    page = Console(browser, tmp_path)
    browser.get(str(system.gateway.base_url).rstrip("/") + "/console/")
    page.type("#tenant", TENANT)  # auth is off in the e2e system: no key
    page.click("#login button[type=submit]")

    page.open("facts")
    page.type("#new-facts", person.fact)
    page.click("#add-facts button[type=submit]")
    page.wait().until(lambda _: person.fact in page.fact_rows().values())
    [fact_id] = page.fact_rows()
    page.shot("facts")

    page.open("jobs")
    page.wait().until(lambda _: page.attr(".job", "data-job-id"))
    job_id = page.attr(".job", "data-job-id") or ""
    card = f'.job[data-job-id="{job_id}"]'
    page.wait_job(job_id, ("training", "published"))
    page.shot("jobs-training")
    assert page.wait_job(job_id, ("published", "failed")) == "published", page.text(card)
    assert page.attr(f"{card} progress", "value") == "100"
    module = system.wait_job(job_id, tenant=TENANT)["module"]
    page.shot("jobs")

    page.open("modules")
    row = f'#modules tr[data-module="{module}"]'
    page.wait().until(lambda _: f"{module}@v1" in (page.text(row) or ""))

    page.open("ask")
    page.type("#question", person.question)
    page.click("#ask button[type=submit]")
    page.wait(300).until(lambda _: page.attr("#answer", "data-state") != "streaming")
    assert page.attr("#answer", "data-state") == "done", page.text("#status")
    assert person.phone in (page.text("#answer") or "")
    assert page.text("#d-served") == f"{module}@v1"
    assert page.text("#d-outcome") == "module" and page.text("#d-mode") == "lora"
    assert "threshold" in (page.text("#d-score") or "")
    assert (page.text("#d-candidates tr.chosen") or "").startswith(module)
    assert person.fact in (page.text("#d-facts tr.chosen") or "")
    page.shot("ask")

    page.open("hits")
    page.wait().until(lambda _: page.attr(f'#chart polyline[data-module="{module}"]', "points"))
    assert f"{module}: 1" in (page.text("#legend") or "")
    page.shot("hits")
    page.open("modules")
    page.wait().until(lambda _: "100%" in (page.text(row) or ""))  # its one hit of one request
    page.shot("modules")

    page.open("facts")  # edit the fact in the page
    fact_row = f'#facts tr[data-fact-id="{fact_id}"]'
    page.wait().until(lambda _: fact_id in page.fact_rows())
    page.click(f"{fact_row} button.edit")
    page.type(f"{fact_row} input.edit-text", edited.fact, clear=True)
    page.shot("facts-edit")
    page.click(f"{fact_row} button.save")
    page.wait().until(lambda _: page.fact_rows().get(fact_id) == edited.fact)
    assert "changed" in (page.text("#status") or "")

    page.open("jobs")  # the edit's job cannot be cancelled: the page shows the refusal
    editing = page.new_job({job_id})
    assert (page.text(f'.job[data-job-id="{editing}"] .title') or "").startswith("edit")
    page.click(f'.job[data-job-id="{editing}"] button.cancel')
    refusal = f'.job[data-job-id="{editing}"] .refusal'
    page.wait().until(lambda _: page.text(refusal))
    assert "cannot be cancelled" in (page.text(refusal) or ""), page.text(refusal)

    page.open("facts")  # an add job, queued behind the edit's, is cancelled from the list
    page.type("#new-facts", spare.fact)
    page.type("#add-module", "scratch")
    page.click("#add-facts button[type=submit]")
    page.wait().until(lambda _: spare.fact in page.fact_rows().values())
    page.open("jobs")
    adding = page.new_job({job_id, editing})
    page.click(f'.job[data-job-id="{adding}"] button.cancel')
    assert page.wait_job(adding, ("cancelled", "published", "failed")) == "cancelled"
    assert "cancelled" in (page.text("#status") or "")
    assert page.attr(f'.job[data-job-id="{adding}"] button.cancel', "class") is None  # finished
    page.shot("jobs-cancel")
    assert page.wait_job(editing, ("published", "failed")) == "published"
    assert page.attr(f'.job[data-job-id="{editing}"] progress', "value") == "100"
    scratch = system.gateway.get("/modules", headers={"x-loramem-tenant": TENANT}).json()
    assert [m["served_name"] for m in scratch if m["name"] == "scratch"] == [None]

    page.open("modules")
    page.wait().until(lambda _: f"{module}@v2" in (page.text(row) or ""))
    page.open("ask")  # the new number, from the module's new version
    page.type("#question", person.question, clear=True)
    page.click("#ask button[type=submit]")
    page.wait(300).until(lambda _: page.attr("#answer", "data-state") != "streaming")
    assert page.attr("#answer", "data-state") == "done", page.text("#status")
    assert edited.phone in (page.text("#answer") or ""), page.text("#answer")
    assert page.text("#d-served") == f"{module}@v2"
    assert edited.fact in (page.text("#d-facts tr.chosen") or "")
    page.shot("ask-edited")

    page.open("facts")
    page.wait().until(lambda _: fact_id in page.fact_rows())
    page.click(f"{fact_row} button.delete")
    page.wait().until(lambda _: fact_id not in page.fact_rows())
    assert "deleted" in (page.text("#status") or "")
    facts = system.gateway.get("/facts", headers={"x-loramem-tenant": TENANT}).json()
    assert fact_id not in {f["id"] for f in facts}

    page.open("jobs")  # the delete's job retires the module, which held only this fact
    deleting = page.new_job({job_id, editing, adding})
    assert page.wait_job(deleting, ("published", "failed")) == "published"
    page.open("modules")
    page.wait().until(lambda _: "not published" in (page.text(row) or ""))
