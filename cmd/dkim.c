/* sealpost dkim: the DKIM signing keys the workers sign with, stored in
 * Redis so every worker sees a change within a second. A private key is
 * made (or read) here, sealed under the cluster key at once and stored only
 * sealed; it is wiped from memory after use and never printed. What is
 * printed is the DNS record to publish, as a zone-file line. */
#include "cmd/cmd.h"
#include "crypto/crypto.h"
#include "queue/admin.h"

#include <getopt.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char usage[] =
    "usage: sealpost dkim keygen DOMAIN [--selector S] [--algorithm ed25519|rsa] [--bits N]\n"
    "                                         make a key, store it sealed, print its DNS record\n"
    "       sealpost dkim import DOMAIN SELECTOR FILE|-\n"
    "                                         the same for a PEM private key made elsewhere\n"
    "       sealpost dkim list                every key: domain, selector, algorithm, created,\n"
    "                                         active or inactive, DNS record\n"
    "       sealpost dkim activate DOMAIN SELECTOR   make it the one that signs\n"
    "       sealpost dkim delete DOMAIN SELECTOR\n"
    "       sealpost dkim authenticate        tag every stored key as it is (once after an\n"
    "                                         upgrade): workers sign with tagged keys only\n"
    "   (each with [-c FILE])\n"
    "\n"
    "The workers sign each message with the active key of each algorithm of the\n"
    "domain of its From (else of [dkim] default_domain). The algorithm is ed25519\n"
    "unless told (RSA: 2048 bits unless told, up to 8192); the selector is\n"
    "ALGORITHM-YYYYMMDD unless told. A domain holds at most two selectors per\n"
    "algorithm: the first signs at once, a second waits for `activate` (publish\n"
    "its record first), and the old one is deleted once the new one signs.\n";

/* What the command line said. */
struct dkim_args {
    const char *path; /* -c FILE */
    const char *selector;
    const char *algorithm;
    const char *bits;
    const char *action;
    char *const *words; /* after the action */
    int n_words;
};

/* An imported key file's most; dkim_key_load reads no more either. */
#define KEY_FILE_MAX ((size_t)64 * 1024)

