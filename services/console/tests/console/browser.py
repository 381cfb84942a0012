"""Drives the console in headless Chromium (selenium + chromedriver) and checks what a
person sees. Run by tests/console/browser.rs, which starts the stack and writes the ids
of what it did into a JSON state file as it goes.

    browser.py CONSOLE_URL STATE_FILE SCREENSHOT_DIR

The test's "authentication proxy" is 127.0.0.1 (trusted by the console it starts): the
browser sends the identity header itself through the DevTools protocol, as a proxy in
front of the console would. Exit status 0 when every check holds.
"""
import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

URL, STATE, SHOTS = sys.argv[1:4]
HEADER = "X-Forwarded-User"


def log(msg):
    print(f"browser: {msg}", flush=True)


def fail(msg):
    log(f"FAILED: {msg}")
    try:
        driver.save_screenshot(os.path.join(STATE + ".failure.png"))
        log(f"page at failure: {driver.current_url}\n{driver.find_element(By.TAG_NAME, 'main').text[:3000]}")
    except Exception:  # noqa: BLE001 - best effort
        pass
    driver.quit()
    sys.exit(1)


def check(ok, msg):
    if not ok:
        fail(msg)


options = Options()
options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,1100", "--hide-scrollbars"]:
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")),
                          options=options)
driver.execute_cdp_cmd("Network.enable", {})


def as_user(user):
    headers = {HEADER: user} if user else {}
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})


def state(key, timeout=150):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(STATE) as f:
                value = json.load(f).get(key)
            if value:
                return value
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    fail(f"the test never wrote {key}")


def text(css):
    # The live section is swapped on every event: an element found a moment ago may be
    # gone by the time its text is read, so read again.
    for _ in range(10):
        try:
            found = driver.find_elements(By.CSS_SELECTOR, css)
            return found[0].text if found else ""
        except StaleElementReferenceException:
            time.sleep(0.1)
    return ""


def wait(cond, what, timeout=30):
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda _d: cond())
    except Exception:  # noqa: BLE001 - reported as the check that failed
        fail(what)


def shot(name):
    driver.save_screenshot(os.path.join(SHOTS, name))
    log(f"screenshot {name}")


def click(label):
    for b in driver.find_elements(By.CSS_SELECTOR, "#actions button"):
        if b.text == label:
            check(b.is_enabled(), f"the {label} button is disabled")
            b.click()
            return
    fail(f"no {label} button")


as_user(None)

# 1. The canary's weight moves on the page, without a reload.
canary = state("canary")
driver.get(f"{URL}/rollouts/{canary}")
wait(lambda: text("#live-state") == "live: on", "the page never went live")
driver.execute_script("window.__notReloaded = true;")
weights, shot_taken = [], False
deadline = time.time() + 90
while time.time() < deadline:
    w = text("#weight")
    if w and (not weights or weights[-1] != w):
        weights.append(w)
        log(f"weight on the page: {w}")
    if w == "50%" and not shot_taken:
        shot("rollout-canary.png")
        shot_taken = True
    if w == "100%" and "succeeded" in text("#live"):
        break
    time.sleep(0.2)
check(driver.execute_script("return window.__notReloaded === true;"), "the page was reloaded")
check(len(weights) >= 2 and weights[-1] == "100%", f"the weight did not move to 100%: {weights}")
check(len(driver.find_elements(By.CSS_SELECTOR, "#traffic circle")) >= 3, "no traffic chart")
if not shot_taken:
    shot("rollout-canary.png")

# 2. The aborted canary shows its evidence.
aborted = state("aborted")
driver.get(f"{URL}/rollouts/{aborted}")
wait(lambda: "aborted" in text("#live"), "the rollout does not say aborted")
wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".evidence tr")) >= 2, "no evidence table")
evidence = text(".analysis")
check("fail" in evidence, f"the evidence shows no failing metric: {evidence}")
check("p-value" in evidence and "baseline" in evidence, "the evidence lacks canary against baseline")
wait(lambda: text("#weight") == "0%", f"weight after the abort: {text('#weight')}")
shot("rollout-aborted.png")

# 3. The incident's timeline; hostile text shown as text; acknowledged from the page.
incident = state("incident")
as_user("bob")
driver.get(f"{URL}/incidents/{incident}")
wait(lambda: "opened" in text("#timeline"), "no timeline")
check(driver.title != "pwned", "a script from the incident's title ran")
check(not driver.find_elements(By.CSS_SELECTOR, "main img, main script"), "hostile markup became elements")
check("<script>document.title" in text("h1"), "the hostile title is not shown as text")
check(text("#user") == "bob", "not signed in as bob")
click("acknowledge")
wait(lambda: "acknowledged" in text("#timeline"), "the acknowledgement is not in the timeline")
check("bob" in text("#timeline"), "the timeline does not say who acknowledged")
shot("incident.png")

# 4. The requester may not approve; another operator approves from the page.
plan = state("plan")
as_user(None)
driver.get(f"{URL}/plans/{plan}")
buttons = driver.find_elements(By.CSS_SELECTOR, "#actions button")
check(buttons and all(not b.is_enabled() for b in buttons), "read-only actions are not disabled")
as_user("alice")
driver.get(f"{URL}/plans/{plan}")
click("approve")
wait(lambda: "may not approve" in text("#error"), "the requester's approval was not refused")
shot("approval-refused.png")
as_user("bob")
driver.get(f"{URL}/plans/{plan}")
click("approve")
wait(lambda: "approved by bob" in text("#decisions"), "bob's approval is not shown")
shot("plan-approved.png")

# 5. Unknown ids: a 404 page. The overview, SLOs and DORA pages render.
as_user(None)
driver.get(f"{URL}/incidents/00000000-0000-0000-0000-000000000000")
check("not found" in text("#error"), "no not-found page")
driver.get(f"{URL}/")
wait(lambda: "toronto-deployer" in text("#health"), "no service health")
shot("overview.png")
driver.get(f"{URL}/slos")
wait(lambda: "budget left" in text("#live"), "no SLO status")
shot("slos.png")
driver.get(f"{URL}/dora")
wait(lambda: "shop" in text("#dora"), "no DORA figures")
shot("dora.png")
log("every check passed")
driver.quit()
