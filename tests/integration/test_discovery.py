"""Key discovery (issue 16) against real peers on loopback: a Web Key
Directory and a VKS keyserver over HTTPS (Python's http.server, a test CA),
dnsmasq naming the domains, keys made by gpg, mail decrypted by Sequoia.
`sealpost keys lookup` files what it finds; the ingress encrypts to it."""
import itertools
import json
import smtplib
import subprocess
import time
import urllib.request

import pytest
import redis as redis_py

import threading

from conftest import BIN, Sealpost, base_config, free_port, start_dnsmasq, wait_for
from pgp import Person, gpg, recipient_key_ids
from test_gateway import check_pgp_mime, message
from wkd import Pki, WebServer, wkd_hash, wks_client_url

# Each test's WKD server listens on an address of its own, 127.0.1.1 to
# 127.0.1.200 in turn: in two full runs out of four, a test found port 443
# of the one shared address still taken (EADDRINUSE, SO_REUSEADDR set)
# after the test before had closed its server, for the rest of the module.
WEBS = itertools.cycle(f"127.0.1.{i}" for i in range(1, 201))
HOSTS = ["openpgpkey.example.test", "example.test", "direct.test", "nowkd.test", "keys.test"]


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    base = tmp_path_factory.mktemp("keys")
    p = {name: Person(base, name, f"{name}@{domain}") for name, domain in
         (("carol", "example.test"), ("dave", "direct.test"), ("erin", "example.test"),
          ("mallory", "example.test"), ("frank", "nowkd.test"), ("grace", "example.test"))}
    p["old"] = Person(base, "old", "old@example.test", expire="seconds=2")
    p["revoked"] = Person(base, "revoked", "revoked@example.test")
    p["revoked"].revoke()
    return p


def binary(person):
    return gpg(person.home, "--export", person.fpr).stdout


@pytest.fixture
def web(tmp_path):
    server = WebServer(next(WEBS), Pki(tmp_path / "pki", HOSTS))
    yield server
    server.close()


@pytest.fixture
def dns(web):
    port = free_port()
    records = [f"--host-record={h},{web.addr}" for h in HOSTS]
    proc = start_dnsmasq(port, records)
    yield port
    proc.terminate()
    proc.wait()


@pytest.fixture
def discovery(web, dns):
    """The stack's [discovery] pointed at the test DNS and CA."""
    return f"""
[discovery]
dns_servers = 127.0.0.1:{dns}
ca_file = {web.ca}
timeout_ms = 2000
"""


def keys(stack, extra, *args):
    path = stack.tmp / "keys.conf"
    path.write_text(stack.config(extra))
    return subprocess.run([BIN, "keys", *args, "-c", str(path)], capture_output=True,
                          timeout=60, text=True)


