/* Configuration: one table of keys, each with a type, a place in config_t and a
 * default written as the text a user would put in the file. Defaults, the file
 * and the environment all go through the same setter, so they are checked alike. */
#include "core/core.h"

#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

extern char **environ;

enum key_type {
    T_STRING,
    T_UINT,
    T_SIZE,
    T_HOSTPORT,
    T_DOMAINS,
    T_CIDRS,
    T_LOGLEVEL,
    T_PORT,
    T_TLS_POLICY,
    T_BOOL,
    T_SECRET, /* a string that config_print never shows */
    T_URL,    /* a string whose password (user:password@) config_print never shows */
    T_ENC_POLICY,
    T_CHOICE, /* one of the spec's choices, stored as its index (unsigned) */
    T_DOMAIN  /* one signing domain (two labels at least), lower-cased, or "" for none */
};

/* The index of value (any case) among the n names, or -1: the settings
 * that take one of a few words. */
static int name_index(const char *value, const char *const *names)
{
    for (int i = 0; names[i]; i++)
        if (!strcasecmp(value, names[i])) return i;
    return -1;
}

static const char *const tls_policy_names[] = {"none", "opportunistic", "verify", NULL};

static int parse_tls_policy(const char *value, enum tls_policy *out)
{
    int i = name_index(value, tls_policy_names);
    if (i >= 0) *out = (enum tls_policy)i;
    return i < 0 ? -1 : 0;
}

static const char *const enc_policy_names[] = {"never", "opportunistic", "required", NULL};

int config_parse_enc_policy(const char *value, enum enc_policy *out)
{
    int i = name_index(value, enc_policy_names);
    if (i >= 0) *out = (enum enc_policy)i;
    return i < 0 ? -1 : 0;
}

const char *config_enc_policy_name(enum enc_policy p)
{
    return enc_policy_names[p];
}

/* The names a T_CHOICE key takes, NULL-terminated, each list in the order
 * of its enum in core.h. */
enum choice_list {
    CHOICE_SMIME_CIPHER,
    CHOICE_SMIME_RSA_PADDING,
    CHOICE_ENC_PREFER,
    CHOICE_OPENPGP_ENGINE,
    CHOICE_KEY_CHANGE,
    CHOICE_TRUST
};
static const char *const *const choice_lists[] = {
    [CHOICE_SMIME_CIPHER] = (const char *const[]){"aes256-cbc", "aes256-gcm", NULL},
    [CHOICE_SMIME_RSA_PADDING] = (const char *const[]){"pkcs1", "oaep", NULL},
    [CHOICE_ENC_PREFER] = (const char *const[]){"openpgp", "smime", NULL},
    [CHOICE_OPENPGP_ENGINE] = (const char *const[]){"gpgme", "rnp", NULL},
    [CHOICE_KEY_CHANGE] = (const char *const[]){"accept", "keep-old", NULL},
    [CHOICE_TRUST] = (const char *const[]){"discovered", "imported", NULL},
};

int config_parse_enc_prefer(const char *value, enum enc_prefer *out)
{
    int i = name_index(value, choice_lists[CHOICE_ENC_PREFER]);
    if (i >= 0) *out = (enum enc_prefer)i;
    return i < 0 ? -1 : 0;
}

const char *config_enc_prefer_name(enum enc_prefer p)
{
    return choice_lists[CHOICE_ENC_PREFER][p];
}

int config_parse_trust(const char *value, enum config_trust *out)
{
    int i = name_index(value, choice_lists[CHOICE_TRUST]);
    if (i >= 0) *out = (enum config_trust)i;
    return i < 0 ? -1 : 0;
}

const char *config_trust_name(enum config_trust t)
{
    return choice_lists[CHOICE_TRUST][t];
}

typedef struct key_spec {
    const char *section;
    const char *name;
    enum key_type type;
    size_t offset;
    size_t size;                 /* for strings: the buffer size */
    unsigned long long min, max; /* T_CHOICE: min says which of choice_lists */
    const char *def;
} key_spec_t;

#define OFF(field) offsetof(config_t, field), sizeof(((config_t *)0)->field)

