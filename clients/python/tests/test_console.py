"""The node's web console in a real browser (Debian's Chromium, driven by
Selenium through Debian's chromedriver): an individual grants and revokes
and a researcher's count follows; a holder approves a held result and the
researcher fetches it; hostile text shows as text; a forged form changes
nothing. Screenshots of the three role views go to docs/ (set
KEXIN_SCREENSHOTS=0 to skip writing them)."""

import datetime
import http.client
import json
import os
import re
import ssl
import subprocess
import tomllib
import urllib.parse
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from kexin_client import TAGS, load_key, sign

from conftest import Space, make_space, stop_node

HOSTILE = '<script>window.__pwned=1</script><b>审核</b>'
DOCS = Path(__file__).resolve().parents[3] / "docs"
COUNT = "SELECT count(*) AS n FROM patients"


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    sp = make_space(tmp_path_factory.mktemp("console"))
    policy = sp.dir / "space.toml"
    text = policy.read_text()
    anchor = '[scene.diabetes-review]\npurpose   = "DUO:0000007"\n'
    assert anchor in text
    text = text.replace(anchor, anchor + f"purpose_zh = {json.dumps(HOSTILE)}\n")
    # Counts under the consent scene exact (not rounded to 5), so that one
    # person's grant shows as +1.
    block = text.index("[scene.diabetes-consent]")
    end = text.index("\n[", block + 1)
    text = text[:block] + text[block:end].replace("round_to = 5", "round_to = 1") + text[end:]
    policy.write_text(text)
    # h2 and h3 run too: a DP release records its charge on every node.
    peers = []
    for h in ("h2", "h3"):
        p = subprocess.Popen([sp.bin, "node", "--space", str(sp.dir), "--node", h],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in p.stdout:
            if " ready on " in line:
                break
        peers.append(p)
    proc = subprocess.Popen(
        [sp.bin, "node", "--space", str(sp.dir), "--node", "h1", "--http", "127.0.0.1:0",
         "--console", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = spki = None
    for line in proc.stdout:
        m = re.search(r" console on (https://\S+)/console \(certificate key sha256 (\S+)\)", line)
        if m:
            url, spki = m.group(1), m.group(2)
        if " ready on " in line:
            break
    assert url and spki, "the node printed no console address"
    yield sp, url, spki
    for p in [proc, *peers]:
        stop_node(p)


@pytest.fixture(scope="module")
def browser(console, tmp_path_factory):
    _, _, spki = console
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--no-first-run", "--disable-quic", "--window-size=1280,1400",
              f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
              # Pin the console's certificate by its key, as a user would
              # after checking the node's signature over that digest.
              f"--ignore-certificate-errors-spki-list={spki}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, css):
    return WebDriverWait(driver, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))


def sign_in(driver, console, member, lang="en"):
    sp, url, _ = console
    driver.delete_all_cookies()
    driver.get(f"{url}/console/lang?to={lang}")
    if driver.find_elements(By.CSS_SELECTOR, "form[data-sign-out] button"):
        click(driver, driver.find_element(By.CSS_SELECTOR, "form[data-sign-out] button"))
        wait(driver, "form[data-sign-in]")
    wait(driver, "#member").send_keys(member)
    driver.find_element(By.ID, "keyfile").send_keys(str(sp.key(member)))
    click(driver, driver.find_element(By.CSS_SELECTOR, "form[data-sign-in] button[type=submit]"))
    wait(driver, "form[data-sign-out]")
    assert member in driver.find_element(By.TAG_NAME, "header").text


def click(driver, element):
    """Click something that loads a new page, and wait until the new page
    has loaded: the old document is marked first, and the wait ends when
    a complete document without the mark is there (errors while the page
    changes are part of waiting)."""
    driver.execute_script("document.documentElement.dataset.kexinOld = '1'")
    element.click()
    WebDriverWait(driver, 60, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete'"
            " && !document.documentElement.dataset.kexinOld"))
    return wait(driver, "main")


def sign_and_send(driver):
    """On a confirmation page: sign the shown body in the browser and send
    (the script signs, then submits); the text of the page that answers."""
    return click(driver, wait(driver, "#sign-send")).text


def count(sp: Space, scene="diabetes-consent"):
    out = sp.kexin("query", "--space", str(sp.dir), "--node", "h1", "--scene", scene, "--as", "alice",
                   "--format", "json", COUNT)
    o = json.loads(out.stdout)
    assert o["status"] == "released", o
    return o["rows"][0][0]


def shot(driver, name):
    if os.environ.get("KEXIN_SCREENSHOTS", "1") != "0":
        driver.save_screenshot(str(DOCS / name))


def row_of(driver, scene):
    for tr in driver.find_elements(By.CSS_SELECTOR, "main table tbody tr"):
        tds = tr.find_elements(By.TAG_NAME, "td")
        if tds and tds[0].text == scene:
            return tr
    raise AssertionError(f"no row for {scene}")


def test_an_individual_grants_and_revokes_and_sees_the_use(console, browser):
    sp, _, _ = console
    before = count(sp)
    # In Chinese, the console's default.
    sign_in(browser, console, "p00000", lang="zh")
    row = row_of(browser, "diabetes-consent")
    assert "2型糖尿病" in row.text
    browser.find_element(By.ID, "until-diabetes-consent").send_keys("12312030")
    click(browser, row.find_element(By.CSS_SELECTOR, "button[type=submit]"))
    body = wait(browser, "pre.body").text
    assert '"action":"grant"' in body and '"until":"2030-12-31"' in body
    assert "完成" in sign_and_send(browser)
    assert count(sp) == before + 1
    browser.get(browser.current_url.split("/console")[0] + "/console/home")
    row = row_of(browser, "diabetes-consent")
    assert "已授权，至 2030-12-31" in row.text
    # The use while granted is in the timeline.
    timeline = browser.find_elements(By.CSS_SELECTOR, "main section")[1].text
    assert "使用了您的记录: diabetes-consent" in timeline and "released" in timeline
    shot(browser, "console-individual.png")
    click(browser, row.find_element(By.CSS_SELECTOR, "button.secondary"))
    assert '"action":"revoke"' in wait(browser, "pre.body").text
    assert "完成" in sign_and_send(browser)
    assert count(sp) == before
    browser.get(browser.current_url.split("/console")[0] + "/console/home")
    assert "已撤回" in row_of(browser, "diabetes-consent").text


def test_a_holder_approves_and_the_researcher_fetches(console, browser):
    sp, url, _ = console
    out = sp.kexin("query", "--space", str(sp.dir), "--node", "h1", "--scene", "diabetes-review",
                   "--as", "alice", "--format", "json",
                   "SELECT sex, count(*) AS n FROM patients GROUP BY sex")
    held = json.loads(out.stdout)
    assert held["status"] == "held", held
    hid = str(held["airlock"])
    # alice also submits a module for review.
    wasm = Path(__file__).resolve().parents[3] / "udfs" / "target" / "wasm" / "bmi.wasm"
    sub = sp.kexin("udf", "submit", "--space", str(sp.dir), "--node", "h1", "--scene", "diabetes-2027",
                   "--as", "alice", "--format", "json", str(wasm))
    assert sub.returncode == 0, sub.stdout + sub.stderr
    digest = json.loads(sub.stdout)["digest"]
    for holder in ("carol", "dave"):
        sign_in(browser, console, holder)
        queue = browser.find_elements(By.CSS_SELECTOR, "main section")[0]
        assert hid in queue.text and "diabetes-review" in queue.text
        if holder == "carol":
            assert digest in browser.find_element(By.TAG_NAME, "main").text
            shot(browser, "console-holder.png")
        for tr in queue.find_elements(By.CSS_SELECTOR, "tbody tr"):
            if tr.find_elements(By.TAG_NAME, "td")[0].text == hid:
                click(browser, tr.find_element(By.CSS_SELECTOR, "button[type=submit]"))
                break
        assert "approve" in wait(browser, "pre.body").text
        assert "Done" in sign_and_send(browser)
    # dave approves the submitted module from its row.
    browser.get(url + "/console/home")
    forms = [f for f in browser.find_elements(By.CSS_SELECTOR, "form")
             if f.find_elements(By.CSS_SELECTOR, f"input[name=digest][value='{digest}']")]
    assert forms, "the submitted module awaits approval"
    click(browser, forms[0].find_element(By.CSS_SELECTOR, "button"))
    assert digest.removeprefix("sha256:") in wait(browser, "pre.body").text
    assert "Done" in sign_and_send(browser)
    listed = sp.kexin("udf", "list", "--space", str(sp.dir), "--node", "h1", "--as", "alice",
                      "--format", "json")
    assert any(json.loads(l)["digest"] == digest for l in listed.stdout.splitlines())
    sign_in(browser, console, "alice")
    fetch = [f for f in browser.find_elements(By.CSS_SELECTOR, "form")
             if f.find_elements(By.CSS_SELECTOR, f"input[name=id][value='{hid}']")]
    assert fetch, "the released result is offered to its requester"
    click(browser, fetch[0].find_element(By.CSS_SELECTOR, "button"))
    text = sign_and_send(browser)
    assert "released" in text and "F" in text and "M" in text


def test_a_researcher_runs_a_dp_query_and_sees_intervals_and_budget(console, browser):
    sign_in(browser, console, "erin")
    for sql in ("SELECT department, count(*) AS admissions FROM admissions GROUP BY department",
                "SELECT sex, avg(age) AS mean_age FROM patients GROUP BY sex"):
        browser.get(browser.current_url.split("/console")[0] + "/console/home")
        Select(wait(browser, "#q-scene")).select_by_value("diabetes-dp")
        browser.find_element(By.ID, "q-sql").send_keys(sql)
        click(browser, browser.find_element(By.ID, "run"))
        text = sign_and_send(browser)
        assert "released" in text
        svg = browser.find_element(By.CSS_SELECTOR, "figure svg")
        # DP intervals are drawn as error bars (three lines per bar).
        assert svg.get_attribute("innerHTML").count("#e8a400") >= 6
        if sql.startswith("SELECT department"):
            shot(browser, "console-result.png")
    browser.get(browser.current_url.split("/console")[0] + "/console/home")
    wait(browser, "figure svg")
    assert "diabetes-dp" in browser.find_element(By.TAG_NAME, "main").text
    shot(browser, "console-researcher.png")


def test_hostile_text_renders_as_text_and_chinese_is_the_default(console, browser):
    sign_in(browser, console, "p00001", lang="zh")
    assert "可信数据空间控制台" in browser.title
    row = row_of(browser, "diabetes-review")
    assert HOSTILE in row.text  # shown literally
    assert browser.execute_script("return window.__pwned === undefined")
    assert "&lt;script&gt;" in browser.page_source
    assert row.find_elements(By.TAG_NAME, "b") == []


def _post(url, path, cookie, fields, origin=None):
    u = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # this test checks the form rules, not TLS
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
    if origin:
        headers["Origin"] = origin
    conn.request("POST", path, body=urllib.parse.urlencode(fields), headers=headers)
    r = conn.getresponse()
    return r.status, r.read().decode()


def test_a_forged_form_is_refused_and_changes_nothing(console, browser):
    sp, url, _ = console
    sign_in(browser, console, "p00002")
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in browser.get_cookies())
    session = next(c for c in browser.get_cookies() if c["name"] == "kexin_session")
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
    before = sp.kexin("consent", "list", "--space", str(sp.dir), "--as", "p00002", "--format", "json")
    # A well-signed grant by p00002 itself, posted without the form's token
    # (as another site's page would): refused before anything is recorded.
    who, key = load_key(str(sp.key("p00002")))
    name = tomllib.loads((sp.dir / "space.toml").read_text())["space"]["name"]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    receipt = {"space": name, "person": who, "scene": "diabetes-consent", "action": "grant",
               "purpose": "DS:E11", "modifiers": [], "requester": "org:whu-med", "until": None,
               "nonce": os.urandom(16).hex(), "time": now}
    env = sign(TAGS["consent"], receipt, key)
    for fields in ({"kind": "consent-grant", "tag": TAGS["consent"],
                    "body": json.dumps(env["body"], separators=(",", ":"), ensure_ascii=False),
                    "signature": env["signature"]},
                   {"kind": "consent-grant", "tag": TAGS["consent"], "body": "{}", "signature": "",
                    "csrf": "0" * 64}):
        status, page = _post(url, "/console/act", cookie, fields)
        assert status == 403 and "KX-REQUEST" in page and "CSRF" in page
    status, page = _post(url, "/console/prepare", cookie, {"action": "consent-grant",
                                                           "scene": "diabetes-consent"})
    assert status == 403 and "KX-REQUEST" in page
    after = sp.kexin("consent", "list", "--space", str(sp.dir), "--as", "p00002", "--format", "json")
    assert after.stdout == before.stdout