def listed(stack, extra):
    r = keys(stack, extra, "list", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_lookup_files_a_key_published_only_by_wkd_and_mail_is_encrypted_to_it(
        stack, web, discovery, people):
    carol = people["carol"]
    host, path = web.publish_wkd(carol.email, binary(carol))
    # our URL is GnuPG's, letter for letter
    assert wks_client_url(carol.email) == f"https://{host}{path}"
    r = keys(stack, discovery, "lookup", carol.email)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{carol.email} {carol.fpr} source wkd trust discovered" in r.stdout
    assert f"from https://{host}{path}: filed" in r.stdout
    entry = [k for k in listed(stack, discovery) if k["fingerprint"] == carol.fpr]
    assert len(entry) == 1, listed(stack, discovery)
    assert entry[0]["source"] == "wkd" and entry[0]["trust"] == "discovered"
    assert entry[0]["addresses"] == [carol.email]
    assert abs(entry[0]["checked"] - time.time()) < 60
    text = keys(stack, discovery, "list").stdout
    assert f"{carol.fpr} never {carol.email} (source wkd, trust discovered" in text

    stack.ingress()
    stack.worker()
    data = message(carol.email)
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as c:
        c.sendmail("sender@origin.test", [carol.email], data)
    wait_for(lambda: stack.sink.messages, what="delivery")
    armor = check_pgp_mime(stack.sink.messages[0][2])
    plain = carol.decrypt_with_sq(armor)  # not GnuPG: Sequoia reads what we made
    assert b"Quarterly figures" in plain


def test_direct_method_when_there_is_no_openpgpkey_host(stack, web, discovery, people):
    dave = people["dave"]
    host, path = web.publish_wkd(dave.email, binary(dave), method="direct")
    assert wks_client_url(dave.email).replace("openpgpkey.", "").replace(
        "/direct.test/hu/", "/hu/") == f"https://{host}{path}"
    r = keys(stack, discovery, "lookup", dave.email)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{dave.fpr} source wkd" in r.stdout and f"https://direct.test{path}" in r.stdout


def test_a_domain_with_wkd_is_not_asked_by_the_direct_method(stack, web, discovery, people):
    """openpgpkey.example.test exists: its 404 is the answer (draft §3.1)."""
    erin = people["erin"]
    web.publish_wkd(erin.email, binary(erin), method="direct")
    r = keys(stack, discovery, "lookup", erin.email)
    assert r.returncode == 1
    assert "not_found" in r.stdout and "wkd advanced: HTTP 404" in r.stdout
    assert all(host == "openpgpkey.example.test" for host, _ in web.key_requests())


def test_a_key_without_the_address_in_a_user_id_is_refused(stack, web, discovery, people):
    web.publish_wkd(people["grace"].email, binary(people["mallory"]))
    r = keys(stack, discovery, "lookup", people["grace"].email)
    assert r.returncode == 1
    assert "refused" in r.stdout and "no valid user ID for the address" in r.stdout
    assert listed(stack, discovery) == []


@pytest.mark.parametrize("who,why", [("revoked", "revoked"), ("old", "expired")])
def test_a_revoked_or_expired_key_is_refused(stack, web, discovery, people, who, why):
    person = people[who]
    if who == "old":
        wait_for(lambda: time.time() > person_expiry(person), timeout=10, what="expiry")
    web.publish_wkd(person.email, binary(person))
    r = keys(stack, discovery, "lookup", person.email)
    assert r.returncode == 1, r.stdout
    assert f"is {why}" in r.stdout
    assert listed(stack, discovery) == []


def person_expiry(person):
    out = gpg(person.home, "--with-colons", "--list-keys", person.fpr).stdout.decode()
    return int(next(line.split(":")[6] for line in out.splitlines() if line.startswith("pub:")))


def test_a_vks_keyserver_after_wkd(stack, web, discovery, people):
    frank = people["frank"]
    with web.lock:
        web.files[("keys.test", "/vks/v1/by-email/frank%40nowkd.test")] = binary(frank)
    extra = discovery + "keyserver = https://keys.test\n"
    r = keys(stack, extra, "lookup", frank.email)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{frank.fpr} source keyserver" in r.stdout
    hosts = [h for h, _ in web.key_requests()]
    assert hosts == ["nowkd.test", "keys.test"]  # no openpgpkey.nowkd.test: direct, then VKS
    assert [k["source"] for k in listed(stack, extra)] == ["keyserver"]


def test_an_operator_key_is_never_replaced(stack, web, discovery, people):
    carol = people["carol"]
    path = stack.tmp / "carol.asc"
    path.write_bytes(carol.public())
    assert keys(stack, discovery, "import", str(path)).returncode == 0
    web.publish_wkd(carol.email, binary(carol))
    r = keys(stack, discovery, "lookup", carol.email)
    assert r.returncode == 0
    assert f"not filed, the directory has the operator's key {carol.fpr}" in r.stdout
    assert all(k["trust"] == "imported" for k in listed(stack, discovery))


def test_a_slow_server_is_given_up_at_the_timeout(stack, web, discovery, people):
    carol = people["carol"]
    host, path = web.publish_wkd(carol.email, binary(carol))
    with web.lock:
        web.files[(host, path)] = (200, binary(carol), 5)
    start = time.monotonic()
    r = keys(stack, discovery.replace("timeout_ms = 2000", "timeout_ms = 700"), "lookup",
             carol.email)
    took = time.monotonic() - start
    assert r.returncode == 1
    assert "timeout" in r.stdout and "no answer within 700 ms" in r.stdout
    assert took < 4, took  # the CLI's own start-up included


def test_a_forged_discovered_key_is_not_used(stack, web, discovery, people):
    """A Redis writer swaps the filed key for mallory's: its tag no longer
    holds, so the ingress ignores it (mail goes as if there were no key)."""
    carol, mallory = people["carol"], people["mallory"]
    web.publish_wkd(carol.email, binary(carol))
    assert keys(stack, discovery, "lookup", carol.email).returncode == 0
    r = redis_py.Redis(port=stack.redis.port)
    key = f"{{sealpost:crypto}}:disc:{carol.email}"
    r.hset(key, mapping={"fpr": mallory.fpr, "data": mallory.public()})
    ingress = stack.ingress()
    stack.worker()
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as c:
        c.sendmail("sender@origin.test", [carol.email], message(carol.email))
    wait_for(lambda: stack.sink.messages, what="delivery")
    content = stack.sink.messages[0][2]
    assert b"BEGIN PGP MESSAGE" not in content
    assert "event=discovered_key_rejected" in ingress.read_log()


# ---- look-ups by the ingress at RCPT TO ----

def other_routes(stack):
    """The sink for the test domains base_config does not route."""
    return f"\n[routes]\nnowkd.test = 127.0.0.1:{stack.sink.port}\n"


def at_rcpt(stack, discovery, extra=""):
    """Discovery on in the ingress, with routes for the other test domains."""
    return discovery + "enabled = yes\n" + extra + other_routes(stack)


def rcpt_codes(port, rcpts, sender="sender@origin.test", data=None):
    """Each RCPT's code (and the time it took), then the message sent when
    every one was accepted."""
    codes = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo()
        c.mail(sender)
        for r in rcpts:
            start = time.monotonic()
            code, text = c.rcpt(r)
            codes.append((code, text.decode(), time.monotonic() - start))
        if data and all(code == 250 for code, _, _ in codes):
            assert c.data(data)[0] == 250
    return codes


def second_ingress(stack, extra):
    port = free_port()
    p = Sealpost(stack.tmp, "ingress2", base_config(stack.redis.port, port, stack.sink.port,
                                                     extra), "ingress").start(port)
    stack.procs.append(p)
    wait_for(lambda: "event=queue_ready" in p.read_log(), what="the second ingress")
    return p, port


def test_rcpt_finds_the_key_and_another_ingress_uses_it_without_a_lookup(
        stack, web, discovery, people):
    carol = people["carol"]
    web.publish_wkd(carol.email, binary(carol))
    extra = at_rcpt(stack, discovery)
    ingress = stack.ingress(extra)
    stack.worker()
    assert rcpt_codes(stack.smtp_port, [carol.email], data=message(carol.email))[0][0] == 250
    wait_for(lambda: stack.sink.messages, what="delivery")
    assert b"Quarterly figures" in carol.decrypt_with_sq(
        check_pgp_mime(stack.sink.messages[0][2]))
    assert len(web.key_requests()) == 1
    assert "event=key_discovered" in ingress.read_log()
    entry = listed(stack, discovery)
    assert [(k["fingerprint"], k["source"], k["trust"]) for k in entry] == [
        (carol.fpr, "wkd", "discovered")]
    # a second ingress: the key filed by the first, no look-up of its own
    _, port2 = second_ingress(stack, extra)
    assert rcpt_codes(port2, [carol.email], data=message(carol.email))[0][0] == 250
    wait_for(lambda: len(stack.sink.messages) == 2, what="the second delivery")
    assert b"Quarterly figures" in carol.decrypt_with_sq(
        check_pgp_mime(stack.sink.messages[1][2]))
    assert len(web.key_requests()) == 1


def test_a_burst_to_a_domain_without_wkd_costs_one_lookup(stack, web, discovery):
    extra = at_rcpt(stack, discovery)
    stack.ingress(extra)
    stack.worker(other_routes(stack))
    rcpts = [f"user{i}@nowkd.test" for i in range(6)]
    for r in rcpts:  # one message each, one after the other
        assert rcpt_codes(stack.smtp_port, [r], data=message(r))[0][0] == 250
    wait_for(lambda: len(stack.sink.messages) == 6, what="six deliveries")
    assert all(b"BEGIN PGP" not in m[2] for m in stack.sink.messages)
    with web.lock:
        asked = list(web.requests)
    # the direct method (no openpgpkey.nowkd.test), its 404, the policy file's 404
    assert asked == [("nowkd.test", f"/.well-known/openpgpkey/hu/{wkd_hash('user0')}?l=user0"),
                     ("nowkd.test", "/.well-known/openpgpkey/policy")]
    r = redis_py.Redis(port=stack.redis.port)
    assert r.exists("{sealpost:crypto}:dmiss:nowkd.test")
    assert 3500 < r.ttl("{sealpost:crypto}:dmiss:nowkd.test") <= 3600  # negative_ttl


def test_a_404_is_cached_for_the_address(stack, web, discovery):
    stack.ingress(at_rcpt(stack, discovery))
    for _ in range(3):
        assert rcpt_codes(stack.smtp_port, ["nobody@example.test"])[0][0] == 250
    assert [h for h, _ in web.key_requests()] == ["openpgpkey.example.test"]
    r = redis_py.Redis(port=stack.redis.port)
    assert r.get("{sealpost:crypto}:miss:nobody@example.test").split()[1] == b"none"


def test_parallel_rcpts_for_one_address_share_one_lookup(stack, web, discovery, people):
    carol = people["carol"]
    host, path = web.publish_wkd(carol.email, binary(carol))
    with web.lock:
        web.files[(host, path)] = (200, binary(carol), 0.5)
    stack.ingress(at_rcpt(stack, discovery))
    stack.worker()
    results = []

    def one():
        results.append(rcpt_codes(stack.smtp_port, [carol.email], data=message(carol.email)))

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r[0][0] for r in results] == [250] * 5
    wait_for(lambda: len(stack.sink.messages) == 5, what="five deliveries")
    assert all(b"multipart/encrypted" in m[2] for m in stack.sink.messages)
    assert len(web.key_requests()) == 1