static const key_spec_t keys[] = {
    {"redis", "url", T_URL, OFF(redis.url), 0, 0, ""},
    {"redis", "shards", T_UINT, OFF(redis.shards), 1, 16384, "128"},
    {"redis", "timeout_ms", T_UINT, OFF(redis.timeout_ms), 10, 600000, "2000"},
    {"redis", "username", T_STRING, OFF(redis.username), 0, 0, ""},
    {"redis", "password_file", T_STRING, OFF(redis.password_file), 0, 0, ""},
    {"redis", "tls_ca_file", T_STRING, OFF(redis.tls_ca_file), 0, 0, ""},
    {"redis", "tls_cert", T_STRING, OFF(redis.tls_cert), 0, 0, ""},
    {"redis", "tls_key", T_STRING, OFF(redis.tls_key), 0, 0, ""},
    {"redis", "tls_server_name", T_STRING, OFF(redis.tls_server_name), 0, 0, ""},

    {"queue", "min_replicas", T_UINT, OFF(queue.min_replicas), 0, 16, "0"},
    {"queue", "replica_timeout_ms", T_UINT, OFF(queue.replica_timeout_ms), 1, 600000, "500"},

    {"ingress", "listen", T_HOSTPORT, OFF(ingress.listen), 0, 0, "127.0.0.1:2525"},
    {"ingress", "submission_listen", T_HOSTPORT, OFF(ingress.submission_listen), 0, 0, ""},
    {"ingress", "smtps_listen", T_HOSTPORT, OFF(ingress.smtps_listen), 0, 0, ""},
    {"ingress", "hostname", T_STRING, OFF(ingress.hostname), 0, 0, ""},
    /* Redis refuses bulk strings over 512 MB (proto-max-bulk-len): stay below. */
    {"ingress", "max_message_size", T_SIZE, OFF(ingress.max_message_size), 1024, 500ULL << 20,
     "26214400"},
    {"ingress", "max_recipients", T_UINT, OFF(ingress.max_recipients), 1, 100000, "1000"},
    {"ingress", "max_line_length", T_UINT, OFF(ingress.max_line_length), 1000, 65536, "1000"},
    {"ingress", "max_connections", T_UINT, OFF(ingress.max_connections), 1, 1000000, "1000"},
    {"ingress", "max_connections_per_ip", T_UINT, OFF(ingress.max_connections_per_ip), 1, 1000000,
     "50"},
    /* Trusted networks are exempt from max_connections_per_ip until the
     * node is under stress; then they get this higher limit (10x). */
    {"ingress", "max_connections_per_trusted_ip", T_UINT,
     OFF(ingress.max_connections_per_trusted_ip), 1, 1000000, "500"},
    /* Connections admitted per minute from one address (an IPv6 /64);
     * 0: no limit. Trusted networks are exempt. */
    {"ingress", "max_connection_rate", T_UINT, OFF(ingress.max_connection_rate), 0, 1000000, "600"},
    {"ingress", "max_errors", T_UINT, OFF(ingress.max_errors), 1, 1000, "20"},
    /* Stress: from this percentage of max_connections open (0: never),
     * the limits below replace command_timeout and max_errors. */
    {"ingress", "stress_threshold", T_UINT, OFF(ingress.stress_threshold), 0, 100, "75"},
    {"ingress", "stress_command_timeout", T_UINT, OFF(ingress.stress_command_timeout), 1, 86400,
     "10"},
    {"ingress", "stress_max_errors", T_UINT, OFF(ingress.stress_max_errors), 1, 1000, "1"},
    /* NOOP, RSET, VRFY, HELP and repeated HELO/EHLO a session may send
     * before each one counts as an error (Postfix's smtpd_junk_command_limit, ${stress?1}{100}). */
    {"ingress", "junk_command_limit", T_UINT, OFF(ingress.junk_command_limit), 1, 100000, "100"},
    {"ingress", "postmaster", T_STRING, OFF(ingress.postmaster), 0, 0, ""},
    {"ingress", "auth_mechanisms", T_STRING, OFF(ingress.auth_mechanisms), 0, 0, "PLAIN LOGIN"},
    {"ingress", "auth_fail_limit", T_UINT, OFF(ingress.auth_fail_limit), 1, 100000, "5"},
    {"ingress", "auth_fail_window", T_UINT, OFF(ingress.auth_fail_window), 1, 86400, "300"},
    {"ingress", "sender_login_match", T_BOOL, OFF(ingress.sender_login_match), 0, 0, "no"},
    {"ingress", "tls_cert", T_STRING, OFF(ingress.tls_cert), 0, 0, ""},
    {"ingress", "tls_key", T_STRING, OFF(ingress.tls_key), 0, 0, ""},
    /* TLS 1.2 suites: forward secret only, AEAD first (TLS 1.3 has its own). */
    {"ingress", "tls_ciphers", T_STRING, OFF(ingress.tls_ciphers), 0, 0,
     "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:ECDHE+AES:!aNULL"},
    {"ingress", "command_timeout", T_UINT, OFF(ingress.command_timeout), 1, 86400, "300"},
    {"ingress", "data_timeout", T_UINT, OFF(ingress.data_timeout), 1, 86400, "600"},
    /* Octets per second DATA and BDAT content must keep up; see session.c. */
    {"ingress", "min_data_rate", T_UINT, OFF(ingress.min_data_rate), 1, 1000000000, "500"},
    {"ingress", "relay_domains", T_DOMAINS, OFF(ingress.relay_domains), 0, 0, ""},
    {"ingress", "trusted_networks", T_CIDRS, OFF(ingress.trusted_networks), 0, 0,
     "127.0.0.0/8 ::1/128"},
    {"ingress", "proxy_networks", T_CIDRS, OFF(ingress.proxy_networks), 0, 0, ""},

    {"worker", "concurrency", T_UINT, OFF(worker.concurrency), 1, 10000, "20"},
    {"worker", "lease_seconds", T_UINT, OFF(worker.lease_seconds), 1, 86400, "300"},
    {"worker", "min_backoff", T_UINT, OFF(worker.min_backoff), 1, 86400, "300"},
    {"worker", "max_backoff", T_UINT, OFF(worker.max_backoff), 1, 604800, "3600"},
    {"worker", "max_queue_lifetime", T_UINT, OFF(worker.max_queue_lifetime), 1, 31536000, "432000"},
    {"worker", "max_lease_expiries", T_UINT, OFF(worker.max_lease_expiries), 1, 1000, "5"},
    {"worker", "delay_warning_time", T_UINT, OFF(worker.delay_warning_time), 0, 31536000, "0"},
    {"worker", "connect_timeout", T_UINT, OFF(worker.connect_timeout), 1, 3600, "30"},
    {"worker", "command_timeout", T_UINT, OFF(worker.command_timeout), 1, 3600, "300"},
    {"worker", "data_timeout", T_UINT, OFF(worker.data_timeout), 1, 3600, "600"},
    {"worker", "helo_name", T_STRING, OFF(worker.helo_name), 0, 0, ""},
    {"worker", "relayhost", T_HOSTPORT, OFF(worker.relayhost), 0, 0, ""},
    {"worker", "dns_servers", T_STRING, OFF(worker.dns_servers), 0, 0, ""},
    {"worker", "smtp_port", T_PORT, OFF(worker.smtp_port), 1, 65535, "25"},
    {"worker", "destination_concurrency", T_UINT, OFF(worker.destination_concurrency), 1, 10000,
     "20"},
    {"worker", "connection_cache_time", T_UINT, OFF(worker.connection_cache_time), 0, 300, "2"},
    {"worker", "stop_grace", T_UINT, OFF(worker.stop_grace), 0, 3600, "10"},
    {"worker", "accept_unauthenticated", T_BOOL, OFF(worker.accept_unauthenticated), 0, 0, "no"},
    {"worker", "tls_policy", T_TLS_POLICY, OFF(worker.tls_policy), 0, 0, "opportunistic"},
    {"worker", "tls_ca_file", T_STRING, OFF(worker.tls_ca_file), 0, 0, ""},

    {"up", "data_dir", T_STRING, OFF(up.data_dir), 0, 0, "./var"},
    {"up", "redis_server", T_STRING, OFF(up.redis_server), 0, 0, "redis-server"},
    {"up", "redis_port", T_PORT, OFF(up.redis_port), 1, 65535, "6380"},

    {"seal", "key_file", T_STRING, OFF(seal.key_file), 0, 0, ""},
    {"seal", "keys", T_SECRET, OFF(seal.keys), 0, 0, ""},

    {"crypto", "default_policy", T_ENC_POLICY, OFF(crypto.default_policy), 0, 0, "opportunistic"},
    {"crypto", "prefer", T_CHOICE, OFF(crypto.prefer), CHOICE_ENC_PREFER, 0, "openpgp"},
    {"crypto", "case_insensitive", T_BOOL, OFF(crypto.case_insensitive), 0, 0, "yes"},
    {"crypto", "strip_detail", T_BOOL, OFF(crypto.strip_detail), 0, 0, "no"},
    {"crypto", "hide_subject", T_BOOL, OFF(crypto.hide_subject), 0, 0, "yes"},
    {"crypto", "legacy_display", T_BOOL, OFF(crypto.legacy_display), 0, 0, "yes"},
    {"crypto", "max_pending", T_UINT, OFF(crypto.max_pending), 1, 100000, "64"},
    {"crypto", "max_bcc_copies", T_UINT, OFF(crypto.max_bcc_copies), 1, 100000, "20"},
    {"crypto", "home_dir", T_STRING, OFF(crypto.home_dir), 0, 0, ""},
    /* Seconds one gpg operation may take before it is killed and the
     * message refused with 451 4.7.0. */
    {"crypto", "engine_timeout", T_UINT, OFF(crypto.engine_timeout), 1, 3600, "10"},
    /* S/MIME: the content cipher and the RSA key transport (enum
     * smime_cipher, enum smime_rsa_padding), the CA certificates that
     * recipients' certificates must chain to, and CRLs of theirs. */
    {"crypto", "smime_cipher", T_CHOICE, OFF(crypto.smime_cipher), CHOICE_SMIME_CIPHER, 0,
     "aes256-cbc"},
    {"crypto", "smime_rsa_padding", T_CHOICE, OFF(crypto.smime_rsa_padding),
     CHOICE_SMIME_RSA_PADDING, 0, "pkcs1"},
    {"crypto", "smime_ca_file", T_STRING, OFF(crypto.smime_ca_file), 0, 0, ""},
    {"crypto", "smime_crl_file", T_STRING, OFF(crypto.smime_crl_file), 0, 0, ""},
    {"crypto", "min_trust", T_CHOICE, OFF(crypto.min_trust), CHOICE_TRUST, 0, "discovered"},
    {"crypto", "directory_state_file", T_STRING, OFF(crypto.directory_state_file), 0, 0, ""},
    /* gpgme: a gpg process per encryption; rnp: librnp in the thread,
     * keys held in memory. */
    {"crypto", "openpgp_engine", T_CHOICE, OFF(crypto.openpgp_engine), CHOICE_OPENPGP_ENGINE, 0,
     "gpgme"},

    /* Key discovery (discovery/): WKD, then a VKS keyserver when one is named. */
    {"discovery", "timeout_ms", T_UINT, OFF(discovery.timeout_ms), 100, 60000, "2000"},
    {"discovery", "dns_servers", T_STRING, OFF(discovery.dns_servers), 0, 0, ""},
    {"discovery", "ca_file", T_STRING, OFF(discovery.ca_file), 0, 0, ""},
    {"discovery", "keyserver", T_STRING, OFF(discovery.keyserver), 0, 0, ""},
    {"discovery", "max_response", T_UINT, OFF(discovery.max_response), 4096, 16777216, "262144"},
    {"discovery", "enabled", T_BOOL, OFF(discovery.enabled), 0, 0, "no"},
    {"discovery", "negative_ttl", T_UINT, OFF(discovery.negative_ttl), 1, 2592000, "3600"},
    {"discovery", "error_ttl", T_UINT, OFF(discovery.error_ttl), 1, 2592000, "300"},
    {"discovery", "max_parallel", T_UINT, OFF(discovery.max_parallel), 1, 10000, "16"},
    {"discovery", "skip_domains", T_STRING, OFF(discovery.skip_domains), 0, 0, ""},
    {"discovery", "refresh", T_UINT, OFF(discovery.refresh), 1, 31536000, "86400"},
    {"discovery", "key_change", T_CHOICE, OFF(discovery.key_change), CHOICE_KEY_CHANGE, 0,
     "accept"},

    /* DKIM signing in the workers (delivery/signer.c); the keys are in Redis. */
    {"dkim", "default_domain", T_DOMAIN, OFF(dkim.default_domain), 0, 0, ""},
    {"dkim", "expire", T_UINT, OFF(dkim.expire), 0, 31536000, "0"},

    {"metrics", "listen", T_HOSTPORT, OFF(metrics.listen), 0, 0, ""},

    {"log", "level", T_LOGLEVEL, OFF(log.level), 0, 0, "info"},
    {"log", "redact_addresses", T_BOOL, OFF(log.redact_addresses), 0, 0, "no"},
};

