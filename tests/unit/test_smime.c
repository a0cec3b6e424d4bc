/* Unit tests for crypto/smime.c: certificates made by the openssl command
 * (not by the code under test) read at import and checked at use, with and
 * without a CA file and a CRL; S/MIME messages decrypted by `openssl cms`
 * and by gpgsm. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <sodium.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "crypto/crypto.h"
#include "crypto/internal.h"

extern char **environ;

static char dir[] = "/tmp/sealpost-smime-XXXXXX";

/* Runs a shell command in the test's directory; its exit status. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[8192];
    int n = snprintf(cmd, sizeof cmd, "cd %s && { ", dir);
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(cmd + n, sizeof cmd - (size_t)n, fmt, ap);
    va_end(ap);
    snprintf(cmd + n, sizeof cmd - (size_t)n, "; }");
    const char *argv[] = {"sh", "-c", cmd, NULL};
    pid_t pid;
    if (posix_spawnp(&pid, "sh", NULL, NULL, (char *const *)argv, environ) != 0) return -1;
    int status;
    if (waitpid(pid, &status, 0) < 0) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* A file of the test's directory, whole; NULL when it cannot be read. */
static char *slurp(const char *name, size_t *len)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    buf_t b;
    buf_init(&b);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    fclose(f);
    if (!b.data) buf_append(&b, "", 0);
    *len = b.len;
    return b.data;
}

#define REQ    "openssl req -new -nodes -batch"
#define KU_RSA "keyUsage=critical,digitalSignature,keyEncipherment"
#define KU_EC  "keyUsage=critical,digitalSignature,keyAgreement"
#define EKU    "extendedKeyUsage=emailProtection"

/* The certificates every test reads, made once: a CA; certificates it
 * signed (RSA and EC, one later revoked, one expired and one not yet
 * valid by the dates `openssl ca` writes); self-signed ones, good and bad
 * in one way each; a bundle; DER forms; the CRL. */
static const char make_certs[] =
    "set -e; mkdir -p db; : > db/index.txt; echo 1000 > db/serial;"
    "printf '[ca]\\ndefault_ca = d\\n[d]\\ndatabase = db/index.txt\\nnew_certs_dir = db\\n"
    "serial = db/serial\\ndefault_md = sha256\\npolicy = p\\ncopy_extensions = copy\\n"
    "unique_subject = no\\ndefault_crl_days = 30\\n[p]\\ncommonName = supplied\\n' > ca.cnf;"
    "openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj '/CN=Test CA' -keyout ca.key"
    " -out ca.pem -addext basicConstraints=critical,CA:true"
    " -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null;"
    /* signed by the CA: name, key, extensions, dates */
    "sign() { " REQ " -newkey $2 -subj \"/CN=$1\" -keyout $1.key -out $1.csr $3 2>/dev/null;"
    " openssl ca -batch -notext -config ca.cnf -cert ca.pem -keyfile ca.key -in $1.csr"
    " -out $1.pem $4 2>/dev/null; };"
    "sign bob rsa:2048 \"-addext subjectAltName=email:bob@Example.TEST -addext " KU_RSA
    " -addext " EKU "\" '-days 30';"
    "sign carol 'ec -pkeyopt ec_paramgen_curve:P-256' \"-addext subjectAltName=email:carol@"
    "example.test -addext " KU_EC " -addext " EKU "\" '-days 30';"
    "sign dave rsa:2048 \"-addext subjectAltName=email:dave@example.test -addext " KU_RSA
    "\" '-days 30';"
    "sign old rsa:2048 \"-addext subjectAltName=email:old@example.test\""
    " '-startdate 20200101000000Z -enddate 20200201000000Z';"
    "sign early rsa:2048 \"-addext subjectAltName=email:early@example.test\""
    " '-startdate 20990101000000Z -enddate 20990201000000Z';"
    "openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -revoke dave.pem 2>/dev/null;"
    "openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -gencrl -out crl.pem"
    " 2>/dev/null;"
    /* self-signed: name, key, subject, extensions */
    "self() { openssl req -x509 -nodes -batch -days 30 -newkey $2 -subj \"$3\" -keyout $1.key"
    " -out $1.pem $4 2>/dev/null; };"
    "self selfbob rsa:2048 /CN=Bob \"-addext subjectAltName=email:bob@example.test -addext " KU_RSA
    " -addext " EKU "\";"
    "self weak rsa:1024 /CN=Weak \"-addext subjectAltName=email:weak@example.test\";"
    "self ec 'ec -pkeyopt ec_paramgen_curve:P-256' /CN=Ec \"-addext subjectAltName=email:"
    "ec@example.test -addext " KU_EC " -addext " EKU "\";"
    "self brainpool 'ec -pkeyopt ec_paramgen_curve:brainpoolP256r1' /CN=Bp"
    " \"-addext subjectAltName=email:bp@example.test\";"
    "self signonly rsa:2048 /CN=Sign \"-addext subjectAltName=email:sign@example.test"
    " -addext keyUsage=critical,digitalSignature\";"
    "self client rsa:2048 /CN=Client \"-addext subjectAltName=email:client@example.test"
    " -addext extendedKeyUsage=clientAuth\";"
    "self subject rsa:2048 /CN=Erin/emailAddress=Erin@Example.TEST;"
    "self both rsa:2048 /CN=Both/emailAddress=old@example.test \"-addext subjectAltName="
    "email:new@example.test,email:NEW@example.test,DNS:example.test\";"
    "self nomail rsa:2048 /CN=Nobody;"
    "openssl crl2pkcs7 -nocrl -certfile bob.pem -certfile ec.pem -out bundle.p7b;"
    "openssl crl2pkcs7 -nocrl -certfile bob.pem -certfile ec.pem -outform DER -out bundle.p7c;"
    "openssl x509 -in bob.pem -outform DER -out bob.der";

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir)) return -1;
    if (sh("%s", make_certs) != 0) {
        fprintf(stderr, "making the test certificates failed\n");
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sh("gpgconf --homedir gpgsm --kill gpg-agent 2>/dev/null || true");
    return sh("cd / && rm -rf %s", dir) == 0 ? 0 : -1;
}