@pytest.mark.parametrize("policy", ["opportunistic", "required"])
def test_a_slow_server_never_holds_the_rcpt_past_the_timeout(stack, web, discovery, people,
                                                             policy):
    carol = people["carol"]
    host, path = web.publish_wkd(carol.email, binary(carol))
    with web.lock:
        web.files[(host, path)] = (200, binary(carol), 3)
    extra = at_rcpt(stack, discovery.replace("timeout_ms = 2000", "timeout_ms = 600"))
    stack.ingress(extra)
    stack.worker()
    if policy == "required":
        assert keys(stack, extra, "policy", "set", "example.test", "required").returncode == 0
        time.sleep(0.5)  # the nodes see the policy within one poll (250 ms)
    (code, text, took), = rcpt_codes(stack.smtp_port, [carol.email], data=message(carol.email))
    assert took < 0.6 + 0.5, took
    if policy == "opportunistic":
        assert code == 250
        wait_for(lambda: stack.sink.messages, what="delivery")
        assert b"BEGIN PGP" not in stack.sink.messages[0][2]  # plain: no key in time
    else:
        assert code == 451 and "4.7.1" in text, (code, text)
        # the failed look-up is filed for error_ttl: the next RCPT is told at once
        wait_for(lambda: redis_py.Redis(port=stack.redis.port).exists(
            f"{{sealpost:crypto}}:miss:{carol.email}"), what="the miss")
        # one request, or none when the deadline fell before the GET reached
        # the server (a handshake slowed by a loaded machine); never a second
        asked = len(web.key_requests())
        assert asked <= 1
        (code, text, took), = rcpt_codes(stack.smtp_port, [carol.email])
        assert code == 451 and "4.7.1" in text and took < 0.3
        assert len(web.key_requests()) == asked


