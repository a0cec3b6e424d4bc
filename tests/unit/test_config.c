/* Unit tests for core/'s configuration loader: defaults, files, errors with
 * their line numbers, routes, the environment's overrides, the default path
 * and config_print. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"

extern char **environ;

/* ----------------------------------------------------------------- helpers */

/* Removes every SEALPOST_* variable, so the environment the tests run in
 * cannot change what config_load sees. */
static void clear_sealpost_env(void)
{
    for (;;) {
        char name[256] = "";
        for (char **e = environ; *e; e++) {
            if (!strncmp(*e, "SEALPOST_", 9)) {
                size_t n = strcspn(*e, "=");
                if (n >= sizeof name) n = sizeof name - 1;
                memcpy(name, *e, n);
                name[n] = 0;
                break;
            }
        }
        if (!name[0]) return;
        assert_int_equal(unsetenv(name), 0);
    }
}

static int config_setup(void **state)
{
    (void)state;
    clear_sealpost_env();
    return 0;
}

static int config_teardown(void **state)
{
    (void)state;
    clear_sealpost_env();
    return 0;
}

/* Writes len octets of text to a new file in /tmp; path gets its name. */
static void write_temp_bytes(const char *text, size_t len, char path[64])
{
    snprintf(path, 64, "/tmp/sealpost-test-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    assert_int_equal(close(fd), 0);
}

static void write_temp(const char *text, char path[64])
{
    write_temp_bytes(text, strlen(text), path);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* Loads text as a config file; returns config_load's result. */
static int load_text(const char *text, config_t *cfg, char *err, size_t errlen, char path[64])
{
    write_temp(text, path);
    err[0] = 0;
    int rc = config_load(cfg, path, err, errlen);
    unlink(path);
    return rc;
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle)) fail_msg("'%s' does not contain '%s'", haystack, needle);
}

/* ------------------------------------------------------------------ config */

static void test_config_defaults(void **state)
{
    (void)state;
    config_t cfg;
    config_defaults(&cfg);
    assert_string_equal(cfg.path, "");
    assert_int_equal(cfg.redis.shards, 128);
    assert_string_equal(cfg.ingress.listen.host, "127.0.0.1");
    assert_int_equal(cfg.ingress.listen.port, 2525);
    assert_int_equal(cfg.ingress.max_message_size, 26214400);
    assert_int_equal(cfg.ingress.max_recipients, 1000);
    assert_int_equal(cfg.ingress.max_line_length, 1000);
    assert_int_equal(cfg.ingress.n_relay_domains, 0);
    assert_int_equal(cfg.ingress.trusted_networks.n, 2);
    assert_int_equal(cfg.worker.relayhost.host[0], 0);
    assert_int_equal(cfg.up.redis_port, 6380);
    assert_int_equal(cfg.log.level, LOG_INFO);
    assert_int_equal(cfg.n_domains, 0);
    assert_null(config_route_for(&cfg, "example.test"));
}

static const char good_conf[] = "; a comment\n"
                                "[redis]\n"
                                "url = redis://127.0.0.1:7000\n"
                                "[ingress]\n"
                                "listen = [::1]:2600\n"
                                "hostname = mx.example.test\n"
                                "max_message_size = 1048576\n"
                                "max_recipients = 50\n"
                                "relay_domains = Example.TEST, other.test\n"
                                "trusted_networks = 10.0.0.0/8, 192.168.1.0/24 ::1\n"
                                "[worker]\n"
                                "concurrency = 4\n"
                                "relayhost = smarthost.test:587\n"
                                "[up]\n"
                                "redis_port = 7001\n"
                                "[log]\n"
                                "level = debug\n"
                                "[routes]\n"
                                "example.test = 127.0.0.1:2526\n";

