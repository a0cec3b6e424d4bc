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

#include <openssl/err.h>

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
    /* the same CRL with a nextUpdate tomorrow: stale the day after */
    "openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -gencrl -crldays 1"
    " -out crl-short.pem 2>/dev/null;"
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
    if (getenv("SEALPOST_TEST_KEEP")) return 0;
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
    assert_int_equal(crypto_cert_check(c->armored, c->armored_len, now, why, sizeof why), 1);
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
    long long now = (long long)time(NULL);
    assert_int_equal(crypto_cert_check(bob, len, now, why, sizeof why), 1);
    assert_int_equal(crypto_cert_check(bob, len, now + 31LL * 86400, why, sizeof why), 0);
    assert_string_equal(why, "expired");
    assert_int_equal(crypto_cert_check(bob, len, now - 3600, why, sizeof why), 0);
    assert_string_equal(why, "not yet valid");
    char *dave = slurp("dave.pem", &len);
    assert_int_equal(crypto_cert_check(dave, len, now, why, sizeof why), 0);
    assert_string_equal(why, "revoked (CRL)");
    free(dave);
    /* what cannot be judged is in doubt, not unusable: mail waits for it */
    assert_int_equal(crypto_cert_check("junk", 4, 0, why, sizeof why), -1);
    assert_int_equal(ERR_peek_error(), 0); /* the loop's TLS reads the same queue */
    configure(false, false, "ca.pem", "crl-short.pem");
    len = strlen(bob);
    assert_int_equal(crypto_cert_check(bob, len, now, why, sizeof why), 1);
    assert_int_equal(crypto_cert_check(bob, len, now + 2LL * 86400, why, sizeof why), -1);
    assert_non_null(strstr(why, "CRL check failed"));
    /* a pass stands until the trust changes: then bob is judged anew */
    configure(false, false, "selfbob.pem", NULL);
    assert_int_equal(crypto_cert_check(bob, len, now, why, sizeof why), 0);
    assert_non_null(strstr(why, "not signed by the configured CA"));
    free(bob);
    configure(false, false, "ca.pem", "crl.pem");
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
    assert_int_equal(crypto_cert_check(dave, len, (long long)time(NULL), why, sizeof why), 0);
    free(dave);
    configure(false, false, NULL, NULL);
}

static int spill(const char *name, const void *data, size_t len)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t put = fwrite(data, 1, len, f);
    return fclose(f) == 0 && put == len ? 0 : -1;
}

/* ---- encrypting ---- */

static const char message[] = "Received: from a.test by b.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                              "From: Alice <alice@example.test>\r\n"
                              "To: Bob <bob@example.test>\r\n"
                              "Bcc: hidden@example.test\r\n"
                              "Subject: the plan\r\n"
                              "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                              "Message-ID: <1@example.test>\r\n"
                              "List-Id: <plans.example.test>\r\n"
                              "Content-Type: text/plain; charset=utf-8\r\n"
                              "\r\n"
                              "Meet at noon.\r\n"
                              "A second line.\r\n";

/* A certificate of the test's directory as a recipient key. */
static crypto_rcpt_key_t recipient(const char *name)
{
    char file[64];
    snprintf(file, sizeof file, "%s.pem", name);
    size_t len;
    char *pem = slurp(file, &len);
    assert_non_null(pem);
    return (crypto_rcpt_key_t){
        .method = CRYPTO_SMIME, .fpr = name, .armored = pem, .armored_len = len};
}

/* Encrypts message's inner payload to the certificates named (NULL-ended)
 * and writes the outer message to msg.eml and the DER to msg.der; the
 * inner payload into *inner. */
static void make_message(const char *const *names, buf_t *inner)
{
    crypto_rcpt_key_t keys[4];
    unsigned n = 0;
    for (; names[n]; n++)
        keys[n] = recipient(names[n]);
    buf_init(inner);
    assert_int_equal(pgpmime_inner(message, strlen(message), PGPMIME_HIDE_SUBJECT, inner), 0);
    buf_t der, outer;
    buf_init(&der);
    buf_init(&outer);
    char err[256];
    if (smime_encrypt(keys, n, inner->data, inner->len, &der, err, sizeof err) < 0)
        fail_msg("smime_encrypt: %s", err);
    assert_int_equal(ERR_peek_error(), 0);
    assert_int_equal(smime_outer(message, strlen(message), (unsigned char *)der.data, der.len,
                                 PGPMIME_HIDE_SUBJECT, &outer),
                     0);
    assert_int_equal(spill("msg.eml", outer.data, outer.len), 0);
    assert_int_equal(spill("msg.der", der.data, der.len), 0);
    for (unsigned i = 0; i < n; i++)
        free((char *)keys[i].armored);
    buf_free(&der);
    buf_free(&outer);
}