/* -1 to go on, else the exit code. */
static int parse_args(int argc, char **argv, struct dkim_args *da)
{
    static const struct option options[] = {
        {"config", required_argument, NULL, 'c'},
        {"selector", required_argument, NULL, 's'},
        {"algorithm", required_argument, NULL, 'a'},
        {"bits", required_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:h", options, NULL)) != -1) {
        if (opt == 'c')
            da->path = optarg;
        else if (opt == 's')
            da->selector = optarg;
        else if (opt == 'a')
            da->algorithm = optarg;
        else if (opt == 'b')
            da->bits = optarg;
        else {
            fputs(usage, opt == 'h' ? stdout : stderr);
            return opt == 'h' ? 0 : 2;
        }
    }
    da->action = optind < argc ? argv[optind] : "";
    da->words = argv + optind + (optind < argc);
    da->n_words = argc - optind - (optind < argc);
    static const struct {
        const char *name;
        int words;
    } actions[] = {{"keygen", 1},   {"import", 3}, {"list", 0},
                   {"activate", 2}, {"delete", 2}, {"authenticate", 0}};
    bool keygen = !strcmp(da->action, "keygen");
    for (size_t i = 0; i < sizeof actions / sizeof actions[0]; i++)
        if (!strcmp(da->action, actions[i].name) && da->n_words == actions[i].words &&
            (keygen || (!da->selector && !da->algorithm && !da->bits)))
            return -1;
    fputs(usage, stderr);
    return 2;
}

/* name lower-cased into out and checked as a signing domain or a selector;
 * false (said why) when it is not one. */
static bool take_name(const char *name, bool domain, char out[254])
{
    bool fits = strlen(name) < 254;
    snprintf(out, 254, "%s", fits ? name : "");
    util_ascii_lower(out);
    if (fits && (domain ? dkim_domain_valid(out) : dkim_selector_valid(out))) return true;
    fprintf(stderr,
            domain ? "sealpost: '%s' is not a signing domain (two or more labels of letters, "
                     "digits and hyphens)\n"
                   : "sealpost: '%s' is not a selector (labels of letters, digits and hyphens, "
                     "separated by dots)\n",
            name);
    return false;
}

/* ---- storing a key: keygen and import ---- */

struct store {
    queue_admin_t *admin;
    const seal_keyring_t *seal;
    char domain[254], selector[254];
};

/* What to do next, on stderr: stdout holds the record alone. */
static void say_stored(const struct store *st, const char *algorithm, bool active)
{
    if (active)
        fprintf(stderr,
                "sealpost: %s %s (%s) stored and active: the workers sign with it within a "
                "second; publish the record above in DNS\n",
                st->domain, st->selector, algorithm);
    else
        fprintf(stderr,
                "sealpost: %s %s (%s) stored, inactive: publish the record above in DNS, then "
                "`sealpost dkim activate %s %s`\n",
                st->domain, st->selector, algorithm, st->domain, st->selector);
}

/* Loads pem (checked as a DKIM key here, as the workers will load it),
 * seals and stores it, and prints its zone line. The caller wipes pem. */
static int store_key(const struct store *st, const char *pem, size_t pem_len)
{
    char err[600], context[600];
    dkim_key_t *key = dkim_key_load(pem, pem_len, err, sizeof err);
    if (!key) {
        fprintf(stderr, "sealpost: refused: %s\n", err);
        return 1;
    }
    buf_t record, line, sealed;
    buf_init(&record);
    buf_init(&line);
    buf_init(&sealed);
    snprintf(context, sizeof context, "dkim:%s:%s", st->domain, st->selector);
    int rc = dkim_key_record(key, &record) < 0 || record.len == 0 ||
                     dkim_zone_line(st->domain, st->selector, record.data, &line) < 0 ||
                     seal_body(st->seal, context, pem, pem_len, &sealed) < 0
                 ? -1
                 : 0;
    const char *algorithm = dkim_algorithm_name(dkim_key_algorithm(key));
    dkim_key_free(key);
    if (rc < 0)
        snprintf(err, sizeof err, "cannot make the record or seal the key (out of memory?)");
    queue_dkim_key_t k = {.record = record.data, .sealed = sealed.data, .sealed_len = sealed.len};
    snprintf(k.domain, sizeof k.domain, "%s", st->domain);
    snprintf(k.selector, sizeof k.selector, "%s", st->selector);
    snprintf(k.algorithm, sizeof k.algorithm, "%s", algorithm);
    if (rc == 0) /* the workers sign with no key whose tag does not hold (issue 18) */
        keydir_dkim_tag(st->seal, k.domain, k.selector, k.algorithm, k.record, k.sealed,
                        k.sealed_len, k.tag);
    bool active = false;
    if (rc == 0) rc = queue_admin_dkim_put(st->admin, &k, &active, err, sizeof err);
    if (rc == 0) {
        printf("%s\n", line.data);
        fflush(stdout);
        say_stored(st, algorithm, active);
    } else {
        fprintf(stderr, "sealpost: %s\n", err);
    }
    buf_free(&record);
    buf_free(&line);
    buf_free(&sealed);
    return rc == 0 ? 0 : 1;
}

static int keygen(const struct store *st, enum dkim_algorithm algorithm, unsigned bits)
{
    char err[600];
    buf_t pem;
    buf_init(&pem);
    if (dkim_keygen(algorithm, bits, &pem, err, sizeof err) < 0) {
        fprintf(stderr, "sealpost: %s\n", err);
        return 1;
    }
    int rc = store_key(st, pem.data, pem.len);
    if (pem.data) sodium_memzero(pem.data, pem.cap);
    buf_free(&pem);
    return rc;
}

/* Reads the whole of file ("-": stdin) into pem, whose room is reserved
 * first so that no copy of the key is left behind by a realloc. */
static int read_key_file(const char *file, buf_t *pem)
{
    FILE *f = strcmp(file, "-") ? fopen(file, "rb") : stdin;
    if (!f) {
        fprintf(stderr, "sealpost: cannot open %s\n", file);
        return -1;
    }
    /* Unbuffered: fread then reads straight into pem, and leaves no copy of
     * the key in a stdio buffer that fclose frees unwiped. */
    setvbuf(f, NULL, _IONBF, 0);
    int rc = buf_reserve(pem, KEY_FILE_MAX + 1) < 0 ? -1 : 0;
    while (rc == 0 && !feof(f) && pem->len <= KEY_FILE_MAX) {
        size_t n = fread(pem->data + pem->len, 1, KEY_FILE_MAX + 1 - pem->len, f);
        if (n == 0 && ferror(f)) rc = -1;
        pem->len += n;
    }
    if (rc == 0 && pem->len > KEY_FILE_MAX) {
        fprintf(stderr, "sealpost: %s is over %zu octets: not a key\n", file, KEY_FILE_MAX);
        rc = -1;
    } else if (rc < 0) {
        fprintf(stderr, "sealpost: cannot read %s\n", file);
    }
    if (f != stdin) fclose(f);
    return rc;
}

static int import(const struct store *st, const char *file)
{
    buf_t pem;
    buf_init(&pem);
    int rc = read_key_file(file, &pem) < 0 ? 1 : store_key(st, pem.data, pem.len);
    if (pem.data) sodium_memzero(pem.data, pem.cap);
    buf_free(&pem);
    return rc;
}

/* ---- list, activate, delete ---- */

/* What Redis holds is printed with every octet that is not printable ASCII
 * (and the backslash) as \xHH, so a damaged or planted value cannot drive
 * the terminal. */
static void print_escaped(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p > 0x7e || *p == '\\')
            printf("\\x%02x", *p);
        else
            putchar(*p);
}