static void test_config_good_file(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    assert_int_equal(load_text(good_conf, &cfg, err, sizeof err, path), 0);
    assert_string_equal(cfg.path, path);
    assert_string_equal(cfg.redis.url, "redis://127.0.0.1:7000");
    assert_int_equal(cfg.redis.shards, 128); /* untouched keys keep their defaults */
    assert_string_equal(cfg.ingress.listen.host, "::1");
    assert_int_equal(cfg.ingress.listen.port, 2600);
    assert_string_equal(cfg.ingress.hostname, "mx.example.test");
    assert_int_equal(cfg.ingress.max_message_size, 1048576);
    assert_int_equal(cfg.ingress.max_recipients, 50);
    assert_int_equal(cfg.ingress.n_relay_domains, 2);
    assert_string_equal(cfg.ingress.relay_domains[0], "example.test");
    assert_string_equal(cfg.ingress.relay_domains[1], "other.test");
    assert_int_equal(cfg.ingress.trusted_networks.n, 3); /* the list replaces the default */
    assert_int_equal(cfg.ingress.trusted_networks.items[0].prefix, 8);
    assert_int_equal(cfg.ingress.trusted_networks.items[2].family, AF_INET6);
    assert_int_equal(cfg.worker.concurrency, 4);
    assert_string_equal(cfg.worker.helo_name, "mx.example.test"); /* defaults to hostname */
    assert_string_equal(cfg.worker.relayhost.host, "smarthost.test");
    assert_int_equal(cfg.worker.relayhost.port, 587);
    assert_int_equal(cfg.up.redis_port, 7001);
    assert_int_equal(cfg.log.level, LOG_DEBUG);
    assert_int_equal(cfg.n_domains, 1);

    net_hostport_t hp;
    assert_int_equal(config_redis_address(&cfg, &hp), 0);
    assert_string_equal(hp.host, "127.0.0.1");
    assert_int_equal(hp.port, 7000);
}

/* ------------------------------------------------------------ redis login */

/* Loads a configuration whose [redis] section is redis_lines and fills ep. */
static int load_redis(const char *redis_lines, config_t *cfg, redis_endpoint_t *ep, char *err,
                      size_t errlen)
{
    char text[2048], path[64];
    memset(ep, 0, sizeof *ep);
    snprintf(text, sizeof text, "[redis]\n%s", redis_lines);
    if (load_text(text, cfg, err, errlen, path) < 0) return -1;
    return config_redis_endpoint(cfg, ep, err, errlen);
}

static void test_config_redis_url_login(void **state)
{
    (void)state;
    config_t cfg;
    redis_endpoint_t ep;
    char err[512];
    assert_int_equal(
        load_redis("url = redis://ingress:s%40cr%3At@10.0.0.5:6390\n", &cfg, &ep, err, sizeof err),
        0);
    assert_string_equal(ep.host, "10.0.0.5");
    assert_int_equal(ep.port, 6390);
    assert_string_equal(ep.user, "ingress");
    assert_string_equal(ep.pass, "s@cr:t"); /* RFC 3986 userinfo, percent-decoded */
    assert_false(ep.tls);

    assert_int_equal(load_redis("url = rediss://:pw@redis.test/0\n", &cfg, &ep, err, sizeof err),
                     0);
    assert_true(ep.tls);
    assert_string_equal(ep.host, "redis.test");
    assert_int_equal(ep.port, 6379);
    assert_string_equal(ep.user, "");
    assert_string_equal(ep.pass, "pw");

    assert_int_equal(load_redis("url = redis://[::1]:7000\n", &cfg, &ep, err, sizeof err), 0);
    assert_string_equal(ep.host, "::1");
    assert_string_equal(ep.pass, "");
}

static void test_config_redis_url_bad(void **state)
{
    (void)state;
    config_t cfg;
    redis_endpoint_t ep;
    char err[512];
    static const char *const bad[] = {
        "url = http://h:1\n",
        "url = redis://u:p%4@h:1\n",
        "url = redis://u:p%00@h:1\n",
        "url = redis://h:1/3\n",
        "url = redis://u@h:1\n",
        "url = redis://u:p@:1\n",
        "url = redis://h:1\ntls_ca_file = /x\n",
        "url = rediss://h:1\ntls_cert = /x\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (load_redis(bad[i], &cfg, &ep, err, sizeof err) == 0) fail_msg("accepted: %s", bad[i]);
        assert_contains(err, "[redis]");
    }
}