/* Whether file holds exactly want. */
static void assert_file_is(const char *file, const buf_t *want)
{
    size_t len;
    char *got = slurp(file, &len);
    assert_non_null(got);
    assert_int_equal(len, want->len);
    assert_memory_equal(got, want->data, len);
    free(got);
}

/* `openssl cms -decrypt` with name's key gives back the inner payload. */
static void assert_openssl_decrypts(const char *name, const buf_t *inner)
{
    assert_int_equal(sh("rm -f out.txt; openssl cms -decrypt -in msg.eml -inkey %s.key -recip "
                        "%s.pem -out out.txt",
                        name, name),
                     0);
    assert_file_is("out.txt", inner);
}

/* What `openssl cms -cmsout -print` says of the structure contains each
 * of want and none of unwanted (both NULL-ended). */
static void assert_structure(const char *const *want, const char *const *unwanted)
{
    assert_int_equal(sh("openssl cms -cmsout -print -inform DER -in msg.der > print.txt"), 0);
    size_t len;
    char *text = slurp("print.txt", &len);
    assert_non_null(text);
    for (; *want; want++)
        if (!strstr(text, *want)) fail_msg("the CMS structure has no '%s'", *want);
    for (; *unwanted; unwanted++)
        if (strstr(text, *unwanted)) fail_msg("the CMS structure has '%s'", *unwanted);
    free(text);
}

/* Python's email package reads the outer message without a defect: one
 * application/pkcs7-mime part of the given smime-type whose base64 is the
 * DER, no Bcc, lines of at most 78 octets ending in CRLF. */
static void assert_python_parses(const char *smime_type)
{
    static const char script[] =
        "import email, email.policy, sys\n"
        "raw = open(sys.argv[1], 'rb').read()\n"
        "m = email.message_from_bytes(raw, policy=email.policy.default)\n"
        "assert not m.defects, m.defects\n"
        "assert m.get_content_type() == 'application/pkcs7-mime', m.get_content_type()\n"
        "assert m.get_param('smime-type') == sys.argv[3], m.get_param('smime-type')\n"
        "assert m.get_param('name') == 'smime.p7m'\n"
        "assert m.get_filename() == 'smime.p7m'\n"
        "assert m.get_content_disposition() == 'attachment'\n"
        "assert m['Bcc'] is None and m['Subject'] == '[...]'\n"
        "assert m['List-Id'] == '<plans.example.test>'\n"
        "assert m.get_content() == open(sys.argv[2], 'rb').read()\n"
        "lines = raw.split(b'\\r\\n')\n"
        "assert lines[-1] == b'' and all(b'\\n' not in l and len(l) <= 78 for l in lines)\n"
        "body = raw.split(b'\\r\\n\\r\\n', 1)[1].split(b'\\r\\n')[:-1]\n"
        "assert all(len(l) == 76 for l in body[:-1]) and 0 < len(body[-1]) <= 76\n";
    assert_int_equal(spill("parse.py", script, strlen(script)), 0);
    assert_int_equal(sh("/usr/bin/python3 parse.py msg.eml msg.der %s", smime_type), 0);
}

/* bob's certificate with each content cipher and each RSA padding:
 * openssl decrypts it, and the structure is what was configured, its
 * recipient named by issuer and serial. */