#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

static const key_spec_t *find_key(const char *section, const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (!strcasecmp(keys[i].section, section) && !strcasecmp(keys[i].name, name))
            return &keys[i];
    return NULL;
}

static int parse_unsigned(const char *text, unsigned long long *out)
{
    return util_parse_decimal(text, strlen(text), out);
}

struct list_ctx {
    config_t *cfg;
    const key_spec_t *spec;
    char *err;
    size_t errlen;
};

static int add_list_item(const char *item, void *arg)
{
    struct list_ctx *lc = arg;
    config_t *cfg = lc->cfg;
    if (lc->spec->type == T_DOMAINS) {
        if (cfg->ingress.n_relay_domains >= CONFIG_MAX_LIST || !net_domain_valid(item)) {
            snprintf(lc->err, lc->errlen, "bad or too many domains: '%s'", item);
            return -1;
        }
        char *slot = cfg->ingress.relay_domains[cfg->ingress.n_relay_domains++];
        snprintf(slot, 256, "%s", item);
        util_ascii_lower(slot);
        return 0;
    }
    net_cidr_list_t *list = (net_cidr_list_t *)((char *)cfg + lc->spec->offset);
    /* "none": no network, said where an empty value cannot be (a compose
     * default); it adds nothing, so the list stays empty. */
    if (!strcmp(item, "none")) return 0;
    if (list->n >= CONFIG_MAX_LIST || net_cidr_parse(item, &list->items[list->n]) < 0) {
        snprintf(lc->err, lc->errlen, "bad or too many networks: '%s'", item);
        return -1;
    }
    list->n++;
    return 0;
}