static void print_key(const queue_dkim_key_t *k, void *arg)
{
    (void)arg;
    buf_t line;
    buf_init(&line);
    bool printable = dkim_zone_line(k->domain, k->selector, k->record, &line) == 0;
    const char *const fields[] = {k->domain, k->selector, k->algorithm};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        print_escaped(fields[i]);
        putchar(' ');
    }
    cmd_print_time(k->created);
    printf(" %s ", k->active ? "active" : "inactive");
    if (k->malformed) {
        fputs("unreadable: ", stdout); /* record holds why */
        print_escaped(k->record);
    } else if (printable) {
        fputs(line.data, stdout);
    } else {
        fputs("(record not printable: \"", stdout);
        print_escaped(k->record);
        fputs("\")", stdout);
    }
    putchar('\n');
    buf_free(&line);
}

/* What a delete touches: the selector, and the other one of its algorithm
 * in the domain, if any (a domain holds four selectors at most). */
struct pair {
    const char *domain, *selector;
    bool found, active;
    char algorithm[8];
    struct {
        char selector[254], algorithm[8];
    } seen[4];
    unsigned n_seen;
};

static void find_pair(const queue_dkim_key_t *k, void *arg)
{
    struct pair *p = arg;
    if (strcmp(k->domain, p->domain)) return;
    if (!strcmp(k->selector, p->selector)) {
        p->found = true;
        p->active = k->active;
        snprintf(p->algorithm, sizeof p->algorithm, "%s", k->algorithm);
    } else if (p->n_seen < sizeof p->seen / sizeof p->seen[0]) {
        snprintf(p->seen[p->n_seen].selector, sizeof p->seen[0].selector, "%s", k->selector);
        snprintf(p->seen[p->n_seen++].algorithm, sizeof p->seen[0].algorithm, "%s", k->algorithm);
    }
}

static const char *other_selector(const struct pair *p)
{
    for (unsigned i = 0; i < p->n_seen; i++)
        if (!strcmp(p->seen[i].algorithm, p->algorithm)) return p->seen[i].selector;
    return NULL;
}

/* Deleting the active selector leaves its algorithm unsigned for the
 * domain: said, with the selector to activate when there is one. */
static int delete_key(queue_admin_t *a, struct pair *p)
{
    char err[600];
    int found = queue_admin_dkim_list(a, find_pair, p, err, sizeof err) < 0
                    ? -1
                    : queue_admin_dkim_delete(a, p->domain, p->selector, err, sizeof err);
    if (found < 0) fprintf(stderr, "sealpost: %s\n", err);
    if (found == 0) fprintf(stderr, "sealpost: no DKIM key %s of %s\n", p->selector, p->domain);
    if (found <= 0) return 1;
    printf("deleted: %s %s\n", p->domain, p->selector);
    const char *other = other_selector(p);
    if (p->active && other)
        fprintf(stderr,
                "sealpost: %s has no active %s key now, so it is not signed with %s: "
                "`sealpost dkim activate %s %s` (its record published) makes %s sign\n",
                p->domain, p->algorithm, p->algorithm, p->domain, other, other);
    else if (p->active)
        fprintf(stderr,
                "sealpost: %s has no %s key now, so it is not signed with %s: "
                "`sealpost dkim keygen %s --algorithm %s` makes one\n",
                p->domain, p->algorithm, p->algorithm, p->domain, p->algorithm);
    return 0;
}

static int activate_key(queue_admin_t *a, const char *domain, const char *selector)
{
    char err[600];
    int found = queue_admin_dkim_activate(a, domain, selector, err, sizeof err);
    if (found < 0) fprintf(stderr, "sealpost: %s\n", err);
    if (found == 0) fprintf(stderr, "sealpost: no DKIM key %s of %s\n", selector, domain);
    if (found > 0) printf("activated: %s %s\n", domain, selector);
    return found > 0 ? 0 : 1;
}

/* ---- the command ---- */

/* The selector keygen uses unless told: the algorithm and today (UTC). */
static void default_selector(const char *algorithm, char out[254])
{
    char day[16];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(day, sizeof day, "%Y%m%d", &tm);
    snprintf(out, 254, "%s-%s", algorithm, day);
}