static void test_encrypt_rsa(void **state)
{
    (void)state;
    static const struct {
        bool gcm, oaep;
        const char *type, *cipher, *padding, *other_padding, *smime_type;
    } cases[] = {
        {false, false, "pkcs7-envelopedData", "aes-256-cbc", "rsaEncryption", "rsaesOaep",
         "enveloped-data"},
        {false, true, "pkcs7-envelopedData", "aes-256-cbc", "rsaesOaep", "rsaEncryption",
         "enveloped-data"},
        {true, false, "id-smime-ct-authEnvelopedData", "aes-256-gcm", "rsaEncryption", "rsaesOaep",
         "authEnveloped-data"},
        {true, true, "id-smime-ct-authEnvelopedData", "aes-256-gcm", "rsaesOaep", "rsaEncryption",
         "authEnveloped-data"},
    };
    static const char *const names[] = {"bob", NULL};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        configure(cases[i].gcm, cases[i].oaep, NULL, NULL);
        buf_t inner;
        make_message(names, &inner);
        assert_openssl_decrypts("bob", &inner);
        const char *want[] = {cases[i].type, cases[i].cipher, "d.issuerAndSerialNumber",
                              cases[i].padding, NULL};
        const char *unwanted[] = {cases[i].other_padding, "subjectKeyIdentifier", NULL};
        assert_structure(want, unwanted);
        assert_python_parses(cases[i].smime_type);
        buf_free(&inner);
    }
    /* another key cannot */
    assert_int_not_equal(sh("openssl cms -decrypt -in msg.eml -inkey selfbob.key -recip "
                            "selfbob.pem -out /dev/null 2>/dev/null"),
                         0);
    configure(false, false, NULL, NULL);
}

/* EC recipients by ECDH (KeyAgreeRecipientInfo): OpenSSL's defaults, the
 * X9.63 KDF with SHA-1 (dhSinglePass-stdDH-sha1kdf-scheme) and AES-256 key
 * wrap; with an RSA recipient in the same message, and with GCM. */
static void test_encrypt_ec_and_mixed(void **state)
{
    (void)state;
    configure(false, false, NULL, NULL);
    static const char *const names[] = {"ec", "bob", "carol", NULL};
    buf_t inner;
    make_message(names, &inner);
    assert_openssl_decrypts("ec", &inner);
    assert_openssl_decrypts("bob", &inner);
    assert_openssl_decrypts("carol", &inner);
    static const char *const want[] = {"d.kari",         "dhSinglePass-stdDH-sha1kdf-scheme",
                                       "id-aes256-wrap", "d.issuerAndSerialNumber",
                                       "d.ktri",         NULL};
    static const char *const unwanted[] = {"subjectKeyIdentifier", NULL};
    assert_structure(want, unwanted);
    assert_python_parses("enveloped-data");
    buf_free(&inner);
    configure(true, false, NULL, NULL);
    static const char *const ec_only[] = {"ec", NULL};
    make_message(ec_only, &inner);
    assert_openssl_decrypts("ec", &inner);
    assert_python_parses("authEnveloped-data");
    buf_free(&inner);
    configure(false, false, NULL, NULL);
}

static void test_encrypt_refuses(void **state)
{
    (void)state;
    char err[256];
    buf_t der;
    buf_init(&der);
    assert_int_equal(smime_encrypt(NULL, 0, "x", 1, &der, err, sizeof err), -1);
    crypto_rcpt_key_t junk = {
        .method = CRYPTO_SMIME, .fpr = "J", .armored = "junk", .armored_len = 4};
    assert_int_equal(smime_encrypt(&junk, 1, "x", 1, &der, err, sizeof err), -1);
    assert_non_null(strstr(err, "recipient J"));
    crypto_rcpt_key_t openpgp = recipient("bob");
    openpgp.method = CRYPTO_OPENPGP;
    assert_int_equal(smime_encrypt(&openpgp, 1, "x", 1, &der, err, sizeof err), -1);
    free((char *)openpgp.armored);
    assert_int_equal(der.len, 0);
    assert_int_equal(ERR_peek_error(), 0);
    /* smime_outer takes only enveloped data */
    buf_t out;
    buf_init(&out);
    static const unsigned char not_cms[] = {0x30, 0x03, 0x02, 0x01, 0x01};
    assert_int_equal(smime_outer(message, strlen(message), not_cms, sizeof not_cms, 0, &out), -1);
    assert_int_equal(out.len, 0);
}

/* gpgsm, a second implementation, reads the default: RSA, PKCS#1 v1.5,
 * AES-256-CBC. (gpgsm 2.2.40 reads neither AuthEnvelopedData, "error getting
 * IV: Buffer too short", nor RSA-OAEP, "error getting encrypted session
 * key", and crashes importing an EC key's PKCS#12.) */