static int set_choice(const key_spec_t *spec, const char *value, unsigned *field, char *err,
                      size_t errlen)
{
    const char *const *choices = choice_lists[spec->min];
    int i = name_index(value, choices);
    if (i >= 0) {
        *field = (unsigned)i;
        return 0;
    }
    int n = snprintf(err, errlen, "'%s' is not one of", value);
    for (unsigned j = 0; choices[j] && n >= 0 && (size_t)n < errlen; j++)
        n += snprintf(err + n, errlen - (size_t)n, "%s %s", j ? "," : "", choices[j]);
    return -1;
}

/* Sets one key from its text form; a list value replaces the whole list
 * unless append is set (a continuation line). */
static int set_key(config_t *cfg, const key_spec_t *spec, const char *value, bool append, char *err,
                   size_t errlen)
{
    char *field = (char *)cfg + spec->offset;
    unsigned long long v;
    switch (spec->type) {
    case T_DOMAIN:
        /* A DKIM key is published under a domain of two labels at least (no
         * TLD, no "localhost"), as dkim_domain_valid has it: a one-label
         * default would be accepted here and then never match a key. */
        if (*value && (strlen(value) >= spec->size || !net_domain_valid(value))) {
            snprintf(err, errlen, "'%s' is not a domain", value);
            return -1;
        }
        if (*value && !strchr(value, '.')) {
            snprintf(err, errlen,
                     "'%s' is not a signing domain: it needs two labels or more (example.com)",
                     value);
            return -1;
        }
        memcpy(field, value, strlen(value) + 1);
        util_ascii_lower(field);
        return 0;
    case T_STRING:
    case T_SECRET:
    case T_URL:
        if (strlen(value) >= spec->size) {
            snprintf(err, errlen, "value longer than %zu characters", spec->size - 1);
            return -1;
        }
        memcpy(field, value, strlen(value) + 1);
        return 0;
    case T_UINT:
    case T_SIZE:
    case T_PORT:
        if (parse_unsigned(value, &v) < 0 || v < spec->min || v > spec->max) {
            snprintf(err, errlen, "'%s' is not a whole number from %llu to %llu", value, spec->min,
                     spec->max);
            return -1;
        }
        if (spec->type == T_UINT)
            *(unsigned *)field = (unsigned)v;
        else if (spec->type == T_SIZE)
            *(size_t *)field = (size_t)v;
        else
            *(uint16_t *)field = (uint16_t)v;
        return 0;
    case T_HOSTPORT:
        if (*value == 0) {
            memset(field, 0, sizeof(net_hostport_t));
            return 0;
        }
        if (net_hostport_parse(value, 25, (net_hostport_t *)field) < 0) {
            snprintf(err, errlen, "'%s' is not host:port", value);
            return -1;
        }
        return 0;
    case T_BOOL:
        if (!strcasecmp(value, "yes") || !strcasecmp(value, "true") || !strcmp(value, "1")) {
            *(bool *)field = true;
        } else if (!strcasecmp(value, "no") || !strcasecmp(value, "false") || !strcmp(value, "0")) {
            *(bool *)field = false;
        } else {
            snprintf(err, errlen, "'%s' is not yes or no", value);
            return -1;
        }
        return 0;
    case T_ENC_POLICY:
        if (config_parse_enc_policy(value, (enum enc_policy *)field) == 0) return 0;
        snprintf(err, errlen, "'%s' is not one of never, opportunistic, required", value);
        return -1;
    case T_CHOICE:
        return set_choice(spec, value, (unsigned *)field, err, errlen);
    case T_TLS_POLICY:
        if (parse_tls_policy(value, (enum tls_policy *)field) == 0) return 0;
        snprintf(err, errlen, "'%s' is not one of none, opportunistic, verify", value);
        return -1;
    case T_LOGLEVEL:
        if (log_parse_level(value, (enum log_level *)field) < 0) {
            snprintf(err, errlen, "'%s' is not one of debug, info, warn, error", value);
            return -1;
        }
        return 0;
    case T_DOMAINS:
    case T_CIDRS: {
        if (!append && spec->type == T_DOMAINS) cfg->ingress.n_relay_domains = 0;
        if (!append && spec->type == T_CIDRS) ((net_cidr_list_t *)field)->n = 0;
        struct list_ctx lc = {cfg, spec, err, errlen};
        snprintf(err, errlen, "a list item is too long");
        return util_split_list(value, add_list_item, &lc);
    }
    }
    return -1;
}