static void test_config_redis_password_file(void **state)
{
    (void)state;
    config_t cfg;
    redis_endpoint_t ep;
    char err[512], pwfile[64], lines[256];
    write_temp("hunter2\n", pwfile);
    snprintf(lines, sizeof lines,
             "url = rediss://127.0.0.1:6400\nusername = worker\n"
             "password_file = %s\ntls_server_name = redis.test\n",
             pwfile);
    assert_int_equal(load_redis(lines, &cfg, &ep, err, sizeof err), 0);
    assert_string_equal(ep.user, "worker");
    assert_string_equal(ep.pass, "hunter2"); /* the trailing newline is not part of it */
    assert_string_equal(ep.server_name, "redis.test");

    /* check-config shows where the password is, never what it is */
    buf_t out;
    buf_init(&out);
    config_print(&cfg, &out);
    buf_append(&out, "", 1);
    assert_null(strstr(out.data, "hunter2"));
    assert_contains(out.data, pwfile);
    buf_free(&out);
    unlink(pwfile);

    assert_int_equal(load_redis(lines, &cfg, &ep, err, sizeof err), -1);
    assert_contains(err, "password_file");
    assert_contains(err, pwfile);
}

static void test_config_redis_url_printed_without_password(void **state)
{
    (void)state;
    config_t cfg;
    redis_endpoint_t ep;
    char err[512];
    assert_int_equal(
        load_redis("url = rediss://ingress:topsecret@127.0.0.1:6400\n", &cfg, &ep, err, sizeof err),
        0);
    buf_t out;
    buf_init(&out);
    config_print(&cfg, &out);
    buf_append(&out, "", 1);
    assert_null(strstr(out.data, "topsecret"));
    assert_contains(out.data, "url = rediss://ingress:(set)@127.0.0.1:6400");
    buf_free(&out);

    assert_int_equal(setenv("SEALPOST_REDIS_URL", "redis://:envpw@127.0.0.2:6401", 1), 0);
    assert_int_equal(load_redis("", &cfg, &ep, err, sizeof err), 0);
    assert_string_equal(ep.host, "127.0.0.2");
    assert_string_equal(ep.pass, "envpw");
}

static void test_config_unknown_key(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    assert_int_equal(
        load_text("[ingress]\nmax_recipients = 5\nbogus_key = 1\n", &cfg, err, sizeof err, path),
        -1);
    assert_contains(err, path);
    assert_contains(err, ":3:");
    assert_contains(err, "bogus_key");

    /* a known key in the wrong section is unknown there */
    assert_int_equal(load_text("[worker]\n\n\n\nmax_recipients = 5\n", &cfg, err, sizeof err, path),
                     -1);
    assert_contains(err, path);
    assert_contains(err, ":5:");
    assert_contains(err, "max_recipients");
}

static void test_config_bad_value(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    assert_int_equal(load_text("[ingress]\nmax_recipients = abc\n", &cfg, err, sizeof err, path),
                     -1);
    assert_contains(err, path);
    assert_contains(err, ":2:");
    assert_contains(err, "max_recipients");
    assert_contains(err, "abc");

    static const char *const bad[] = {
        "[ingress]\nmax_recipients = 0\n",
        "[ingress]\nmax_recipients = 100001\n",
        "[ingress]\nmax_recipients = -1\n",
        "[ingress]\nmax_recipients = 5x\n",
        "[ingress]\nmax_recipients = 99999999999999999999999\n",
        "[ingress]\nmax_message_size = 100\n",
        "[ingress]\nlisten = ::1\n",
        "[ingress]\ntrusted_networks = 10.0.0.0/33\n",
        "[ingress]\nrelay_domains = bad_domain.test\n",
        "[ingress]\nrelay_domains = two..dots.test\n",
        "[ingress]\nrelay_domains = -hyphen.test\n",
        "[up]\nredis_port = 70000\n",
        "[log]\nlevel = loud\n",
        "[redis]\nurl = redis://host:port\n",
        "[routes]\nbad_domain.test = 127.0.0.1:25\n",
        "[routes]\nexample.test = ::1\n",
        "[ingress\n",
        "just some text\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        if (load_text(bad[i], &cfg, err, sizeof err, path) != -1) fail_msg("accepted: %s", bad[i]);
        if (!err[0]) fail_msg("no error message for: %s", bad[i]);
    }

    assert_int_equal(load_text("[ingress]\nx = 1\n[log]\nlevel = debug\nnot a pair\n", &cfg, err,
                               sizeof err, path),
                     -1);
    assert_contains(err, ":2:"); /* the first error is the one reported */
}