static void test_gpgsm_decrypts_the_default(void **state)
{
    (void)state;
    configure(false, false, NULL, NULL);
    static const char *const names[] = {"bob", "ec", NULL};
    buf_t inner;
    make_message(names, &inner);
    assert_int_equal(
        sh("set -e; mkdir -p -m 700 gpgsm; echo allow-loopback-pinentry > gpgsm/gpg-agent.conf;"
           "echo disable-crl-checks > gpgsm/gpgsm.conf;"
           "openssl pkcs12 -export -inkey bob.key -in bob.pem -out bob.p12 -passout pass:x"
           " -keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-3DES -macalg sha1;"
           "echo x | gpgsm --homedir gpgsm --batch --pinentry-mode loopback --passphrase-fd 0"
           " --import bob.p12 2>/dev/null;"
           "echo x | gpgsm --homedir gpgsm --batch --pinentry-mode loopback --passphrase-fd 0"
           " --output gpgsm.txt --decrypt msg.der 2>/dev/null"),
        0);
    assert_file_is("gpgsm.txt", &inner);
    buf_free(&inner);
}

/* ---- the gateway: variants by method ---- */

#define SEAL_KEY "a:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

/* Variant v of job, unsealed, into file. */
static void variant_to_file(const gateway_job_t *job, const seal_keyring_t *k, unsigned v,
                            const char *file, buf_t *plain)
{
    char context[48], err[256];
    snprintf(context, sizeof context, "%s:%u", job->mid, v);
    buf_init(plain);
    if (seal_open(k, context, job->variants[v].data, job->variants[v].len, plain, err, sizeof err) <
        0)
        fail_msg("%s", err);
    assert_int_equal(spill(file, plain->data, plain->len), 0);
}

/* Whether name's key opens the S/MIME message in file. */
static bool opens(const char *file, const char *name)
{
    return sh("openssl cms -decrypt -in %s -inkey %s.key -recip %s.pem -out /dev/null "
              "2>/dev/null",
              file, name, name) == 0;
}

/* How many RecipientInfos the S/MIME message in file has. */
static int recipients_in(const char *file)
{
    return sh("exit $(openssl cms -cmsout -print -in %s | grep -cE '^ *d\\.(ktri|kari):')", file);
}

/* To: bob and ec (certificates) and alice (an OpenPGP key, made by gpg);
 * Bcc: carol (a certificate), dan (an OpenPGP key) and eve (no key).
 * Variants: the clear one for eve; one S/MIME copy for bob and ec; one
 * PGP/MIME copy for alice; each Bcc its own, of its own method. */