/* A setting of one destination domain, from [routes] or [tls_policy]. */
static int set_domain(config_t *cfg, const char *section, const char *domain, const char *value,
                      char *err, size_t errlen)
{
    char name[256];
    snprintf(name, sizeof name, "%s", domain);
    util_ascii_lower(name);
    if (!net_domain_valid(name)) {
        snprintf(err, errlen, "'%s' is not a domain", domain);
        return -1;
    }
    config_domain_t *d = NULL;
    for (unsigned i = 0; i < cfg->n_domains; i++)
        if (!strcmp(cfg->domains[i].domain, name)) d = &cfg->domains[i];
    if (!d) {
        if (cfg->n_domains >= CONFIG_MAX_LIST) {
            snprintf(err, errlen, "more than %d domains in [routes] and [tls_policy]",
                     CONFIG_MAX_LIST);
            return -1;
        }
        d = &cfg->domains[cfg->n_domains++];
        snprintf(d->domain, sizeof d->domain, "%s", name);
    }
    if (!strcasecmp(section, "tls_policy")) {
        if (parse_tls_policy(value, &d->tls_policy) < 0) {
            snprintf(err, errlen, "'%s' is not one of none, opportunistic, verify", value);
            return -1;
        }
        d->has_tls_policy = true;
        return 0;
    }
    if (net_hostport_parse(value, 25, &d->route) < 0) {
        snprintf(err, errlen, "'%s' is not host:port", value);
        return -1;
    }
    d->has_route = true;
    return 0;
}

bool config_cidr_list_match(const net_cidr_list_t *list, const struct sockaddr *sa)
{
    for (unsigned i = 0; i < list->n; i++)
        if (net_cidr_match(&list->items[i], sa)) return true;
    return false;
}

void config_defaults(config_t *cfg)
{
    char err[256];
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < N_KEYS; i++)
        if (set_key(cfg, &keys[i], keys[i].def, false, err, sizeof err) < 0)
            abort(); /* a bad table */
}

struct file_ctx {
    config_t *cfg;
    FILE *fp;
    unsigned line;
    bool continuation; /* the line read last starts with white space */
    char *err;
    size_t errlen;
    bool failed;
};

/* inih reads line by line through this, which is how a handler error learns
 * its line. Debian's libinih cuts lines at 200 octets and would parse the rest
 * as a line of its own, so a longer line is refused here; long lists go on
 * indented continuation lines instead. A NUL is refused too: inih, and every
 * setter after it, would take the line as ending there and drop the rest
 * without a word. */
static char *read_line(char *str, int num, void *stream)
{
    struct file_ctx *fc = stream;
    size_t n = 0, max = (size_t)num - 1;
    int c = EOF;
    if (fc->failed) return NULL;
    while (n < max && (c = getc(fc->fp)) != EOF && c != 0) {
        str[n++] = (char)c;
        if (c == '\n') break;
    }
    if (n == 0 && c == EOF) return NULL;
    str[n] = 0;
    fc->line++;
    fc->continuation = str[0] == ' ' || str[0] == '\t';
    bool nul = c == 0;
    if (!nul &&
        !(n == max && str[n - 1] != '\n' && (c = getc(fc->fp)) != EOF && ungetc(c, fc->fp) != EOF))
        return str;
    if (nul)
        snprintf(fc->err, fc->errlen, "%s:%u: a NUL byte in the line", fc->cfg->path, fc->line);
    else
        snprintf(fc->err, fc->errlen,
                 "%s:%u: line longer than %d characters; continue a list on indented lines",
                 fc->cfg->path, fc->line, num - 2);
    fc->failed = true;
    return NULL;
}

static int on_ini_key(void *user, const char *section, const char *name, const char *value)
{
    struct file_ctx *fc = user;
    char msg[300];
    int rc;
    if (fc->failed) return 0;
    if (!strcasecmp(section, "routes") || !strcasecmp(section, "tls_policy")) {
        rc = set_domain(fc->cfg, section, name, value, msg, sizeof msg);
    } else {
        const key_spec_t *spec = find_key(section, name);
        if (!spec) {
            snprintf(msg, sizeof msg, "unknown key");
            rc = -1;
        } else if (fc->continuation && spec->type != T_DOMAINS && spec->type != T_CIDRS) {
            snprintf(msg, sizeof msg, "only lists continue on indented lines");
            rc = -1;
        } else {
            rc = set_key(fc->cfg, spec, value, fc->continuation, msg, sizeof msg);
        }
    }
    if (rc < 0) {
        snprintf(fc->err, fc->errlen, "%s:%u: [%s] %s: %s", fc->cfg->path, fc->line, section, name,
                 msg);
        fc->failed = true;
        return 0;
    }
    return 1;
}