static void configure(bool gcm, bool oaep, const char *ca, const char *crl)
{
    char ca_path[256] = "", crl_path[256] = "", err[512];
    if (ca) snprintf(ca_path, sizeof ca_path, "%s/%s", dir, ca);
    if (crl) snprintf(crl_path, sizeof crl_path, "%s/%s", dir, crl);
    crypto_smime_options_t o = {.gcm = gcm, .oaep = oaep, .ca_file = ca_path, .crl_file = crl_path};
    if (crypto_smime_configure(&o, err, sizeof err) < 0) fail_msg("configure: %s", err);
}

/* What the callback saw of each certificate. */
struct seen {
    unsigned n;
    crypto_key_info_t info[8];
    char why[8][200];
};

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void collect(const crypto_key_info_t *key, void *arg)
{
    struct seen *s = arg;
    if (s->n == 8) return;
    crypto_key_info_t *c = &s->info[s->n];
    *c = *key;
    c->addresses = calloc(key->n_addresses + 1, sizeof *c->addresses);
    for (unsigned i = 0; i < key->n_addresses; i++)
        c->addresses[i] = strdup(key->addresses[i]);
    c->armored = key->armored ? strndup(key->armored, key->armored_len) : NULL;
    c->subject = dup_or_null(key->subject);
    c->issuer = dup_or_null(key->issuer);
    c->serial = dup_or_null(key->serial);
    snprintf(s->why[s->n], sizeof s->why[0], "%s", key->why_unusable ? key->why_unusable : "");
    c->why_unusable = key->why_unusable ? s->why[s->n] : NULL;
    s->n++;
}

static void seen_free(struct seen *s)
{
    for (unsigned i = 0; i < s->n; i++) {
        crypto_key_info_t *c = &s->info[i];
        for (unsigned j = 0; j < c->n_addresses; j++)
            free(c->addresses[j]);
        free(c->addresses);
        free(c->armored);
        free(c->subject);
        free(c->issuer);
        free(c->serial);
    }
    memset(s, 0, sizeof *s);
}

/* Inspects file through crypto_keys_inspect, the entry point of import. */
static int inspect_file(const char *file, struct seen *s)
{
    size_t len;
    char *data = slurp(file, &len);
    assert_non_null(data);
    char err[256];
    memset(s, 0, sizeof *s);
    int rc = crypto_keys_inspect(data, len, NULL, NULL, collect, s, err, sizeof err);
    if (rc < 0) fprintf(stderr, "inspect %s: %s\n", file, err);
    free(data);
    return rc;
}

/* The one certificate of file; why it is unusable ("" when it is not). */
static const char *why_of(const char *file, struct seen *s)
{
    assert_int_equal(inspect_file(file, s), 0);
    assert_int_equal(s->n, 1);
    assert_int_equal(s->info[0].method, CRYPTO_SMIME);
    return s->why[0];
}