/* A key that takes one of a list of names: each stored as its enum, any
 * other refused with the list, and printed back by name. */
static void test_config_choice(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    config_defaults(&cfg);
    assert_int_equal(cfg.crypto.smime_cipher, SMIME_AES256_CBC);
    assert_int_equal(cfg.crypto.smime_rsa_padding, SMIME_RSA_PKCS1);
    assert_int_equal(load_text("[crypto]\nsmime_cipher = AES256-GCM\nsmime_rsa_padding = oaep\n",
                               &cfg, err, sizeof err, path),
                     0);
    assert_int_equal(cfg.crypto.smime_cipher, SMIME_AES256_GCM);
    assert_int_equal(cfg.crypto.smime_rsa_padding, SMIME_RSA_OAEP);
    buf_t out;
    buf_init(&out);
    assert_int_equal(config_print(&cfg, &out), 0);
    assert_contains(out.data, "smime_cipher = aes256-gcm\n");
    assert_contains(out.data, "smime_rsa_padding = oaep\n");
    buf_free(&out);
    assert_int_equal(load_text("[crypto]\nsmime_cipher = des3\n", &cfg, err, sizeof err, path), -1);
    assert_contains(err, "'des3' is not one of aes256-cbc, aes256-gcm");
}

static void test_config_syntax_error_line(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    assert_int_equal(load_text("[ingress]\nmax_recipients = 5\nnot a key value line\n", &cfg, err,
                               sizeof err, path),
                     -1);
    assert_contains(err, path);
    assert_contains(err, ":3:");
}

/* inih and the setters read a line as a C string: a NUL would end it there
 * and the rest would be dropped unseen, so the file is refused instead. */
static void test_config_nul_byte_and_long_lines(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    static const char cut[] = "[worker]\nrelayhost = relay.test\0.other.test:25\n";
    write_temp_bytes(cut, sizeof cut - 1, path);
    assert_int_equal(config_load(&cfg, path, err, sizeof err), -1);
    unlink(path);
    assert_contains(err, ":2:");
    assert_contains(err, "NUL");
    static const char comment[] = "[worker]\n; a comment\0\nrelayhost = relay.test\n";
    write_temp_bytes(comment, sizeof comment - 1, path);
    assert_int_equal(config_load(&cfg, path, err, sizeof err), -1);
    unlink(path);
    assert_contains(err, ":2:");

    /* a line longer than inih's buffer is refused, not read as two lines */
    char text[400];
    int n = snprintf(text, sizeof text, "[ingress]\nrelay_domains =");
    while (n < 300)
        n += snprintf(text + n, sizeof text - (size_t)n, " a.test");
    snprintf(text + n, sizeof text - (size_t)n, "\n");
    assert_int_equal(load_text(text, &cfg, err, sizeof err, path), -1);
    assert_contains(err, ":2: line longer than");
    /* one just short of it, without a final newline, is read whole */
    assert_int_equal(load_text("[ingress]\nmax_recipients = 7", &cfg, err, sizeof err, path), 0);
    assert_int_equal(cfg.ingress.max_recipients, 7);
}

static void test_config_missing_file(void **state)
{
    (void)state;
    config_t cfg;
    char err[512] = "";
    assert_int_equal(config_load(&cfg, "/nonexistent/sealpost-test.conf", err, sizeof err), -1);
    assert_contains(err, "/nonexistent/sealpost-test.conf");
}

static void test_config_routes(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    assert_int_equal(load_text("[routes]\nexample.test = 127.0.0.1:2526\n"
                               "Mixed.Case.Test = [::1]:2527\n"
                               "noport.test = relay.test\n",
                               &cfg, err, sizeof err, path),
                     0);
    const net_hostport_t *hp = config_route_for(&cfg, "example.test");
    assert_non_null(hp);
    assert_string_equal(hp->host, "127.0.0.1");
    assert_int_equal(hp->port, 2526);
    assert_ptr_equal(config_route_for(&cfg, "EXAMPLE.Test"), hp);

    hp = config_route_for(&cfg, "mixed.case.test");
    assert_non_null(hp);
    assert_string_equal(hp->host, "::1");
    assert_int_equal(hp->port, 2527);
    assert_ptr_equal(config_route_for(&cfg, "MIXED.CASE.TEST"), hp);

    hp = config_route_for(&cfg, "noport.test");
    assert_non_null(hp);
    assert_string_equal(hp->host, "relay.test");
    assert_int_equal(hp->port, 25);

    /* no route and no relayhost */
    assert_null(config_route_for(&cfg, "elsewhere.test"));
    assert_null(config_route_for(&cfg, "test"));
    assert_null(config_route_for(&cfg, "sub.example.test"));
}

