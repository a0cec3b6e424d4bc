/* core: the ground floor shared by every process: configuration, logging,
 * byte buffers, network addresses and small utilities. Includes nothing of ours. */
#ifndef SEALPOST_CORE_H
#define SEALPOST_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* ---- logging: one line per event, key=value ---- */

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(enum log_level level);
int log_parse_level(const char *name, enum log_level *out);
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A value that came from outside (an address with a quoted local part may
 * hold spaces, quotes, '='), made safe for one key=value field: space, '"',
 * '\\' and anything not printable ASCII become \xNN. Returns out. */
#define LOG_SAFE_MAX 1100
const char *log_safe(const char *in, char out[LOG_SAFE_MAX]);
/* An address for a log line: as log_safe, or, with redaction on, its local
 * part replaced by 8 hex digits of a hash of the address, so lines about one
 * address still match each other without naming it. */
const char *log_addr(const char *addr, char out[LOG_SAFE_MAX]);
/* Free text (a server's reply) for a log line: as log_safe, and with
 * redaction on, every address in it masked as log_addr masks it. */
const char *log_text(const char *in, char out[LOG_SAFE_MAX]);
/* Redaction on or off; key (up to 32 octets, or NULL) keys the hash. */
void log_set_redact(bool on, const unsigned char *key, size_t len);
bool log_redacting(void);

#define log_debug(...) log_write(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

/* ---- growable byte buffer with a hard cap ---- */

typedef struct buf {
    char *data;
    size_t len;
    size_t cap;
} buf_t;

void buf_init(buf_t *b);
void buf_free(buf_t *b);
void buf_reset(buf_t *b);
/* Returns -1 (and leaves the buffer unchanged) when memory runs out. */
int buf_append(buf_t *b, const void *data, size_t len);
/* Makes room for extra more bytes (plus a NUL) without changing len. */
int buf_reserve(buf_t *b, size_t extra);
int buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes. */
void buf_consume(buf_t *b, size_t n);

/* ---- network addresses ---- */

typedef struct net_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned prefix;
} net_cidr_t;

typedef struct net_hostport {
    char host[256];
    uint16_t port;
} net_hostport_t;

/* "10.0.0.0/8", "::1/128", or a bare address (full prefix). */
int net_cidr_parse(const char *text, net_cidr_t *out);
/* Writes "10.0.0.0/8". */
void net_cidr_text(const net_cidr_t *cidr, char *out, size_t outlen);
bool net_cidr_match(const net_cidr_t *cidr, const struct sockaddr *sa);
/* "host:port", "[v6]:port"; default_port when the port is left out (0: required). */
int net_hostport_parse(const char *text, uint16_t default_port, net_hostport_t *out);
/* Resolves a numeric host:port into a sockaddr (no DNS). */
int net_sockaddr_from(const net_hostport_t *hp, struct sockaddr_storage *out);
/* The bare address text of a sockaddr ("127.0.0.1", "::1"). */
void net_addr_text(const struct sockaddr *sa, char *out, size_t outlen);
/* Whether name is a host name as SMTP writes one (RFC 5321 §2.3.5, RFC 1123
 * §2.1): dot-separated labels of 1 to 63 letters, digits and hyphens, no
 * hyphen first or last, 253 characters at most, no trailing dot. */
bool net_domain_valid(const char *name);
struct uv_tcp_s;
struct uv_stream_s;
/* Binds an initialised libuv TCP handle to hp (a numeric address) and
 * listens; on failure writes "host:port: reason" into err. The caller closes
 * the handle either way. */
int net_listen(struct uv_tcp_s *tcp, const net_hostport_t *hp, int backlog,
               void (*on_connection)(struct uv_stream_s *server, int status), char *err,
               size_t errlen);

/* ---- utilities ---- */

/* Milliseconds on the realtime clock. */
int64_t util_now_ms(void);
/* Microseconds on the monotonic clock: for durations and deadlines, which a
 * change of the system's time must not move. */
int64_t util_monotonic_us(void);
/* 128 random bits as 32 lowercase hex characters plus NUL. */
void util_random_id(char out[33]);
/* Uniform random number in [0, bound). */
uint32_t util_random_below(uint32_t bound);
/* RFC 5322 date-time for now, e.g. "Sat, 28 Nov 2026 16:41:52 +0000". */
void util_rfc5322_date(char *out, size_t outlen);
/* A Unix time as ISO 8601 in UTC, e.g. "2026-12-03T14:25:13Z". */
#define UTIL_ISO_TIME_LEN 32
void util_iso_time(long long t, char out[UTIL_ISO_TIME_LEN]);
/* Lower-cases ASCII in place. */
void util_ascii_lower(char *s);
/* A decimal number that is all of p[0..len): digits only (no sign, no
 * white space), no overflow. Returns 0, or -1 and leaves *out alone. */