def test_no_lookup_for_bounces_skipped_domains_or_policy_never(stack, web, discovery, people):
    carol = people["carol"]
    web.publish_wkd(carol.email, binary(carol))
    extra = at_rcpt(stack, discovery)
    stack.ingress(extra.replace("enabled = yes", "enabled = yes\nskip_domains = nowkd.test"))
    assert rcpt_codes(stack.smtp_port, [carol.email], sender="")[0][0] == 250
    assert rcpt_codes(stack.smtp_port, ["someone@nowkd.test"])[0][0] == 250
    assert keys(stack, extra, "policy", "set", carol.email, "never").returncode == 0
    time.sleep(0.5)
    assert rcpt_codes(stack.smtp_port, [carol.email])[0][0] == 250
    assert web.requests == []


# ---- refresh, and a key that changes ----

def disc_entry(stack, address):
    return redis_py.Redis(port=stack.redis.port).hgetall(f"{{sealpost:crypto}}:disc:{address}")


def test_refresh_picks_up_a_new_subkey(stack, web, discovery, people, tmp_path):
    carol = Person(tmp_path, "carol-sub", "carol@example.test")
    web.publish_wkd(carol.email, binary(carol))
    ingress = stack.ingress(at_rcpt(stack, discovery, "refresh = 2\n"))
    stack.worker()
    assert rcpt_codes(stack.smtp_port, [carol.email])[0][0] == 250
    wait_for(lambda: disc_entry(stack, carol.email), what="the key filed")
    before = disc_entry(stack, carol.email)
    time.sleep(1.1)  # a creation time later than the first subkey's: gpg picks the newest
    gpg(carol.home, "--quick-add-key", carol.fpr, "cv25519", "encr", "never")
    newest = carol.subkey_ids[-1]
    web.publish_wkd(carol.email, binary(carol))
    wait_for(lambda: disc_entry(stack, carol.email)[b"data"] != before[b"data"], timeout=20,
             what="the refresh")
    after = disc_entry(stack, carol.email)
    assert after[b"fpr"] == before[b"fpr"] and after[b"found"] == before[b"found"]
    assert int(after[b"checked"]) > int(before[b"checked"])

    def sent_to_newest():
        """A message now goes to the new subkey (gpg picks the newest), once
        the ingress saw the key's version move (one poll, 250 ms)."""
        n = len(stack.sink.messages)
        assert rcpt_codes(stack.smtp_port, [carol.email], data=message(carol.email))[0][0] == 250
        wait_for(lambda: len(stack.sink.messages) > n, what="delivery")
        armor = check_pgp_mime(stack.sink.messages[n][2])
        return recipient_key_ids(carol.home, armor) == [newest]

    wait_for(sent_to_newest, timeout=10, interval=0.3, what="mail to the new subkey")
    assert "event=discovered_key_changed" not in ingress.read_log()