static int load_file(config_t *cfg, const char *path, char *err, size_t errlen)
{
    struct file_ctx fc = {.cfg = cfg, .fp = fopen(path, "r"), .err = err, .errlen = errlen};
    if (!fc.fp) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    snprintf(cfg->path, sizeof cfg->path, "%s", path);
    int rc = ini_parse_stream(read_line, &fc, on_ini_key, &fc);
    fclose(fc.fp);
    if (fc.failed) return -1;
    if (rc != 0) {
        snprintf(err, errlen, "%s:%d: syntax error (expected [section] or key = value)", path, rc);
        return -1;
    }
    return 0;
}

/* Whether an environment name starts with one of our sections and '_'. */
static bool known_section_prefix(const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        size_t sl = strlen(keys[i].section);
        if (!strncasecmp(name, keys[i].section, sl) && name[sl] == '_') return true;
    }
    return false;
}

/* SEALPOST_<SECTION>_<KEY>=value; a variable whose section is not ours is
 * left alone, one that names our section but no key of it is an error. For
 * [routes] and [tls_policy] the key is the domain with '.' written as '_':
 * SEALPOST_ROUTES_EXAMPLE_TEST=127.0.0.1:2526, SEALPOST_TLS_POLICY_BANK_TEST=verify. */
static int load_environment(config_t *cfg, char *err, size_t errlen)
{
    static const char prefix[] = "SEALPOST_";
    for (char **env = environ; *env; env++) {
        if (strncmp(*env, prefix, sizeof prefix - 1)) continue;
        const char *name = *env + sizeof prefix - 1;
        const char *eq = strchr(name, '=');
        if (!eq || !strncmp(*env, "SEALPOST_CONFIG=", 16)) continue;
        char var[300], msg[300];
        snprintf(var, sizeof var, "%.*s", (int)(eq - *env), *env);
        int rc = -1;
        size_t skip = !strncmp(name, "ROUTES_", 7) ? 7 : !strncmp(name, "TLS_POLICY_", 11) ? 11 : 0;
        if (skip) {
            char domain[256];
            snprintf(domain, sizeof domain, "%.*s", (int)(eq - name - skip), name + skip);
            for (char *p = domain; *p; p++)
                if (*p == '_') *p = '.';
            rc = set_domain(cfg, skip == 7 ? "routes" : "tls_policy", domain, eq + 1, msg,
                            sizeof msg);
        } else {
            const key_spec_t *spec = NULL;
            for (size_t i = 0; i < N_KEYS && !spec; i++) {
                size_t sl = strlen(keys[i].section);
                if (!strncasecmp(name, keys[i].section, sl) && name[sl] == '_' &&
                    (size_t)(eq - name) == sl + 1 + strlen(keys[i].name) &&
                    !strncasecmp(name + sl + 1, keys[i].name, strlen(keys[i].name)))
                    spec = &keys[i];
            }
            if (spec)
                rc = set_key(cfg, spec, eq + 1, false, msg, sizeof msg);
            else if (!known_section_prefix(name))
                continue; /* not ours, e.g. SEALPOST_BIN */
            else
                snprintf(msg, sizeof msg, "unknown key");
        }
        if (rc < 0) {
            snprintf(err, errlen, "environment %s: %s", var, msg);
            return -1;
        }
    }
    return 0;
}

int config_load(config_t *cfg, const char *path, char *err, size_t errlen)
{
    config_defaults(cfg);
    if (!path || !*path) path = getenv("SEALPOST_CONFIG");
    if ((!path || !*path) && access("sealpost.conf", F_OK) == 0) path = "sealpost.conf";
    if (path && *path && load_file(cfg, path, err, errlen) < 0) return -1;
    if (load_environment(cfg, err, errlen) < 0) return -1;
    if (!cfg->ingress.hostname[0] &&
        gethostname(cfg->ingress.hostname, sizeof cfg->ingress.hostname - 1) < 0)
        snprintf(cfg->ingress.hostname, sizeof cfg->ingress.hostname, "localhost");
    if (!cfg->worker.helo_name[0])
        snprintf(cfg->worker.helo_name, sizeof cfg->worker.helo_name, "%s", cfg->ingress.hostname);
    if (cfg->worker.max_backoff < cfg->worker.min_backoff) {
        snprintf(err, errlen, "[worker] max_backoff (%u) is below min_backoff (%u)",
                 cfg->worker.max_backoff, cfg->worker.min_backoff);
        return -1;
    }
    /* A WAIT holds back the commands behind it on the connection: it must
     * end well before they time out. */
    if (cfg->queue.min_replicas && cfg->queue.replica_timeout_ms * 2 > cfg->redis.timeout_ms) {
        snprintf(err, errlen,
                 "[queue] replica_timeout_ms (%u) must be at most half of [redis] timeout_ms (%u)",
                 cfg->queue.replica_timeout_ms, cfg->redis.timeout_ms);
        return -1;
    }
    redis_endpoint_t ep;
    int rc = config_redis_endpoint(cfg, &ep, err, errlen);
    config_redis_endpoint_clear(&ep);
    return rc;
}

/* The url with the password of its userinfo, if any, shown as "(set)". */
static void print_url(const char *url, buf_t *out)
{
    const char *scheme = strstr(url, "://");
    const char *auth = scheme ? scheme + 3 : url;
    const char *end = auth + strcspn(auth, "/");
    const char *at = NULL;
    for (const char *p = auth; p < end; p++)
        if (*p == '@') at = p;
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (!colon) {
        buf_printf(out, "%s", url);
        return;
    }
    buf_printf(out, "%.*s(set)%s", (int)(colon + 1 - url), url, at);
}