/* keygen's algorithm and bits; false (said why) when they are not ones. */
static bool take_algorithm(const struct dkim_args *da, enum dkim_algorithm *algorithm,
                           unsigned *bits)
{
    *algorithm = DKIM_ED25519;
    *bits = 0;
    if (da->algorithm && dkim_algorithm_parse(da->algorithm, algorithm) < 0) {
        fprintf(stderr, "sealpost: '%s' is not an algorithm: ed25519 or rsa\n", da->algorithm);
        return false;
    }
    if (!da->bits) return true;
    char *end;
    unsigned long v = strtoul(da->bits, &end, 10);
    if (*algorithm != DKIM_RSA || !*da->bits || *end || v < 2048 || v > 8192) {
        fprintf(stderr, "sealpost: --bits is for rsa keys, from 2048 to 8192\n");
        return false;
    }
    *bits = (unsigned)v;
    return true;
}

/* The domain and selector the action names, checked. */
static bool take_names(const struct dkim_args *da, enum dkim_algorithm algorithm, struct store *st)
{
    if (strcmp(da->action, "keygen") && strcmp(da->action, "list") && da->n_words >= 2)
        return take_name(da->words[0], true, st->domain) &&
               take_name(da->words[1], false, st->selector);
    if (strcmp(da->action, "keygen")) return true;
    if (!take_name(da->words[0], true, st->domain)) return false;
    if (da->selector) return take_name(da->selector, false, st->selector);
    default_selector(dkim_algorithm_name(algorithm), st->selector);
    return true;
}

struct tagging {
    const struct store *st;
    unsigned tagged, skipped;
    int failed;
};

static void tag_one(const queue_dkim_key_t *k, void *arg)
{
    struct tagging *t = arg;
    char tag[SEAL_MAC_LEN + 1], err[600];
    if (k->malformed) {
        fprintf(stderr, "sealpost: %s %s: unreadable, not tagged: %s\n", k->domain, k->selector,
                k->record);
        t->skipped++;
        return;
    }
    keydir_dkim_tag(t->st->seal, k->domain, k->selector, k->algorithm, k->record, k->sealed,
                    k->sealed_len, tag);
    int rc = queue_admin_dkim_tag(t->st->admin, k, tag, err, sizeof err);
    if (rc < 0) {
        fprintf(stderr, "sealpost: %s\n", err);
        t->failed = 1;
    } else if (rc == 0) {
        fprintf(stderr, "sealpost: %s %s changed meanwhile: not tagged, run it again\n", k->domain,
                k->selector);
        t->skipped++;
    } else {
        t->tagged++;
    }
}

/* dkim authenticate: every key as stored now is taken as the operator's. */
static int authenticate(const struct store *st)
{
    struct tagging t = {.st = st};
    char err[600];
    if (queue_admin_dkim_list(st->admin, tag_one, &t, err, sizeof err) < 0) {
        fprintf(stderr, "sealpost: %s\n", err);
        return 1;
    }
    printf("DKIM keys authenticated: %u\n", t.tagged);
    return t.failed || t.skipped ? 1 : 0;
}

static int run(const struct dkim_args *da, struct store *st, enum dkim_algorithm algorithm,
               unsigned bits, config_t *cfg)
{
    char err[600];
    int rc = 0;
    if (!strcmp(da->action, "keygen") || !strcmp(da->action, "import") ||
        !strcmp(da->action, "authenticate")) {
        seal_keyring_t *seal = cmd_seal_keyring(cfg, st->admin, &rc);
        if (!seal) return rc;
        st->seal = seal;
        rc = !strcmp(da->action, "keygen")   ? keygen(st, algorithm, bits)
             : !strcmp(da->action, "import") ? import(st, da->words[2])
                                             : authenticate(st);
        seal_keyring_free(seal);
    } else if (!strcmp(da->action, "list")) {
        rc = queue_admin_dkim_list(st->admin, print_key, NULL, err, sizeof err) < 0;
        if (rc) fprintf(stderr, "sealpost: %s\n", err);
    } else if (!strcmp(da->action, "activate")) {
        rc = activate_key(st->admin, st->domain, st->selector);
    } else {
        struct pair p = {.domain = st->domain, .selector = st->selector};
        rc = delete_key(st->admin, &p);
    }
    return rc;
}

int cmd_dkim(int argc, char **argv)
{
    struct dkim_args da = {0};
    int done = parse_args(argc, argv, &da);
    if (done >= 0) return done;
    enum dkim_algorithm algorithm = DKIM_ED25519;
    unsigned bits = 0;
    struct store st = {0};
    if ((!strcmp(da.action, "keygen") && !take_algorithm(&da, &algorithm, &bits)) ||
        !take_names(&da, algorithm, &st))
        return 1;
    config_t cfg;
    int rc = 0;
    st.admin = cmd_admin_open(da.path, &cfg, &rc);
    if (!st.admin) return rc;
    rc = run(&da, &st, algorithm, bits, &cfg);
    queue_admin_close(st.admin);
    return rc;
}