@pytest.mark.parametrize("key_change", ["accept", "keep-old"])
def test_a_fingerprint_change_on_refresh_is_logged_counted_shown_and_handled(
        stack, web, discovery, tmp_path, key_change):
    old = Person(tmp_path, "carol-old", "carol@example.test")
    new = Person(tmp_path, "carol-new", "carol@example.test")
    web.publish_wkd(old.email, binary(old))
    extra = at_rcpt(stack, discovery, f"refresh = 2\nkey_change = {key_change}\n")
    metrics_port = free_port()
    ingress = stack.ingress(extra + f"\n[metrics]\nlisten = 127.0.0.1:{metrics_port}\n")
    assert rcpt_codes(stack.smtp_port, [old.email])[0][0] == 250
    wait_for(lambda: disc_entry(stack, old.email), what="the key filed")
    web.publish_wkd(new.email, binary(new))
    wait_for(lambda: b"change" in disc_entry(stack, old.email), timeout=20, what="the refresh")
    entry = disc_entry(stack, old.email)
    kept = key_change == "keep-old"
    assert entry[b"fpr"] == (old.fpr if kept else new.fpr).encode()
    action = "kept" if kept else "accepted"
    assert entry[b"change"].decode().endswith(f"{old.fpr} -> {new.fpr} {action}")
    log = ingress.read_log()
    assert "event=discovered_key_changed" in log and f"action={action}" in log
    text = keys(stack, extra, "list").stdout
    assert "changed " in text and f"-> {new.fpr} {action}" in text
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    assert f'sealpost_discovery_key_changes_total{{action="{action}"}} 1' in body


def test_a_key_revoked_by_its_owner_leaves_at_the_refresh(stack, web, discovery, tmp_path):
    carol = Person(tmp_path, "carol-rev", "carol@example.test")
    web.publish_wkd(carol.email, binary(carol))
    stack.ingress(at_rcpt(stack, discovery, "refresh = 2\n"))
    assert rcpt_codes(stack.smtp_port, [carol.email])[0][0] == 250
    wait_for(lambda: disc_entry(stack, carol.email), what="the key filed")
    carol.revoke()
    web.publish_wkd(carol.email, binary(carol))
    wait_for(lambda: not disc_entry(stack, carol.email), timeout=20, what="the key dropped")
    assert redis_py.Redis(port=stack.redis.port).exists(
        f"{{sealpost:crypto}}:miss:{carol.email}")