int util_parse_decimal(const char *p, size_t len, unsigned long long *out);
/* Splits on commas and white space; calls fn for each non-empty item. */
int util_split_list(const char *text, int (*fn)(const char *item, void *arg), void *arg);

/* ---- metrics: the process's own, as Prometheus text (format 0.0.4) ---- */

typedef struct metric metric_t;

/* One series of a family: name{labels}, labels '' or 'reason="relay_denied"'.
 * Made once, at start (the same name and labels give the same series); the
 * pointer stays valid for the life of the process. Updated from the loop
 * thread only. */
metric_t *metric_counter(const char *name, const char *help, const char *labels);
metric_t *metric_gauge(const char *name, const char *help, const char *labels);
/* A family of counters, one per value of one label: out[i] is
 * name{label="values[i]"}. */
void metric_counters(metric_t **out, const char *name, const char *help, const char *label,
                     const char *const *values, unsigned n);
/* A histogram with the given bucket upper bounds (ascending; the array must
 * outlive the process's use of it). */
metric_t *metric_histogram(const char *name, const char *help, const char *labels,
                           const double *bounds, unsigned n_bounds);
void metric_observe(metric_t *m, double v);
void metric_add(metric_t *m, double v);
void metric_set(metric_t *m, double v);
/* Every series, with # HELP and # TYPE once per family. */
int metrics_render(buf_t *out);

/* ---- a small HTTP server, for /metrics and health checks ---- */

struct uv_loop_s;
typedef struct http_server http_server_t;
typedef struct http_conn http_request_t;
/* Fills body (and may set *content_type) for a GET of path; returns the
 * status code (200, 404, 503 ...), or 0 to answer later with http_reply. */
typedef int (*http_handler_fn)(http_request_t *req, const char *path, buf_t *body,
                               const char **content_type, void *arg);
/* The answer to a request its handler deferred (exactly once; also after the
 * client went away, so the request can be freed). */
void http_reply(http_request_t *req, int status, const char *content_type, const buf_t *body);
http_server_t *http_start(struct uv_loop_s *loop, const net_hostport_t *listen,
                          http_handler_fn handler, void *arg, char *err, size_t errlen);
void http_stop(http_server_t *server);

/* ---- configuration ---- */

#define CONFIG_MAX_LIST 64

/* STARTTLS when delivering: never, when offered (any certificate), or
 * required with a certificate valid for the host's name. */
enum tls_policy { TLS_POLICY_NONE, TLS_POLICY_OPPORTUNISTIC, TLS_POLICY_VERIFY };

/* [crypto] smime_cipher and smime_rsa_padding, in the order of their names. */
enum smime_cipher { SMIME_AES256_CBC, SMIME_AES256_GCM };
enum smime_rsa_padding { SMIME_RSA_PKCS1, SMIME_RSA_OAEP };

/* Whether mail to a recipient is encrypted: never; when a usable key is
 * known; or always, refusing the recipient who has none. */
enum enc_policy { ENC_POLICY_NEVER, ENC_POLICY_OPPORTUNISTIC, ENC_POLICY_REQUIRED };
int config_parse_enc_policy(const char *value, enum enc_policy *out);
const char *config_enc_policy_name(enum enc_policy p);
/* [discovery] key_change: a discovered key whose fingerprint changed on
 * refresh replaces the old one (accept), or the old one stays (keep-old). */
enum config_key_change { KEY_CHANGE_ACCEPT, KEY_CHANGE_KEEP_OLD };
/* [crypto] min_trust: discovered keys encrypt too, or only an operator's. */
enum config_trust { TRUST_DISCOVERED, TRUST_IMPORTED };
int config_parse_trust(const char *value, enum config_trust *out);
const char *config_trust_name(enum config_trust t);
/* [crypto] openpgp_engine: who encrypts OpenPGP mail (crypto_openpgp_engine). */
enum config_openpgp_engine { CONFIG_OPENPGP_GPGME, CONFIG_OPENPGP_RNP };

/* Which of an OpenPGP key and an S/MIME certificate mail to a recipient
 * with both uses when both are usable ([crypto] prefer); crypto/'s enum
 * crypto_method, in the same order. */
enum enc_prefer { ENC_PREFER_OPENPGP, ENC_PREFER_SMIME };
int config_parse_enc_prefer(const char *value, enum enc_prefer *out);
const char *config_enc_prefer_name(enum enc_prefer p);

typedef struct net_cidr_list {
    net_cidr_t items[CONFIG_MAX_LIST];
    unsigned n;
} net_cidr_list_t;

/* Whether the address is in any of the networks. */
bool config_cidr_list_match(const net_cidr_list_t *list, const struct sockaddr *sa);

