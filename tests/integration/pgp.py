"""Real GnuPG for the gateway tests: recipients with their own homes and
keys, and decryption with nothing but one recipient's secret key, by gpg
and by implementations that are not GnuPG (Sequoia's sq, RNP's rnp)."""
import re
import subprocess
from pathlib import Path

GPG = "gpg"


def gpg(home, *args, input=None, check=True):
    r = subprocess.run([GPG, "--homedir", str(home), "--batch", "--yes", "--no-tty",
                        "--pinentry-mode", "loopback", "--passphrase", "", *args],
                       input=input, capture_output=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"gpg {' '.join(args)}: {r.stderr.decode(errors='replace')}")
    return r


class Person:
    """One recipient: a GnuPG home holding their secret key."""

    def __init__(self, base: Path, name: str, email: str, expire="never", faked_time=None,
                 extra_uids=()):
        self.email = email
        self.home = base / f"gnupg-{name}"
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        faked = ["--faked-system-time", faked_time] if faked_time else []
        gpg(self.home, *faked, "--quick-gen-key", f"{name} <{email}>", "future-default",
            "default", expire)
        self.fpr = self._colons("fpr")[0]
        for uid in extra_uids:
            gpg(self.home, *faked, "--quick-add-uid", self.fpr, uid)

    def _colons(self, kind):
        out = gpg(self.home, "--with-colons", "--list-keys").stdout.decode()
        return [line.split(":")[9] if kind == "fpr" else line.split(":")[4]
                for line in out.splitlines() if line.startswith(kind + ":")]

    @property
    def subkey_ids(self):
        """Long key IDs of the encryption subkeys, as ciphertexts name them."""
        return [k.upper() for k in self._colons("sub")]

    def public(self) -> bytes:
        return gpg(self.home, "--armor", "--export", self.fpr).stdout

    def revoke(self):
        """Applies the revocation certificate gpg made with the key."""
        rev = (self.home / "openpgp-revocs.d" / f"{self.fpr}.rev").read_text()
        rev = rev.replace(":-----BEGIN PGP PUBLIC KEY BLOCK", "-----BEGIN PGP PUBLIC KEY BLOCK")
        gpg(self.home, "--import", input=rev.encode())

    def decrypt(self, data: bytes) -> bytes:
        return gpg(self.home, "--decrypt", input=data).stdout

    def secret_key_file(self) -> Path:
        """The secret key, exported (it has no passphrase) for sq and rnp."""
        path = self.home / "secret.asc"
        if not path.exists():
            path.write_bytes(gpg(self.home, "--armor", "--export-secret-keys", self.fpr).stdout)
        return path

    def decrypt_with_sq(self, data: bytes) -> bytes:
        return _run(["sq", "decrypt", "--recipient-key", str(self.secret_key_file())], data)

    def decrypt_with_rnp(self, data: bytes) -> bytes:
        return _run(["rnp", "--homedir", str(self.home / "rnp"), "--keyfile",
                     str(self.secret_key_file()), "--decrypt", "--output", "-"], data)

    def cannot_decrypt(self, data: bytes) -> bool:
        return gpg(self.home, "--decrypt", input=data, check=False).returncode != 0


def _run(argv, data: bytes) -> bytes:
    r = subprocess.run(argv, input=data, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"{argv[0]}: {r.stderr.decode(errors='replace')}")
    return r.stdout


def recipient_key_ids(home: Path, data: bytes):
    """The key IDs an OpenPGP message is encrypted to, read without any key."""
    out = gpg(home, "--list-packets", input=data, check=False)
    text = out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")
    return sorted(set(k.upper() for k in re.findall(r"pubkey enc packet:.*keyid ([0-9A-Fa-f]+)",
                                                        text)))