static void test_config_relayhost_fallback(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    assert_int_equal(load_text("[worker]\nrelayhost = smarthost.test\n"
                               "[routes]\nexample.test = 127.0.0.1:2526\n",
                               &cfg, err, sizeof err, path),
                     0);
    const net_hostport_t *hp = config_route_for(&cfg, "elsewhere.test");
    assert_non_null(hp);
    assert_ptr_equal(hp, &cfg.worker.relayhost);
    assert_string_equal(hp->host, "smarthost.test");
    assert_int_equal(hp->port, 25);
    hp = config_route_for(&cfg, "example.test");
    assert_non_null(hp);
    assert_int_equal(hp->port, 2526); /* a route wins over the relayhost */
}

static void test_config_env_override(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    assert_int_equal(setenv("SEALPOST_INGRESS_MAX_RECIPIENTS", "7", 1), 0);
    assert_int_equal(setenv("SEALPOST_ROUTES_OTHER_TEST", "127.0.0.1:9", 1), 0);
    assert_int_equal(setenv("SEALPOST_LOG_LEVEL", "warn", 1), 0);
    assert_int_equal(load_text("[ingress]\nmax_recipients = 50\nmax_connections = 9\n"
                               "[routes]\nexample.test = 127.0.0.1:2526\n",
                               &cfg, err, sizeof err, path),
                     0);
    assert_int_equal(cfg.ingress.max_recipients, 7);  /* the environment wins */
    assert_int_equal(cfg.ingress.max_connections, 9); /* the file still counts */
    assert_int_equal(cfg.log.level, LOG_WARN);
    const net_hostport_t *hp = config_route_for(&cfg, "other.test");
    assert_non_null(hp);
    assert_string_equal(hp->host, "127.0.0.1");
    assert_int_equal(hp->port, 9);
    assert_non_null(config_route_for(&cfg, "example.test"));

    /* an environment route replaces the file's route for the same domain */
    assert_int_equal(setenv("SEALPOST_ROUTES_EXAMPLE_TEST", "127.0.0.1:10", 1), 0);
    assert_int_equal(
        load_text("[routes]\nexample.test = 127.0.0.1:2526\n", &cfg, err, sizeof err, path), 0);
    hp = config_route_for(&cfg, "example.test");
    assert_non_null(hp);
    assert_int_equal(hp->port, 10);

    /* "none" empties a list, where an empty value cannot be written */
    assert_int_equal(setenv("SEALPOST_INGRESS_TRUSTED_NETWORKS", "none", 1), 0);
    assert_int_equal(load_text("", &cfg, err, sizeof err, path), 0);
    assert_int_equal(cfg.ingress.trusted_networks.n, 0);
    assert_int_equal(unsetenv("SEALPOST_INGRESS_TRUSTED_NETWORKS"), 0);

    /* without any file */
    assert_int_equal(config_load(&cfg, "/dev/null", err, sizeof err), 0);
    assert_int_equal(cfg.ingress.max_recipients, 7);
}

static void test_config_env_bad(void **state)
{
    (void)state;
    config_t cfg;
    char err[512] = "";
    assert_int_equal(setenv("SEALPOST_INGRESS_MAX_RECIPIENTS", "abc", 1), 0);
    assert_int_equal(config_load(&cfg, "/dev/null", err, sizeof err), -1);
    assert_contains(err, "SEALPOST_INGRESS_MAX_RECIPIENTS");
    assert_contains(err, "abc");
    assert_int_equal(unsetenv("SEALPOST_INGRESS_MAX_RECIPIENTS"), 0);

    err[0] = 0;
    assert_int_equal(setenv("SEALPOST_INGRESS_NO_SUCH_KEY", "1", 1), 0);
    assert_int_equal(config_load(&cfg, "/dev/null", err, sizeof err), -1);
    assert_contains(err, "SEALPOST_INGRESS_NO_SUCH_KEY");
    assert_int_equal(unsetenv("SEALPOST_INGRESS_NO_SUCH_KEY"), 0);

    err[0] = 0;
    assert_int_equal(setenv("SEALPOST_ROUTES_OTHER_TEST", "::1", 1), 0);
    assert_int_equal(config_load(&cfg, "/dev/null", err, sizeof err), -1);
    assert_contains(err, "SEALPOST_ROUTES_OTHER_TEST");
    assert_int_equal(unsetenv("SEALPOST_ROUTES_OTHER_TEST"), 0);

    /* with the bad variables gone, the same load works */
    assert_int_equal(config_load(&cfg, "/dev/null", err, sizeof err), 0);
}