/* What [routes] and [tls_policy] say about one destination domain. */
typedef struct config_domain {
    char domain[256];
    bool has_route;
    net_hostport_t route;
    bool has_tls_policy;
    enum tls_policy tls_policy;
} config_domain_t;

typedef struct config {
    char path[512]; /* the file read, or "" for built-in defaults */

    struct {
        char url[512]; /* empty: the private redis-server of "sealpost up" */
        unsigned shards;
        unsigned timeout_ms;
        char username[128];      /* the ACL user, when the url names none */
        char password_file[512]; /* read at start; never the password itself */
        char tls_ca_file[512];   /* rediss://: the CAs trusted; "": the system's */
        char tls_cert[512];      /* a client certificate and its key: both or neither */
        char tls_key[512];
        char tls_server_name[256]; /* the name checked in Redis's certificate; "": the url's host */
    } redis;

    struct {
        unsigned min_replicas;       /* WAIT for them after each enqueue; 0: do not */
        unsigned replica_timeout_ms; /* how long WAIT may take */
    } queue;

    struct {
        net_hostport_t listen;            /* relay and MX: port 25's rules */
        net_hostport_t submission_listen; /* 587: STARTTLS and AUTH before MAIL; host "": off */
        net_hostport_t smtps_listen;      /* 465: implicit TLS (RFC 8314), AUTH before MAIL */
        char hostname[256];
        size_t max_message_size;
        unsigned max_recipients;
        unsigned max_line_length;
        unsigned max_connections;
        unsigned max_connections_per_ip; /* trusted networks: see below */
        unsigned max_errors;             /* 4xx/5xx replies before a session is dropped */
        char postmaster[257];            /* where "RCPT TO:<Postmaster>" goes; "": the
                                            postmaster of the first relay domain */
        char auth_mechanisms[64];        /* of PLAIN LOGIN CRAM-MD5; offered only under TLS */
        unsigned auth_fail_limit;        /* failed logins per client address in a window */
        unsigned auth_fail_window;       /* seconds */
        bool sender_login_match;         /* MAIL FROM must be the login of the session */
        char tls_cert[512];              /* PEM chain; with tls_key, STARTTLS is offered */
        char tls_key[512];
        char tls_ciphers[256];
        unsigned command_timeout;
        unsigned data_timeout;
        char relay_domains[CONFIG_MAX_LIST][256];
        unsigned n_relay_domains;
        net_cidr_list_t trusted_networks;
        net_cidr_list_t proxy_networks; /* load balancers that send a PROXY header */

        /* Slow and too many clients (ingress/session.c, ingress/policy.c). */
        unsigned min_data_rate;                  /* octets/s content must keep up */
        unsigned max_connections_per_trusted_ip; /* theirs, under stress only */
        unsigned max_connection_rate;            /* per minute per address; 0: none */
        unsigned stress_threshold;               /* percent of max_connections; 0: never */
        unsigned stress_command_timeout;         /* command_timeout under stress */
        unsigned stress_max_errors;              /* max_errors under stress */
        /* NOOP RSET VRFY HELP, and HELO again, before each is an error;
         * 1 under stress */
        unsigned junk_command_limit;
    } ingress;

    struct {
        unsigned concurrency;
        unsigned lease_seconds;
        unsigned min_backoff; /* seconds; doubles per attempt up to max_backoff */
        unsigned max_backoff;
        unsigned max_queue_lifetime; /* seconds; then the message bounces as expired */
        unsigned max_lease_expiries;
        unsigned delay_warning_time; /* seconds queued before a delay notice; 0: never */
        unsigned connect_timeout;
        unsigned command_timeout;
        unsigned data_timeout;
        char helo_name[256];
        net_hostport_t relayhost; /* host[0] == 0: none */
        char dns_servers[512];    /* "host:port ..."; empty: /etc/resolv.conf */
        uint16_t smtp_port;       /* of MX hosts */
        enum tls_policy tls_policy;
        unsigned destination_concurrency; /* connections to one next hop at once */
        unsigned connection_cache_time;   /* seconds an idle connection waits for a job */
        unsigned stop_grace;              /* seconds a stopping worker lets deliveries finish */
        /* Deliver jobs whose envelope has no MAC (stored by a version before
         * issue 18) instead of holding them: a one-off to drain such a queue. */
        bool accept_unauthenticated;
        char tls_ca_file[512]; /* extra trust anchors for verify; the system's are used too */
    } worker;

    config_domain_t domains[CONFIG_MAX_LIST];
    unsigned n_domains;

    struct {
        char data_dir[512];
        char redis_server[256];
        uint16_t redis_port;
    } up;

    struct {
        char key_file[512]; /* "id:base64" lines; the first seals */
        char keys[1024];    /* the same inline (SEALPOST_SEAL_KEYS), before the file's */
    } seal;

    struct {
        enum enc_policy default_policy; /* where Redis names none for address or domain */
        unsigned prefer;                /* enum enc_prefer: where Redis names none */
        bool case_insensitive;          /* local parts of key addresses */
        bool strip_detail;              /* "user+detail@" finds the key of "user@" */
        bool hide_subject;              /* the outer Subject of encrypted mail is "[...]" */
        bool legacy_display;            /* protected-headers="v1" and a legacy display element */
        unsigned max_pending;           /* messages being encrypted at once; then 451 4.3.2 */
        unsigned max_bcc_copies;        /* keyed Bcc copies of one message; then 552 5.5.3 */
        char home_dir[512];             /* where the per-thread GnuPG homes go; "": $TMPDIR */
        unsigned engine_timeout;        /* seconds per gpg operation; then killed, 451 4.7.0 */
        unsigned smime_cipher;          /* enum smime_cipher */
        unsigned smime_rsa_padding;     /* enum smime_rsa_padding */
        char smime_ca_file[512];        /* PEM CA certificates; "": chains not checked */
        char smime_crl_file[512];       /* PEM CRLs of those CAs; "": none (README says why) */
        unsigned openpgp_engine;        /* enum config_openpgp_engine: gpg, or librnp */
        char directory_state_file[512]; /* the highest directory version taken; "": memory */
        unsigned min_trust;             /* enum config_trust: the least trusted key that encrypts */
    } crypto;

    struct {
        unsigned timeout_ms;     /* a whole look-up: every method, DNS and HTTPS */
        char dns_servers[512];   /* "host:port ..."; empty: /etc/resolv.conf */
        char ca_file[512];       /* PEM CAs HTTPS is checked against; "": the system's store */
        char keyserver[256];     /* a VKS keyserver's https:// URL; "": none */
        unsigned max_response;   /* octets of one HTTP response */
        bool enabled;            /* the ingress looks keys up at RCPT (keys lookup always can) */
        unsigned negative_ttl;   /* seconds a "nothing found" is kept, cluster-wide */
        unsigned error_ttl;      /* ... and a look-up that failed or timed out */
        unsigned max_parallel;   /* look-ups under way per ingress; past it, keyless for now */
        char skip_domains[1024]; /* never looked up: internal domains ("a.test b.test") */
        unsigned refresh;        /* seconds after which a discovered key is looked up again */
        unsigned key_change;     /* enum config_key_change: a refreshed key of another fpr */
    } discovery;

    struct {
        /* The domain that signs a message whose From domain has no key, as
         * an operator who signs everything with one domain wants; "": none. */
        char default_domain[254];
        unsigned expire; /* seconds a signature is valid (x=); 0: no x= tag */
    } dkim;

    struct {
        net_hostport_t listen; /* /metrics, /healthz, /readyz; host "": off */
    } metrics;

    struct {
        enum log_level level;
        bool redact_addresses; /* see log_addr */
    } log;
} config_t;