/* A value `openssl x509` prints for file, its "name=" prefix dropped. */
static void openssl_field(const char *file, const char *option, char *out, size_t outlen)
{
    char name[64];
    snprintf(name, sizeof name, "%s.field", file);
    assert_int_equal(sh("openssl x509 -in %s -noout %s > %s", file, option, name), 0);
    size_t len;
    char *text = slurp(name, &len);
    assert_non_null(text);
    text[strcspn(text, "\r\n")] = 0;
    const char *eq = strchr(text, '=');
    snprintf(out, outlen, "%s",
             eq && strncmp(text, "subject", 7) && strncmp(text, "issuer", 6) ? eq + 1 : text);
    free(text);
}

static void test_inspect_describes_a_certificate(void **state)
{
    (void)state;
    configure(false, false, NULL, NULL);
    struct seen s;
    assert_string_equal(why_of("bob.pem", &s), "");
    crypto_key_info_t *c = &s.info[0];
    assert_null(c->why_unusable);
    assert_false(c->retired);
    /* the id is the SHA-256 of the DER, as openssl computes it */
    char fpr[200];
    openssl_field("bob.pem", "-fingerprint -sha256", fpr, sizeof fpr);
    char *w = fpr;
    for (const char *r = fpr; *r; r++)
        if (*r != ':') *w++ = *r;
    *w = 0;
    assert_string_equal(c->fpr, fpr);
    assert_int_equal(strlen(c->fpr), 64);
    /* the SAN's address, its domain lower-cased, its local part as written */
    assert_int_equal(c->n_addresses, 1);
    assert_string_equal(c->addresses[0], "bob@example.test");
    char serial[100];
    openssl_field("bob.pem", "-serial", serial, sizeof serial);
    assert_string_equal(c->serial, serial);
    assert_string_equal(c->subject, "CN=bob");
    assert_string_equal(c->issuer, "CN=Test CA");
    /* 30 days from now, less the seconds the test has taken */
    long long now = (long long)time(NULL);
    assert_true(c->expires > now + 29LL * 86400 && c->expires <= now + 30LL * 86400);
    assert_true(c->not_before <= now && c->not_before > now - 3600);
    /* the PEM kept reads back as the same certificate */
    char why[200];
    assert_true(crypto_cert_check(c->armored, c->armored_len, now, why, sizeof why));
    assert_non_null(strstr(c->armored, "-----BEGIN CERTIFICATE-----"));
    seen_free(&s);
}

static void test_inspect_refuses_with_the_reason(void **state)
{
    (void)state;
    configure(false, false, NULL, NULL);
    struct seen s;
    assert_string_equal(why_of("old.pem", &s), "expired");
    assert_true(s.info[0].retired);
    seen_free(&s);
    assert_string_equal(why_of("early.pem", &s), "not yet valid");
    assert_false(s.info[0].retired);
    seen_free(&s);
    assert_string_equal(why_of("weak.pem", &s), "RSA key shorter than 2048 bits");
    assert_false(s.info[0].retired);
    seen_free(&s);
    assert_string_equal(why_of("signonly.pem", &s), "key usage does not allow encryption");
    seen_free(&s);
    assert_string_equal(why_of("client.pem", &s), "extended key usage does not allow email");
    seen_free(&s);
    assert_string_equal(why_of("brainpool.pem", &s), "EC key not on P-256, P-384 or P-521");
    seen_free(&s);
    assert_string_equal(why_of("nomail.pem", &s), "no email address");
    assert_int_equal(s.info[0].n_addresses, 0);
    seen_free(&s);
    /* an EC certificate with keyAgreement is fine */
    assert_string_equal(why_of("ec.pem", &s), "");
    seen_free(&s);
}

static void test_inspect_addresses(void **state)
{
    (void)state;
    configure(false, false, NULL, NULL);
    struct seen s;
    /* only the subject's emailAddress: taken */
    assert_string_equal(why_of("subject.pem", &s), "");
    assert_int_equal(s.info[0].n_addresses, 1);
    assert_string_equal(s.info[0].addresses[0], "Erin@example.test");
    seen_free(&s);
    /* the SAN's rfc822Names win over the subject's, once each */
    assert_string_equal(why_of("both.pem", &s), "");
    assert_int_equal(s.info[0].n_addresses, 1);
    assert_string_equal(s.info[0].addresses[0], "new@example.test");
    seen_free(&s);
}