/* A scratch working directory for the config_load(NULL) tests; the teardown
 * goes back and removes it even when a test fails half-way. */
struct cwd_state {
    char old_cwd[4096];
    char dir[64];
};

static int cwd_setup(void **state)
{
    static struct cwd_state cs;
    clear_sealpost_env();
    if (!getcwd(cs.old_cwd, sizeof cs.old_cwd)) return -1;
    snprintf(cs.dir, sizeof cs.dir, "/tmp/sealpost-test-dir-XXXXXX");
    if (!mkdtemp(cs.dir) || chdir(cs.dir) < 0) return -1;
    *state = &cs;
    return 0;
}

static int cwd_teardown(void **state)
{
    struct cwd_state *cs = *state;
    clear_sealpost_env();
    unlink("sealpost.conf");
    unlink("other.conf");
    if (chdir(cs->old_cwd) < 0) return -1;
    return rmdir(cs->dir);
}

/* config_load(NULL): $SEALPOST_CONFIG, else ./sealpost.conf, else defaults. */
static void test_config_default_path(void **state)
{
    (void)state;
    config_t cfg;
    char err[512] = "";
    assert_int_equal(config_load(&cfg, NULL, err, sizeof err), 0);
    assert_string_equal(cfg.path, "");
    assert_int_equal(cfg.ingress.max_recipients, 1000);
    assert_true(cfg.ingress.hostname[0] != 0); /* from gethostname */

    write_file("sealpost.conf", "[ingress]\nmax_recipients = 33\n");
    assert_int_equal(config_load(&cfg, NULL, err, sizeof err), 0);
    assert_string_equal(cfg.path, "sealpost.conf");
    assert_int_equal(cfg.ingress.max_recipients, 33);
    assert_int_equal(config_load(&cfg, "", err, sizeof err), 0);
    assert_int_equal(cfg.ingress.max_recipients, 33);

    write_file("other.conf", "[ingress]\nmax_recipients = 44\n");
    assert_int_equal(setenv("SEALPOST_CONFIG", "other.conf", 1), 0);
    assert_int_equal(config_load(&cfg, NULL, err, sizeof err), 0);
    assert_string_equal(cfg.path, "other.conf");
    assert_int_equal(cfg.ingress.max_recipients, 44);
    /* an explicit path wins over $SEALPOST_CONFIG */
    assert_int_equal(config_load(&cfg, "sealpost.conf", err, sizeof err), 0);
    assert_int_equal(cfg.ingress.max_recipients, 33);
}

/* What config_print writes reads back as the same configuration. */
static void test_config_print_roundtrip(void **state)
{
    (void)state;
    config_t cfg, again;
    char err[512], path[64];
    assert_int_equal(load_text(good_conf, &cfg, err, sizeof err, path), 0);
    buf_t first, second;
    buf_init(&first);
    buf_init(&second);
    assert_int_equal(config_print(&cfg, &first), 0);
    assert_non_null(strstr(first.data, "[routes]\nexample.test = 127.0.0.1:2526\n"));
    assert_non_null(strstr(first.data, "listen = [::1]:2600\n"));
    assert_non_null(strstr(first.data, "trusted_networks = 10.0.0.0/8 192.168.1.0/24 ::1/128\n"));

    assert_int_equal(load_text(first.data, &again, err, sizeof err, path), 0);
    assert_int_equal(config_print(&again, &second), 0);
    /* the first line names the file read; the rest must be identical */
    const char *a = strchr(first.data, '\n'), *b = strchr(second.data, '\n');
    assert_non_null(a);
    assert_non_null(b);
    assert_string_equal(a, b);
    buf_free(&first);
    buf_free(&second);
}