def test_min_trust_imported_encrypts_to_an_operators_key_only(stack, web, discovery, people):
    carol = people["carol"]
    web.publish_wkd(carol.email, binary(carol))
    assert keys(stack, discovery, "lookup", carol.email).returncode == 0
    extra = at_rcpt(stack, discovery, "\n[crypto]\nmin_trust = imported\n")
    stack.ingress(extra)
    stack.worker()
    asked = len(web.key_requests())
    assert rcpt_codes(stack.smtp_port, [carol.email], data=message(carol.email))[0][0] == 250
    wait_for(lambda: stack.sink.messages, what="delivery")
    assert b"BEGIN PGP" not in stack.sink.messages[0][2]
    assert keys(stack, extra, "policy", "set", carol.email, "required").returncode == 0
    time.sleep(0.5)
    code, text, _ = rcpt_codes(stack.smtp_port, [carol.email])[0]
    assert code == 550 and "5.7.1" in text
    assert len(web.key_requests()) == asked  # no look-up for a key that would not be used


def test_a_policy_that_names_imported_takes_no_discovered_key(stack, web, discovery, people):
    carol, grace = people["carol"], people["grace"]
    web.publish_wkd(carol.email, binary(carol))
    web.publish_wkd(grace.email, binary(grace))
    assert keys(stack, discovery, "lookup", carol.email).returncode == 0
    extra = at_rcpt(stack, discovery)
    r = keys(stack, extra, "policy", "set", "example.test", "required", "imported")
    assert r.returncode == 0, r.stderr
    assert "policy example.test: required imported" in r.stdout
    assert "example.test required imported" in keys(stack, extra, "policy", "list").stdout
    stack.ingress(extra)
    stack.worker()
    asked = len(web.key_requests())
    for who in (carol, grace):  # carol's key was discovered; grace's would be
        code, text, _ = rcpt_codes(stack.smtp_port, [who.email])[0]
        assert code == 550 and "5.7.1" in text, (who.email, code, text)
    assert len(web.key_requests()) == asked  # no look-up for a key that would not be used
    # an operator's key is what the policy asks for
    path = stack.tmp / "grace.asc"
    path.write_bytes(grace.public())
    assert keys(stack, extra, "import", str(path)).returncode == 0
    wait_for(lambda: rcpt_codes(stack.smtp_port, [grace.email])[0][0] == 250,
             what="grace's imported key to be read")
    assert rcpt_codes(stack.smtp_port, [grace.email], data=message(grace.email))[0][0] == 250
    wait_for(lambda: stack.sink.messages, what="delivery")
    assert b"Quarterly figures" in grace.decrypt_with_sq(check_pgp_mime(stack.sink.messages[0][2]))


def test_a_policy_that_names_discovered_overrides_min_trust(stack, web, discovery, people):
    carol = people["carol"]
    web.publish_wkd(carol.email, binary(carol))
    extra = at_rcpt(stack, discovery, "\n[crypto]\nmin_trust = imported\n")
    r = keys(stack, extra, "policy", "set", carol.email, "required", "discovered")
    assert r.returncode == 0, r.stderr
    stack.ingress(extra)
    stack.worker()
    # the look-up is made at RCPT for this address alone, and its key used
    assert rcpt_codes(stack.smtp_port, [carol.email], data=message(carol.email))[0][0] == 250
    wait_for(lambda: stack.sink.messages, what="delivery")
    assert b"Quarterly figures" in carol.decrypt_with_sq(check_pgp_mime(stack.sink.messages[0][2]))
    assert [k["source"] for k in listed(stack, extra)] == ["wkd"]


@pytest.mark.parametrize("args", [("never", "imported"), ("required", "trusted"),
                                  ("required", "imported", "x"), ("sometimes",)])
def test_a_policy_that_is_not_one_is_refused(stack, discovery, args):
    r = keys(stack, discovery, "policy", "set", "example.test", *args)
    assert r.returncode == 2, r.stdout
    assert keys(stack, discovery, "policy", "list").stdout.strip() == ""