static void print_value(const config_t *cfg, const key_spec_t *spec, buf_t *out)
{
    const char *field = (const char *)cfg + spec->offset;
    switch (spec->type) {
    case T_STRING:
    case T_DOMAIN:
        buf_printf(out, "%s", field);
        break;
    case T_UINT:
        buf_printf(out, "%u", *(const unsigned *)field);
        break;
    case T_SIZE:
        buf_printf(out, "%zu", *(const size_t *)field);
        break;
    case T_PORT:
        buf_printf(out, "%u", *(const uint16_t *)field);
        break;
    case T_HOSTPORT: {
        const net_hostport_t *hp = (const net_hostport_t *)field;
        if (!hp->host[0]) break;
        buf_printf(out, strchr(hp->host, ':') ? "[%s]:%u" : "%s:%u", hp->host, hp->port);
        break;
    }
    case T_TLS_POLICY:
        buf_printf(out, "%s", tls_policy_names[*(const enum tls_policy *)field]);
        break;
    case T_SECRET:
        if (*field) buf_printf(out, "(set, not shown)");
        break;
    case T_URL:
        print_url(field, out);
        break;
    case T_ENC_POLICY:
        buf_printf(out, "%s", enc_policy_names[*(const enum enc_policy *)field]);
        break;
    case T_CHOICE:
        buf_printf(out, "%s", choice_lists[spec->min][*(const unsigned *)field]);
        break;
    case T_LOGLEVEL: {
        static const char *names[] = {"debug", "info", "warn", "error"};
        buf_printf(out, "%s", names[*(const enum log_level *)field]);
        break;
    }
    case T_DOMAINS:
        for (unsigned i = 0; i < cfg->ingress.n_relay_domains; i++)
            buf_printf(out, "%s%s", i ? " " : "", cfg->ingress.relay_domains[i]);
        break;
    case T_CIDRS: {
        const net_cidr_list_t *list = (const net_cidr_list_t *)field;
        for (unsigned i = 0; i < list->n; i++) {
            char text[64];
            net_cidr_text(&list->items[i], text, sizeof text);
            buf_printf(out, "%s%s", i ? " " : "", text);
        }
        break;
    }
    case T_BOOL:
        buf_printf(out, "%s", *(const bool *)field ? "yes" : "no");
        break;
    }
}

int config_print(const config_t *cfg, buf_t *out)
{
    const char *section = "";
    buf_printf(out, "; effective configuration (file: %s)\n", cfg->path[0] ? cfg->path : "none");
    for (size_t i = 0; i < N_KEYS; i++) {
        if (strcmp(section, keys[i].section)) {
            section = keys[i].section;
            buf_printf(out, "\n[%s]\n", section);
        }
        buf_printf(out, "%s = ", keys[i].name);
        print_value(cfg, &keys[i], out);
        buf_printf(out, "\n");
    }
    buf_printf(out, "\n[routes]\n");
    for (unsigned i = 0; i < cfg->n_domains; i++) {
        const net_hostport_t *hp = &cfg->domains[i].route;
        if (cfg->domains[i].has_route)
            buf_printf(out, strchr(hp->host, ':') ? "%s = [%s]:%u\n" : "%s = %s:%u\n",
                       cfg->domains[i].domain, hp->host, hp->port);
    }
    buf_printf(out, "\n[tls_policy]\n");
    for (unsigned i = 0; i < cfg->n_domains; i++)
        if (cfg->domains[i].has_tls_policy)
            buf_printf(out, "%s = %s\n", cfg->domains[i].domain,
                       tls_policy_names[cfg->domains[i].tls_policy]);
    return 0;
}

static const config_domain_t *domain_settings(const config_t *cfg, const char *domain)
{
    for (unsigned i = 0; i < cfg->n_domains; i++)
        if (!strcasecmp(cfg->domains[i].domain, domain)) return &cfg->domains[i];
    return NULL;
}

const net_hostport_t *config_route_for(const config_t *cfg, const char *domain)
{
    const config_domain_t *d = domain_settings(cfg, domain);
    if (d && d->has_route) return &d->route;
    return cfg->worker.relayhost.host[0] ? &cfg->worker.relayhost : NULL;
}

enum tls_policy config_tls_policy_for(const config_t *cfg, const char *domain)
{
    const config_domain_t *d = domain_settings(cfg, domain);
    return d && d->has_tls_policy ? d->tls_policy : cfg->worker.tls_policy;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* RFC 3986 §2.1: %XX decoded; -1 for a bad escape, a NUL or no room. */
static int percent_decode(const char *in, size_t len, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)in[i];
        if (c == '%') {
            if (i + 2 >= len || hex_value(in[i + 1]) < 0 || hex_value(in[i + 2]) < 0) return -1;
            c = hex_value(in[i + 1]) * 16 + hex_value(in[i + 2]);
            i += 2;
        }
        if (c == 0 || o + 1 >= outlen) return -1;
        out[o++] = (char)c;
    }
    out[o] = 0;
    return 0;
}

/* [redis://|rediss://][user[:password]@]host[:port][/[0]]: a database
 * other than 0 is refused, as our functions and Redis Cluster use 0 only. */