def test_a_cli_token_signs_in_once_and_the_node_key_vouches_for_the_certificate(console):
    sp, url, spki = console
    token = sp.kexin("id", "login", "--space", str(sp.dir), "--node", "h1", "--as", "bob")
    assert token.returncode == 0, token.stderr
    proof = token.stdout.strip()
    # Posted by another site's page (a login CSRF): refused unread, so the
    # token is still unused.
    status, page = _post(url, "/console/login", "", {"proof": proof}, origin="https://evil.example")
    assert status == 403 and "another origin" in page
    status, _ = _post(url, "/console/login", "", {"proof": proof}, origin=url)
    assert status == 303
    # The same token again: a replay.
    status, page = _post(url, "/console/login", "", {"proof": proof})
    assert status == 401 and "replay" in page
    # A token for another member's name, signed by this key: refused.
    status, page = _post(url, "/console/login", "", {"proof": proof[:-4] + "AAAA"})
    assert status == 401 and "KX-AUTH" in page
    # The certificate's key digest is signed by the node's registered key.
    u = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)
    conn.request("GET", "/console/certificate")
    info = json.loads(conn.getresponse().read())
    der = conn.sock.getpeercert(binary_form=True)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    cert = x509.load_der_x509_certificate(der)
    spki_der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki_der)
    import base64
    assert base64.b64encode(digest.finalize()).decode() == spki == info["spki_sha256"]
    members = sp.kexin("id", "list", "--space", str(sp.dir), "--format", "json")
    node_key = next(json.loads(l)["public_key"] for l in members.stdout.splitlines()
                    if json.loads(l)["member"] == "node-h1")
    msg = b"\0".join(p.encode() for p in (info["tag"], info["space"], "h1", spki))
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(node_key)).verify(bytes.fromhex(info["binding"]), msg)
