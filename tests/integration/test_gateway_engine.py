"""The gateway's GPGME engine under what an operator and a host do to it: a
recipient's key replaced while the pool threads are warm, the GnuPG homes
removed by a cleaner of temporary files, a gpg that hangs. Each copy is
checked with gpg and with sq, with nothing but the recipient's secret key."""
import concurrent.futures
import subprocess
import time

from conftest import wait_for
from pgp import Person, gpg, recipient_key_ids
from test_gateway import check_pgp_mime, import_keys, keys, message, submit

THREADS = 2  # the ingress's thread pool: small, so that every thread is warm


def secret_key(person, path):
    path.write_bytes(gpg(person.home, "--armor", "--export-secret-keys", person.fpr).stdout)
    return path


def sq_decrypts(key_file, armor):
    r = subprocess.run(["sq", "decrypt", "--recipient-key", str(key_file)], input=armor,
                       capture_output=True, timeout=60)
    return r.returncode == 0 and b"Content-Type" in r.stdout


def homes(base):
    """The per-thread GnuPG homes under the ingress's parent directory."""
    return sorted(p for parent in base.glob("sealpost-gnupg-*") if parent.is_dir()
                  for p in parent.glob("t*"))


def send_many(stack, rcpts, n, subject="Quarterly figures"):
    """n messages at once, so that every thread of the pool takes some."""
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        jobs = [pool.submit(submit, stack.smtp_port, rcpts, message(", ".join(rcpts),
                                                                    subject=subject))
                for _ in range(n)]
        return [j.result() for j in jobs]


def seen_version(stack, ingress):
    """Waits until the ingress has dropped what it cached before the
    directory's current version."""
    version = int(stack.redis.client().get("{sealpost:crypto}:version"))
    wait_for(lambda: f"event=keys_changed version={version}" in ingress.read_log(),
             what=f"the ingress to see version {version} of the directory")


def start(stack, monkeypatch, base, extra=""):
    monkeypatch.setenv("UV_THREADPOOL_SIZE", str(THREADS))
    monkeypatch.setenv("SEALPOST_LOG_LEVEL", "debug")  # event=keys_changed
    ingress = stack.ingress(f"[crypto]\nhome_dir = {base}\n{extra}")
    stack.worker()
    return ingress


def test_a_replaced_key_is_never_used_again(stack, tmp_path, monkeypatch):
    people = tmp_path / "people"
    bob_a = Person(people, "bob-a", "bob@example.test")
    bob_b = Person(people, "bob-b", "bob@example.test")
    carol = Person(people, "carol", "carol@example.test", faked_time=str(int(time.time()) - 3600))
    # A second encryption subkey, an hour newer: gpg encrypts to the newest.
    gpg(carol.home, "--quick-add-key", carol.fpr, "cv25519", "encr", "never")
    kept, dropped = carol.subkey_ids  # in the order made
    import_keys(stack, bob_a, carol)
    base = tmp_path / "homes"
    base.mkdir()
    ingress = start(stack, monkeypatch, base)
    rcpts = ["bob@example.test", "carol@example.test"]

    # Warm every thread: each has imported both keys.
    sent = 0
    while len(homes(base)) < THREADS and sent < 20 * THREADS:
        assert all(code == 250 for code, _ in send_many(stack, rcpts, 2 * THREADS))
        sent += 2 * THREADS
    assert len(homes(base)) == THREADS
    wait_for(lambda: stack.sink.count() == sent, what="the first copies")
    for _, _, content in stack.sink.messages:
        assert recipient_key_ids(tmp_path, check_pgp_mime(content)) == sorted(
            bob_a.subkey_ids + [dropped])

    # The operator replaces Bob's key, and strips Carol's newer subkey (say,
    # it was compromised): the same fingerprint, other data.
    assert keys(stack, "delete", bob_a.fpr).returncode == 0
    import_keys(stack, bob_b)
    stripped = gpg(carol.home, "--armor", "--export", kept + "!").stdout
    r = keys(stack, "import", "-", input=stripped)
    assert r.returncode == 0, r.stdout + r.stderr
    seen_version(stack, ingress)

    n = 4 * THREADS
    assert all(code == 250 for code, _ in send_many(stack, rcpts, n))
    wait_for(lambda: stack.sink.count() == sent + n, what="the later copies")
    assert len(homes(base)) == THREADS  # the same, warm threads
    key_b, key_a = secret_key(bob_b, tmp_path / "b.key"), secret_key(bob_a, tmp_path / "a.key")
    for _, _, content in stack.sink.messages[sent:]:
        armor = check_pgp_mime(content)
        assert recipient_key_ids(tmp_path, armor) == sorted(bob_b.subkey_ids + [kept])
        assert bob_b.decrypt(armor) and sq_decrypts(key_b, armor)
        assert bob_a.cannot_decrypt(armor) and not sq_decrypts(key_a, armor)