/* [crypto] openpgp_engine: gpgme unless told, rnp in any case, nothing
 * else (check-config says which words it takes); printed as read. */
static void test_config_openpgp_engine(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    config_defaults(&cfg);
    assert_int_equal(cfg.crypto.openpgp_engine, CONFIG_OPENPGP_GPGME);
    assert_int_equal(load_text("[crypto]\nopenpgp_engine = RNP\n", &cfg, err, sizeof err, path), 0);
    assert_int_equal(cfg.crypto.openpgp_engine, CONFIG_OPENPGP_RNP);
    buf_t out;
    buf_init(&out);
    assert_int_equal(config_print(&cfg, &out), 0);
    assert_non_null(strstr(out.data, "openpgp_engine = rnp\n"));
    buf_free(&out);
    assert_int_equal(load_text("[crypto]\nopenpgp_engine = sequoia\n", &cfg, err, sizeof err, path),
                     -1);
    assert_contains(err, "openpgp_engine");
    assert_contains(err, "gpgme, rnp");
}

/* [dkim]: no default domain and no x= unless told; the domain is
 * lower-cased (the worker compares it with lower-cased From domains), a
 * name that is no domain (or of one label) and an expiry past a year are
 * refused. */
static void test_config_dkim(void **state)
{
    (void)state;
    config_t cfg;
    char err[512], path[64];
    config_defaults(&cfg);
    assert_string_equal(cfg.dkim.default_domain, "");
    assert_int_equal(cfg.dkim.expire, 0);
    assert_int_equal(load_text("[dkim]\ndefault_domain = Mail.Example.TEST\nexpire = 604800\n",
                               &cfg, err, sizeof err, path),
                     0);
    assert_string_equal(cfg.dkim.default_domain, "mail.example.test");
    assert_int_equal(cfg.dkim.expire, 604800);
    buf_t out;
    buf_init(&out);
    assert_int_equal(config_print(&cfg, &out), 0);
    assert_non_null(
        strstr(out.data, "[dkim]\ndefault_domain = mail.example.test\nexpire = 604800\n"));
    buf_free(&out);
    assert_int_equal(load_text("[dkim]\ndefault_domain =\n", &cfg, err, sizeof err, path), 0);
    assert_string_equal(cfg.dkim.default_domain, "");
    assert_int_equal(
        load_text("[dkim]\ndefault_domain = a@example.test\n", &cfg, err, sizeof err, path), -1);
    assert_contains(err, "default_domain");
    /* One label is a host name but no signing domain: refused at load, not
     * left to never match a key. */
    assert_int_equal(load_text("[dkim]\ndefault_domain = localhost\n", &cfg, err, sizeof err, path),
                     -1);
    assert_contains(err, "default_domain");
    assert_contains(err, "two labels");
    assert_int_equal(
        load_text("[dkim]\ndefault_domain = example.test.\n", &cfg, err, sizeof err, path), -1);
    assert_int_equal(load_text("[dkim]\ndefault_domain = a.b\n", &cfg, err, sizeof err, path), 0);
    assert_string_equal(cfg.dkim.default_domain, "a.b");
    assert_int_equal(load_text("[dkim]\nexpire = 31536001\n", &cfg, err, sizeof err, path), -1);
    assert_contains(err, "expire");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_config_defaults, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_good_file, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_unknown_key, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_bad_value, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_choice, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_syntax_error_line, config_setup,
                                        config_teardown),
        cmocka_unit_test_setup_teardown(test_config_nul_byte_and_long_lines, config_setup,
                                        config_teardown),
        cmocka_unit_test_setup_teardown(test_config_missing_file, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_routes, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_relayhost_fallback, config_setup,
                                        config_teardown),
        cmocka_unit_test_setup_teardown(test_config_env_override, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_env_bad, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_default_path, cwd_setup, cwd_teardown),
        cmocka_unit_test_setup_teardown(test_config_print_roundtrip, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_openpgp_engine, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_dkim, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_redis_url_login, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_redis_url_bad, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(test_config_redis_password_file, config_setup,
                                        config_teardown),
        cmocka_unit_test_setup_teardown(test_config_redis_url_printed_without_password,
                                        config_setup, config_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