/* Fills in the built-in defaults. */
void config_defaults(config_t *cfg);
/* Reads path (NULL: $SEALPOST_CONFIG, then ./sealpost.conf when it exists, else
 * defaults only), then applies SEALPOST_<SECTION>_<KEY> from the environment.
 * On error writes a message naming file, line and key into err and returns -1. */
int config_load(config_t *cfg, const char *path, char *err, size_t errlen);
/* Writes the effective configuration as INI. */
int config_print(const config_t *cfg, buf_t *out);
/* The static route for a domain, the relayhost, or NULL. */
const net_hostport_t *config_route_for(const config_t *cfg, const char *domain);
/* The TLS policy for delivering to a domain: its own, or [worker] tls_policy. */
enum tls_policy config_tls_policy_for(const config_t *cfg, const char *domain);
/* The Redis host and port the configuration points at. */
int config_redis_address(const config_t *cfg, net_hostport_t *out);

/* Where Redis is and how to log in to it: [redis] url (redis:// or
 * rediss://, with an optional percent-encoded user:password) and the keys
 * beside it. The password lives here only, never in config_t's output. */
typedef struct redis_endpoint {
    char host[256];
    uint16_t port;
    char user[128]; /* "": AUTH with the password alone (the default user) */
    char pass[512]; /* "": no AUTH */
    bool tls;
    char ca_file[512]; /* "": the system's trust store */
    char cert[512], key[512];
    char server_name[256]; /* "": the host connected to */
} redis_endpoint_t;

/* Fills out from the configuration, reading [redis] password_file. -1 with
 * err (never showing the password) when the url or a key is wrong or the
 * file cannot be read. */
int config_redis_endpoint(const config_t *cfg, redis_endpoint_t *out, char *err, size_t errlen);
/* Wipes the password. */
void config_redis_endpoint_clear(redis_endpoint_t *ep);

#endif