static int parse_redis_url(const char *url, redis_endpoint_t *out, char *err, size_t errlen)
{
    const char *p = url;
    if (!strncmp(p, "rediss://", 9)) {
        out->tls = true;
        p += 9;
    } else if (!strncmp(p, "redis://", 8)) {
        p += 8;
    } else if (strstr(p, "://")) {
        snprintf(err, errlen, "[redis] url: the scheme is not redis:// or rediss://");
        return -1;
    }
    size_t alen = strcspn(p, "/");
    if (p[alen] && strcmp(p + alen, "/") && strcmp(p + alen, "/0")) {
        snprintf(err, errlen, "[redis] url: only database 0 can be used (no path)");
        return -1;
    }
    const char *at = NULL;
    for (const char *q = p; q < p + alen; q++)
        if (*q == '@') at = q;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *uend = colon ? colon : at;
        if (percent_decode(p, (size_t)(uend - p), out->user, sizeof out->user) < 0 ||
            (colon && percent_decode(colon + 1, (size_t)(at - colon - 1), out->pass,
                                     sizeof out->pass) < 0)) {
            snprintf(err, errlen, "[redis] url: bad percent-encoding or too long user or password");
            return -1;
        }
        alen -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    char hostport[300];
    net_hostport_t hp;
    if (alen >= sizeof hostport) alen = sizeof hostport - 1;
    memcpy(hostport, p, alen);
    hostport[alen] = 0;
    if (net_hostport_parse(hostport, 6379, &hp) < 0 || !hp.host[0]) {
        snprintf(err, errlen, "[redis] url: '%s' is not host:port", hostport);
        return -1;
    }
    memcpy(out->host, hp.host, sizeof out->host);
    out->port = hp.port;
    return 0;
}

/* The password file's first line: a trailing newline (LF or CRLF) is not
 * part of the password. */
static int read_password_file(const char *path, char *out, size_t outlen, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "[redis] password_file '%s': %s", path, strerror(errno));
        return -1;
    }
    size_t n = fread(out, 1, outlen - 1, f);
    bool more = n == outlen - 1 && fgetc(f) != EOF;
    bool failed = ferror(f);
    fclose(f);
    out[n] = 0;
    if (failed || more || strlen(out) != n) {
        explicit_bzero(out, outlen);
        snprintf(err, errlen, "[redis] password_file '%s': %s", path,
                 failed ? "cannot be read" : "not a password (too long, or a NUL in it)");
        return -1;
    }
    while (n && (out[n - 1] == '\n' || out[n - 1] == '\r'))
        out[--n] = 0;
    return 0;
}

static int check_redis_tls_keys(const config_t *cfg, const redis_endpoint_t *ep, char *err,
                                size_t errlen)
{
    const char *set = cfg->redis.tls_ca_file[0]       ? "tls_ca_file"
                      : cfg->redis.tls_cert[0]        ? "tls_cert"
                      : cfg->redis.tls_key[0]         ? "tls_key"
                      : cfg->redis.tls_server_name[0] ? "tls_server_name"
                                                      : NULL;
    if (set && !ep->tls) {
        snprintf(err, errlen, "[redis] %s is set but url is not rediss://", set);
        return -1;
    }
    if (!cfg->redis.tls_cert[0] != !cfg->redis.tls_key[0]) {
        snprintf(err, errlen, "[redis] tls_cert and tls_key go together: both or neither");
        return -1;
    }
    return 0;
}

int config_redis_endpoint(const config_t *cfg, redis_endpoint_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!cfg->redis.url[0]) {
        snprintf(out->host, sizeof out->host, "127.0.0.1");
        out->port = cfg->up.redis_port;
    } else if (parse_redis_url(cfg->redis.url, out, err, errlen) < 0) {
        return -1;
    }
    if (cfg->redis.username[0]) {
        if (out->user[0] && strcmp(out->user, cfg->redis.username)) {
            snprintf(err, errlen, "[redis] username and the user in url differ");
            return -1;
        }
        snprintf(out->user, sizeof out->user, "%s", cfg->redis.username);
    }
    if (cfg->redis.password_file[0]) {
        if (out->pass[0]) {
            snprintf(err, errlen, "[redis] url has a password and password_file is set: one only");
            return -1;
        }
        if (read_password_file(cfg->redis.password_file, out->pass, sizeof out->pass, err, errlen) <
            0)
            return -1;
    }
    if (out->user[0] && !out->pass[0]) {
        snprintf(err, errlen, "[redis] the user '%s' has no password (url or password_file)",
                 out->user);
        return -1;
    }
    if (check_redis_tls_keys(cfg, out, err, errlen) < 0) return -1;
    snprintf(out->ca_file, sizeof out->ca_file, "%s", cfg->redis.tls_ca_file);
    snprintf(out->cert, sizeof out->cert, "%s", cfg->redis.tls_cert);
    snprintf(out->key, sizeof out->key, "%s", cfg->redis.tls_key);
    snprintf(out->server_name, sizeof out->server_name, "%s", cfg->redis.tls_server_name);
    return 0;
}

void config_redis_endpoint_clear(redis_endpoint_t *ep)
{
    explicit_bzero(ep->pass, sizeof ep->pass);
}

int config_redis_address(const config_t *cfg, net_hostport_t *out)
{
    redis_endpoint_t ep;
    char err[300];
    memset(out, 0, sizeof *out);
    if (!cfg->redis.url[0]) {
        snprintf(out->host, sizeof out->host, "127.0.0.1");
        out->port = cfg->up.redis_port;
        return 0;
    }
    memset(&ep, 0, sizeof ep);
    int rc = parse_redis_url(cfg->redis.url, &ep, err, sizeof err);
    config_redis_endpoint_clear(&ep);
    if (rc < 0) return -1;
    memcpy(out->host, ep.host, sizeof out->host);
    out->port = ep.port;
    return 0;
}