static void test_gateway_groups_by_method(void **state)
{
    (void)state;
    configure(false, false, NULL, NULL);
    assert_int_equal(
        sh("set -e; mkdir -p -m 700 gpg; for u in alice dan; do gpg --homedir gpg --batch "
           "--passphrase '' --quiet --quick-generate-key \"$u <$u@example.test>\" future-default "
           "default never 2>/dev/null; gpg --homedir gpg --armor --export $u@example.test > "
           "$u.asc; "
           "gpg --homedir gpg --with-colons --list-keys $u@example.test | awk -F: '/^fpr/ "
           "{ printf \"%%s\", $10; exit }' > $u.fpr; done"),
        0);
    const char msg[] = "From: Zed <zed@example.test>\r\n"
                       "To: bob@example.test, ec@example.test, alice@example.test\r\n"
                       "Bcc: carol@example.test\r\n"
                       "Subject: split\r\n"
                       "\r\n"
                       "body\r\n";
    crypto_rcpt_key_t bob = recipient("bob"), ec = recipient("ec"), carol = recipient("carol");
    crypto_rcpt_key_t pgp[2];
    static const char *const pgp_names[] = {"alice", "dan"};
    size_t len;
    for (int i = 0; i < 2; i++) {
        char file[32];
        snprintf(file, sizeof file, "%s.fpr", pgp_names[i]);
        char *fpr = slurp(file, &len);
        snprintf(file, sizeof file, "%s.asc", pgp_names[i]);
        char *armored = slurp(file, &len);
        assert_non_null(fpr);
        assert_non_null(armored);
        assert_int_equal(strlen(fpr), 40);
        pgp[i] = (crypto_rcpt_key_t){.fpr = fpr, .armored = armored, .armored_len = len};
    }
    gateway_rcpt_t rcpts[] = {
        {.addr = "bob@example.test", .key = &bob},
        {.addr = "alice@example.test", .key = &pgp[0]},
        {.addr = "carol@example.test", .key = &carol},
        {.addr = "ec@example.test", .key = &ec},
        {.addr = "dan@example.test", .key = &pgp[1]},
        {.addr = "eve@example.test"},
    };
    char err[256], homes[256];
    seal_keyring_t *k = seal_keyring_load(SEAL_KEY, NULL, err, sizeof err);
    assert_non_null(k);
    assert_int_equal(crypto_homes_create(dir, homes, sizeof homes, err, sizeof err), 0);
    gateway_job_t job = {.mid = "m",
                         .msg = msg,
                         .len = strlen(msg),
                         .rcpts = rcpts,
                         .n_rcpts = 6,
                         .seal = k,
                         .homes = homes,
                         .hide_subject = true};
    if (gateway_run(&job) < 0) fail_msg("%s", job.error);
    assert_int_equal(job.outcome, GATEWAY_ENCRYPTED);
    assert_int_equal(job.n_variants, 5); /* clear, S/MIME To, PGP/MIME To, carol, dan */
    unsigned vb = rcpts[0].variant, va = rcpts[1].variant, vc = rcpts[2].variant;
    unsigned ve = rcpts[3].variant, vd = rcpts[4].variant, vx = rcpts[5].variant;
    assert_int_equal(vb, ve);
    unsigned all[] = {vb, va, vc, vd, vx};
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < 5; j++)
            assert_int_not_equal(all[i], all[j]);
    buf_t plain;
    variant_to_file(&job, k, vb, "shared.eml", &plain);
    assert_non_null(strstr(plain.data, "smime-type=enveloped-data"));
    /* in its header section: the base64 below may spell "Bcc" by chance */
    const char *body = strstr(plain.data, "\r\n\r\n");
    assert_non_null(body);
    assert_null(memmem(plain.data, (size_t)(body - plain.data), "Bcc", 3));
    buf_free(&plain);
    assert_true(opens("shared.eml", "bob"));
    assert_true(opens("shared.eml", "ec"));
    assert_false(opens("shared.eml", "carol"));
    assert_int_equal(recipients_in("shared.eml"), 2);
    variant_to_file(&job, k, vc, "carol.eml", &plain);
    assert_non_null(strstr(plain.data, "application/pkcs7-mime"));
    buf_free(&plain);
    assert_true(opens("carol.eml", "carol"));
    assert_false(opens("carol.eml", "bob"));
    assert_int_equal(recipients_in("carol.eml"), 1);
    /* the OpenPGP ones: PGP/MIME, alice's for her alone, dan's for him */
    variant_to_file(&job, k, va, "alice.eml", &plain);
    assert_non_null(strstr(plain.data, "multipart/encrypted"));
    buf_free(&plain);
    variant_to_file(&job, k, vd, "dan.eml", &plain);
    assert_non_null(strstr(plain.data, "multipart/encrypted"));
    buf_free(&plain);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(sh("gpg --homedir gpg --batch --quiet --list-packets %s.eml 2>/dev/null "
                            "| grep -c '^:pubkey enc packet' | grep -qx 1",
                            pgp_names[i]),
                         0);
    }
    variant_to_file(&job, k, vx, "eve.eml", &plain);
    assert_null(strstr(plain.data, "Bcc"));
    assert_non_null(strstr(plain.data, "body\r\n"));
    buf_free(&plain);
    gateway_job_release(&job);
    crypto_homes_remove(homes);
    seal_keyring_free(k);
    free((char *)bob.armored);
    free((char *)ec.armored);
    free((char *)carol.armored);
    for (int i = 0; i < 2; i++) {
        free((char *)pgp[i].fpr);
        free((char *)pgp[i].armored);
    }
    sh("gpgconf --homedir gpg --kill gpg-agent 2>/dev/null || true");
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
        cmocka_unit_test(test_encrypt_rsa),
        cmocka_unit_test(test_encrypt_ec_and_mixed),
        cmocka_unit_test(test_encrypt_refuses),
        cmocka_unit_test(test_gpgsm_decrypts_the_default),
        cmocka_unit_test(test_gateway_groups_by_method),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