static void test_inspect_forms(void **state)
{
    (void)state;
    configure(false, false, NULL, NULL);
    struct seen pem, der, p7b, p7c;
    assert_string_equal(why_of("bob.pem", &pem), "");
    assert_string_equal(why_of("bob.der", &der), "");
    assert_string_equal(der.info[0].fpr, pem.info[0].fpr);
    assert_string_equal(der.info[0].armored, pem.info[0].armored);
    /* a bundle of two, PEM and DER */
    assert_int_equal(inspect_file("bundle.p7b", &p7b), 0);
    assert_int_equal(inspect_file("bundle.p7c", &p7c), 0);
    assert_int_equal(p7b.n, 2);
    assert_int_equal(p7c.n, 2);
    for (unsigned i = 0; i < 2; i++)
        assert_string_equal(p7b.info[i].fpr, p7c.info[i].fpr);
    assert_string_not_equal(p7b.info[0].fpr, p7b.info[1].fpr);
    bool has_bob = false;
    for (unsigned i = 0; i < 2; i++)
        has_bob |= !strcmp(p7b.info[i].fpr, pem.info[0].fpr);
    assert_true(has_bob);
    seen_free(&pem);
    seen_free(&der);
    seen_free(&p7b);
    seen_free(&p7c);
    /* two PEM blocks with text around them, and one twice: reported once */
    assert_int_equal(sh("{ echo 'Bob and Ec'; cat bob.pem ec.pem bob.pem; echo end; } > two.pem"),
                     0);
    struct seen two;
    assert_int_equal(inspect_file("two.pem", &two), 0);
    assert_int_equal(two.n, 2);
    seen_free(&two);
    /* broken: a block whose base64 is cut */
    assert_int_equal(sh("head -c 400 bob.pem > cut.pem; echo '-----END CERTIFICATE-----' >> "
                        "cut.pem"),
                     0);
    struct seen cut;
    assert_int_equal(inspect_file("cut.pem", &cut), -1);
    assert_int_equal(cut.n, 0);
}

static void test_ca_file_and_crl(void **state)
{
    (void)state;
    configure(false, false, "ca.pem", NULL);
    struct seen s;
    assert_string_equal(why_of("bob.pem", &s), "");
    seen_free(&s);
    assert_string_equal(why_of("carol.pem", &s), ""); /* EC, keyAgreement: chained */
    seen_free(&s);
    assert_string_equal(why_of("selfbob.pem", &s),
                        "not signed by the configured CA: self-signed certificate");
    assert_false(s.info[0].retired);
    seen_free(&s);
    assert_string_equal(why_of("dave.pem", &s), ""); /* revoked, but no CRL is configured */
    seen_free(&s);
    configure(false, false, "ca.pem", "crl.pem");
    assert_string_equal(why_of("dave.pem", &s), "revoked (CRL)");
    assert_true(s.info[0].retired);
    seen_free(&s);
    assert_string_equal(why_of("bob.pem", &s), "");
    seen_free(&s);
    /* the check at use says the same, at the time it is given */
    size_t len;
    char *bob = slurp("bob.pem", &len), why[300];
    assert_true(crypto_cert_check(bob, len, (long long)time(NULL), why, sizeof why));
    assert_false(
        crypto_cert_check(bob, len, (long long)time(NULL) + 31LL * 86400, why, sizeof why));
    assert_string_equal(why, "expired");
    assert_false(crypto_cert_check(bob, len, (long long)time(NULL) - 3600, why, sizeof why));
    assert_string_equal(why, "not yet valid");
    free(bob);
    char *dave = slurp("dave.pem", &len);
    assert_false(crypto_cert_check(dave, len, (long long)time(NULL), why, sizeof why));
    assert_string_equal(why, "revoked (CRL)");
    free(dave);
    assert_false(crypto_cert_check("junk", 4, 0, why, sizeof why));
    /* files that are not what they must be */
    char err[512];
    crypto_smime_options_t o = {.ca_file = "/nonexistent/ca.pem"};
    assert_int_equal(crypto_smime_configure(&o, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot be read"));
    char crl_as_ca[256];
    snprintf(crl_as_ca, sizeof crl_as_ca, "%s/crl.pem", dir);
    o.ca_file = crl_as_ca;
    assert_int_equal(crypto_smime_configure(&o, err, sizeof err), -1);
    assert_non_null(strstr(err, "no PEM certificate"));
    o.ca_file = NULL;
    o.crl_file = crl_as_ca;
    assert_int_equal(crypto_smime_configure(&o, err, sizeof err), -1);
    /* a failed configure leaves the one before in force */
    dave = slurp("dave.pem", &len);
    assert_false(crypto_cert_check(dave, len, (long long)time(NULL), why, sizeof why));
    free(dave);
    configure(false, false, NULL, NULL);
}

int main(void)
{
    if (sodium_init() < 0) return 1;
    char err[256];
    if (crypto_gpg_init(err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inspect_describes_a_certificate),
        cmocka_unit_test(test_inspect_refuses_with_the_reason),
        cmocka_unit_test(test_inspect_addresses),
        cmocka_unit_test(test_inspect_forms),
        cmocka_unit_test(test_ca_file_and_crl),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
