/* The DKIM library of crypto/ on the command line, for the tests that check
 * it against other implementations (tests/integration/test_dkim_canon.py)
 * and for bench/dkim.py:
 *
 *   dkim_tool canon-body < body             the relaxed canonical body
 *   dkim_tool canon-header < field          one field's relaxed canonical form
 *   dkim_tool record KEY.pem                the key's TXT record text
 *   dkim_tool sign KEY.pem DOMAIN SELECTOR NOW [KEY2.pem SELECTOR2] < msg
 *                                           the message with its signatures
 *   dkim_tool bench N < msg                 microseconds per dkim_sign, per
 *                                           algorithm, with keys made here
 *
 * Exit 0, or 1 with a line on stderr. */
#include "crypto/crypto.h"
#include "crypto/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int read_all(FILE *in, buf_t *b)
{
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, in)) > 0)
        if (buf_append(b, chunk, n) < 0) return -1;
    return ferror(in) ? -1 : 0;
}

/* A whole decimal number, or -1. */
static long long number(const char *text)
{
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    return end != text && *end == 0 && v >= 0 ? v : -1;
}

static int fail(const char *what, const char *why)
{
    fprintf(stderr, "dkim_tool: %s: %s\n", what, why);
    return 1;
}

static dkim_key_t *load_key_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s", path);
        return NULL;
    }
    buf_t pem;
    buf_init(&pem);
    dkim_key_t *k = NULL;
    if (read_all(f, &pem) == 0)
        k = dkim_key_load(pem.data, pem.len, err, errlen);
    else
        snprintf(err, errlen, "cannot read %s", path);
    fclose(f);
    buf_free(&pem);
    return k;
}

static int write_out(const buf_t *a, const buf_t *b)
{
    if (a->len && fwrite(a->data, 1, a->len, stdout) != a->len) return 1;
    if (b && b->len && fwrite(b->data, 1, b->len, stdout) != b->len) return 1;
    return fflush(stdout) == 0 ? 0 : 1;
}

static int cmd_canon(bool body, const buf_t *in)
{
    buf_t out;
    buf_init(&out);
    int rc = body ? dkim_canon_body(in->data, in->len, &out)
                  : dkim_canon_header(in->data, in->len, &out);
    int status =
        rc < 0 ? fail(body ? "canon-body" : "canon-header", "refused") : write_out(&out, NULL);
    buf_free(&out);
    return status;
}

static int cmd_record(const char *path)
{
    char err[256];
    dkim_key_t *k = load_key_file(path, err, sizeof err);
    if (!k) return fail("record", err);
    buf_t rec;
    buf_init(&rec);
    int status = dkim_key_record(k, &rec) < 0 ? fail("record", "failed") : 0;
    if (status == 0) printf("%s\n", rec.data);
    buf_free(&rec);
    dkim_key_free(k);
    return status;
}

/* argv: KEY.pem DOMAIN SELECTOR NOW [KEY2.pem SELECTOR2] */
static int cmd_sign(int argc, char **argv, const buf_t *msg)
{
    if (argc != 4 && argc != 6) return fail("sign", "KEY.pem DOMAIN SELECTOR NOW [KEY2 SEL2]");
    char err[256];
    dkim_key_t *keys[2] = {NULL, NULL};
    dkim_signer_t signers[2];
    unsigned n = argc == 6 ? 2 : 1;
    int status = 0;
    for (unsigned i = 0; i < n && status == 0; i++) {
        keys[i] = load_key_file(argv[i ? 4 : 0], err, sizeof err);
        if (!keys[i]) status = fail("sign", err);
        signers[i] = (dkim_signer_t){keys[i], argv[1], argv[i ? 5 : 2]};
    }
    buf_t out;
    buf_init(&out);
    long long now = number(argv[3]);
    if (status == 0 && now < 0) status = fail("sign", "NOW is seconds since 1970");
    if (status == 0 &&
        dkim_sign(msg->data, msg->len, signers, n, now, 0, &out, err, sizeof err) < 0)
        status = fail("sign", err);
    if (status == 0) status = write_out(&out, msg);
    buf_free(&out);
    for (unsigned i = 0; i < 2; i++)
        dkim_key_free(keys[i]);
    return status;
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* One line per algorithm: "ed25519 <µs per signature>". */
static int cmd_bench(long times, const buf_t *msg)
{
    if (times <= 0) return fail("bench", "N must be positive");
    char err[256];
    for (unsigned a = 0; a < DKIM_ALGORITHMS; a++) {
        buf_t pem, out;
        buf_init(&pem);
        buf_init(&out);
        if (dkim_keygen((enum dkim_algorithm)a, 0, &pem, err, sizeof err) < 0)
            return fail("bench", err);
        dkim_key_t *k = dkim_key_load(pem.data, pem.len, err, sizeof err);
        buf_free(&pem);
        if (!k) return fail("bench", err);
        dkim_signer_t s = {k, "bench.example", "s1"};
        double start = now_us();
        for (long i = 0; i < times; i++) {
            buf_reset(&out);
            if (dkim_sign(msg->data, msg->len, &s, 1, 1700000000, 0, &out, err, sizeof err) < 0)
                return fail("bench", err);
        }
        printf("%s %.1f\n", dkim_algorithm_name((enum dkim_algorithm)a),
               (now_us() - start) / (double)times);
        dkim_key_free(k);
        buf_free(&out);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) return fail("usage", "canon-body|canon-header|record|sign|bench ...");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "record") && argc == 3) return cmd_record(argv[2]);
    buf_t in;
    buf_init(&in);
    if (read_all(stdin, &in) < 0) return fail(cmd, "cannot read stdin");
    int status;
    if (!strcmp(cmd, "canon-body") || !strcmp(cmd, "canon-header"))
        status = cmd_canon(!strcmp(cmd, "canon-body"), &in);
    else if (!strcmp(cmd, "sign"))
        status = cmd_sign(argc - 2, argv + 2, &in);
    else if (!strcmp(cmd, "bench") && argc == 3)
        status = cmd_bench((long)number(argv[2]), &in);
    else
        status = fail("usage", "canon-body|canon-header|record|sign|bench ...");
    buf_free(&in);
    return status;
}
