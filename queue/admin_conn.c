/* The administration connection: blocking, for the CLI, on our own socket
 * (with TLS for rediss://, OpenSSL straight on it) and hiredis's formatter
 * and reader, since hiredis 0.14's blocking context cannot speak TLS. Each
 * connection logs in (AUTH) before anything else. On Redis
 * Cluster it reads the slot map once, connects to each master when first
 * needed, and follows MOVED, ASK, TRYAGAIN and CLUSTERDOWN like the
 * asynchronous router does (cluster.c). Writes are calls of the functions
 * library, which it loads on a master that has none or another version
 * (asked with library_digest on each new connection, as the nodes ask): the
 * command line may come before any node, as `sealpost users add` does, and
 * under the ACL only admin may load it, so after an upgrade the nodes wait
 * for the command line's first call. */
#include "queue/internal.h"

#include "core/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define ADMIN_MAX_NODES 64
#define ADMIN_MAX_TRIES 16

/* One blocking connection: replies are read in the order the commands
 * were appended, as hiredis's redisContext does. */
typedef struct admin_link {
    int fd;
    SSL *ssl; /* rediss:// only */
    redisReader *reader;
    size_t announced; /* the reader's count of the reply it reads */
    buf_t out;        /* appended, not yet written */
    char errstr[256];
} admin_link_t;

struct admin_node {
    char host[256];
    int port;
    admin_link_t *ctx; /* NULL until first used */
    bool library_ours; /* this connection found or loaded our library */
};

struct queue_admin {
    struct timeval tv;
    redis_endpoint_t login; /* every node's: its host and port aside */
    SSL_CTX *tls_ctx;
    struct admin_node nodes[ADMIN_MAX_NODES]; /* [0] is the address given */
    int n_nodes;
    int16_t *owner;    /* slot -> node; NULL on a single Redis */
    library_t library; /* prepared when first loaded */
};

static int admin_node_get(queue_admin_t *a, const char *host, int port)
{
    for (int i = 0; i < a->n_nodes; i++)
        if (a->nodes[i].port == port && !strcmp(a->nodes[i].host, host)) return i;
    if (a->n_nodes == ADMIN_MAX_NODES) return -1;
    struct admin_node *n = &a->nodes[a->n_nodes];
    snprintf(n->host, sizeof n->host, "%s", host);
    n->port = port;
    n->ctx = NULL;
    return a->n_nodes++;
}

static void link_free(admin_link_t *l)
{
    if (!l) return;
    if (l->ssl) {
        SSL_shutdown(l->ssl);
        SSL_free(l->ssl);
    }
    if (l->fd >= 0) close(l->fd);
    redisReaderFree(l->reader);
    buf_free(&l->out);
    free(l);
}

/* A TCP connection with the timeout on connect, reads and writes. */
static int tcp_connect(const char *host, int port, const struct timeval *tv, char *err,
                       size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    char service[8];
    snprintf(service, sizeof service, "%d", port);
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s", gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (const struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) continue;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, tv, sizeof *tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, tv, sizeof *tv); /* connect's too */
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            /* SO_SNDTIMEO ran out: the connect is given up, not in progress */
            snprintf(err, errlen, "%s", errno == EINPROGRESS ? "timed out" : strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

/* The certificate must chain to the CA and name the server (tls_server_name,
 * else the host), as the nodes check it (stream.c). */
static int link_tls(admin_link_t *l, SSL_CTX *ctx, const char *name, char *err, size_t errlen)
{
    if (!(l->ssl = SSL_new(ctx)) || SSL_set_fd(l->ssl, l->fd) != 1) {
        snprintf(err, errlen, "TLS: out of memory");
        return -1;
    }
    unsigned char ip[16];
    bool is_ip = inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1;
    if (!is_ip) SSL_set_tlsext_host_name(l->ssl, name);
    SSL_set_verify(l->ssl, SSL_VERIFY_PEER, NULL);
    if (is_ip)
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(l->ssl), name);
    else
        SSL_set1_host(l->ssl, name);
    if (SSL_connect(l->ssl) == 1) return 0;
    long verify = SSL_get_verify_result(l->ssl);
    char reason[200] = "handshake failed";
    unsigned long e = ERR_get_error();
    if (verify != X509_V_OK)
        snprintf(reason, sizeof reason, "certificate verify failed: %s",
                 X509_verify_cert_error_string(verify));
    else if (e)
        ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    snprintf(err, errlen, "TLS: %s", reason);
    return -1;
}

static int link_append(admin_link_t *l, int argc, const char **argv, const size_t *lens)
{
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    int rc = len < 0 ? -1 : buf_append(&l->out, cmd, (size_t)len);
    free(cmd);
    if (rc < 0) snprintf(l->errstr, sizeof l->errstr, "out of memory");
    return rc;
}

static int link_flush(admin_link_t *l)
{
    while (l->out.len) {
        ssize_t n = l->ssl ? SSL_write(l->ssl, l->out.data, (int)l->out.len)
                           : send(l->fd, l->out.data, l->out.len, MSG_NOSIGNAL);
        if (n <= 0) {
            snprintf(l->errstr, sizeof l->errstr, "write failed: %s",
                     errno == EAGAIN ? "timed out" : strerror(errno));
            return -1;
        }
        buf_consume(&l->out, (size_t)n);
    }
    return 0;
}

/* The next reply, after writing what was appended: REDIS_OK or REDIS_ERR
 * with errstr, as redisGetReply. */
static int link_get_reply(admin_link_t *l, void **reply)
{
    *reply = NULL;
    if (link_flush(l) < 0) return REDIS_ERR;
    for (;;) {
        if (redisReaderGetReply(l->reader, reply) != REDIS_OK) {
            snprintf(l->errstr, sizeof l->errstr, "protocol error");
            return REDIS_ERR;
        }
        if (*reply) return REDIS_OK;
        char in[16384];
        ssize_t n = l->ssl ? SSL_read(l->ssl, in, sizeof in) : recv(l->fd, in, sizeof in, 0);
        if (n <= 0) {
            snprintf(l->errstr, sizeof l->errstr, "%s",
                     n == 0            ? "connection closed"
                     : errno == EAGAIN ? "timed out"
                                       : "read failed");
            return REDIS_ERR;
        }
        if (redisReaderFeed(l->reader, in, (size_t)n) != REDIS_OK) {
            snprintf(l->errstr, sizeof l->errstr, "out of memory");
            return REDIS_ERR;
        }
    }
}

static redisReply *link_command(admin_link_t *l, int argc, const char **argv, const size_t *lens)
{
    void *r = NULL;
    if (link_append(l, argc, argv, lens) < 0 || link_get_reply(l, &r) != REDIS_OK) return NULL;
    return r;
}

/* AUTH user password, or AUTH password for the default user. */
static int link_login(admin_link_t *l, const redis_endpoint_t *ep, char *err, size_t errlen)
{
    if (!ep->pass[0]) return 0;
    const char *argv[] = {"AUTH", ep->user[0] ? ep->user : ep->pass, ep->pass};
    redisReply *r = link_command(l, ep->user[0] ? 3 : 2, argv, NULL);
    int rc = r && r->type != REDIS_REPLY_ERROR ? 0 : -1;
    if (rc < 0) snprintf(err, errlen, "AUTH: %s", r ? r->str : l->errstr);
    freeReplyObject(r);
    return rc;
}

static admin_link_t *link_open(queue_admin_t *a, const char *host, int port, char *err,
                               size_t errlen)
{
    admin_link_t *l = calloc(1, sizeof *l);
    if (!l || !(l->reader = rconn_reader_new(&l->announced))) {
        free(l);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    buf_init(&l->out);
    const char *name = a->login.server_name[0] ? a->login.server_name : host;
    if ((l->fd = tcp_connect(host, port, &a->tv, err, errlen)) < 0 ||
        (a->tls_ctx && link_tls(l, a->tls_ctx, name, err, errlen) < 0) ||
        link_login(l, &a->login, err, errlen) < 0) {
        link_free(l);
        return NULL;
    }
    return l;
}

static admin_link_t *admin_node_ctx(queue_admin_t *a, int i, char *err, size_t errlen)
{
    struct admin_node *n = &a->nodes[i];
    if (n->ctx) return n->ctx;
    char why[300];
    n->library_ours = false; /* a new connection may be to a Redis restarted empty */
    n->ctx = link_open(a, n->host, n->port, why, sizeof why);
    if (!n->ctx) snprintf(err, errlen, "cannot reach Redis at %s:%d: %s", n->host, n->port, why);
    return n->ctx;
}

static int slots_assign(unsigned from, unsigned to, const char *host, int port, void *arg)
{
    queue_admin_t *a = arg;
    int i = admin_node_get(a, host, port);
    if (i < 0) return -1;
    for (unsigned s = from; s <= to; s++)
        a->owner[s] = (int16_t)i;
    return 0;
}

/* A single Redis answers CLUSTER SLOTS with an error; a cluster node with
 * the map. */
static int admin_read_slots(queue_admin_t *a, char *err, size_t errlen)
{
    const char *argv[] = {"CLUSTER", "SLOTS"};
    redisReply *r = link_command(a->nodes[0].ctx, 2, argv, NULL);
    if (!r) {
        snprintf(err, errlen, "redis: %s", a->nodes[0].ctx->errstr);
        return -1;
    }
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR && cluster_single_error(r->str)) {
        /* a single Redis */
    } else if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis: %s", r->str); /* LOADING and the like: try again */
        rc = -1;
    } else if (!(a->owner = malloc(CLUSTER_SLOTS * sizeof *a->owner))) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    } else {
        memset(a->owner, 0xff, CLUSTER_SLOTS * sizeof *a->owner);
        if (cluster_slots_parse(r, a->nodes[0].host, slots_assign, a) < 0) {
            snprintf(err, errlen, "redis: unexpected CLUSTER SLOTS reply");
            rc = -1;
        }
    }
    freeReplyObject(r);
    return rc;
}

queue_admin_t *queue_admin_open(const redis_endpoint_t *redis, unsigned timeout_ms, char *err,
                                size_t errlen)
{
    signal(SIGPIPE, SIG_IGN); /* SSL_write on a connection Redis closed */
    queue_admin_t *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->login = *redis;
    if (redis->tls &&
        !(a->tls_ctx = tls_redis_context(redis->ca_file, redis->cert, redis->key, err, errlen))) {
        queue_admin_close(a);
        return NULL;
    }
    a->tv = (struct timeval){.tv_sec = timeout_ms / 1000,
                             .tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000};
    admin_node_get(a, redis->host, redis->port);
    if (!admin_node_ctx(a, 0, err, errlen) || admin_read_slots(a, err, errlen) < 0) {
        queue_admin_close(a);
        return NULL;
    }
    return a;
}

void queue_admin_close(queue_admin_t *a)
{
    if (!a) return;
    for (int i = 0; i < a->n_nodes; i++)
        link_free(a->nodes[i].ctx);
    SSL_CTX_free(a->tls_ctx);
    config_redis_endpoint_clear(&a->login);
    free(a->owner);
    library_free(&a->library);
    free(a);
}

/* The node for a command: its key's master. */
static int admin_route(const queue_admin_t *a, int argc, const char **argv, const size_t *lens)
{
    if (!a->owner) return 0;
    int slot = cluster_command_slot(argc, argv, lens);
    return slot >= 0 && a->owner[slot] >= 0 ? a->owner[slot] : 0;
}

static int admin_library_check(queue_admin_t *a, int node, char *err, size_t errlen);

/* Runs one command where it belongs, following redirects: the last reply
 * (an error reply too), or NULL with err set. A call of our functions
 * (library) first makes sure each node it goes to has our library. */
static redisReply *admin_exec(queue_admin_t *a, bool library, char *err, size_t errlen, int argc,
                              const char **argv, const size_t *lens)
{
    int node = admin_route(a, argc, argv, lens);
    bool asking = false;
    for (int tries = 0;; tries++) {
        admin_link_t *ctx = admin_node_ctx(a, node, err, errlen);
        if (!ctx || (library && admin_library_check(a, node, err, errlen) < 0)) return NULL;
        static const char *const ask[] = {"ASKING"};
        if (asking) freeReplyObject(link_command(ctx, 1, (const char **)ask, NULL));
        redisReply *r = link_command(ctx, argc, argv, lens);
        if (!r) {
            snprintf(err, errlen, "redis: %s", ctx->errstr);
            link_free(ctx); /* a broken connection is not used again */
            a->nodes[node].ctx = NULL;
            return NULL;
        }
        if (r->type != REDIS_REPLY_ERROR || tries == ADMIN_MAX_TRIES) return r;
        unsigned slot;
        char host[256];
        int port;
        enum cluster_redirect kind =
            cluster_redirect_parse(r->str, a->nodes[node].host, &slot, host, sizeof host, &port);
        if (kind == REDIRECT_NONE) return r;
        freeReplyObject(r);
        asking = kind == REDIRECT_ASK;
        if (kind == REDIRECT_RETRY) {
            usleep(20000u << (tries < 5 ? tries : 5));
            continue;
        }
        int to = admin_node_get(a, host, port);
        if (to < 0) {
            snprintf(err, errlen, "redis: too many cluster nodes");
            return NULL;
        }
        if (kind == REDIRECT_MOVED && a->owner) a->owner[slot] = (int16_t)to;
        node = to;
    }
}

/* An error reply becomes err and NULL. */
static redisReply *admin_reply(redisReply *r, char *err, size_t errlen)
{
    if (r && r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis: %s", r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

redisReply *queue_admin_command(queue_admin_t *a, char *err, size_t errlen, int argc,
                                const char **argv)
{
    return admin_reply(admin_exec(a, false, err, errlen, argc, argv, NULL), err, errlen);
}

/* FUNCTION LOAD REPLACE of the library as the nodes load it (same code, same
 * digest: they find it theirs), on one node. */
static int admin_load_library(queue_admin_t *a, int node, char *err, size_t errlen)
{
    if (!a->library.code.data && library_prepare(&a->library) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    admin_link_t *ctx = admin_node_ctx(a, node, err, errlen);
    if (!ctx) return -1;
    const char *argv[] = {"FUNCTION", "LOAD", "REPLACE", a->library.code.data};
    size_t lens[] = {8, 4, 7, a->library.code.len};
    redisReply *r = link_command(ctx, 4, argv, lens);
    int rc = r && r->type != REDIS_REPLY_ERROR ? 0 : -1;
    if (rc < 0)
        snprintf(err, errlen, "redis: cannot load the functions library: %s",
                 r ? r->str : ctx->errstr);
    if (!r) {
        link_free(ctx);
        a->nodes[node].ctx = NULL;
    }
    freeReplyObject(r);
    return rc;
}

static bool function_missing(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "ERR Function not found", 22);
}

/* Asks a node which library it has (FCALL_RO library_digest, as the nodes
 * do in cluster.c) and loads ours when it has none, an older one without
 * the digest function, or another one: a call of the binary's functions on
 * another version's code would run with other arities, or not at all, and
 * nodes that may not load it (the ACL) would stay unready. Once per
 * connection. */
static int admin_library_check(queue_admin_t *a, int node, char *err, size_t errlen)
{
    struct admin_node *n = &a->nodes[node];
    if (n->library_ours) return 0;
    if (!a->library.code.data && library_prepare(&a->library) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    const char *argv[] = {"FCALL_RO", LIBRARY_DIGEST_FUNCTION, "0"};
    redisReply *r = link_command(n->ctx, 3, argv, NULL);
    if (!r) {
        snprintf(err, errlen, "redis: %s", n->ctx->errstr);
        link_free(n->ctx);
        n->ctx = NULL;
        return -1;
    }
    bool ours = r->type == REDIS_REPLY_STRING && !strcmp(r->str, a->library.digest);
    bool other = function_missing(r) || r->type == REDIS_REPLY_STRING;
    if (!ours && !other)
        snprintf(err, errlen, "redis: cannot check the functions library: %s",
                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    freeReplyObject(r);
    if (!ours && (!other || admin_load_library(a, node, err, errlen) < 0)) return -1;
    n->library_ours = true;
    return 0;
}

redisReply *queue_admin_fcall(queue_admin_t *a, const call_keys_t *keys, int nargs,
                              const char **args, const size_t *arg_lens, char *err, size_t errlen)
{
    fcall_argv_t v;
    if (fcall_argv_build(&v, keys, nargs, args, arg_lens) < 0) {
        snprintf(err, errlen, "cannot make the call of %s (out of memory, or a key too long)",
                 schema_fn_name(keys->fn));
        return NULL;
    }
    redisReply *r = admin_exec(a, true, err, errlen, v.argc, v.argv, v.lens);
    fcall_argv_free(&v);
    return admin_reply(r, err, errlen);
}

redisReply *queue_admin_call(queue_admin_t *a, enum queue_fn fn, const key_ids_t *ids, int nargs,
                             const char **args, const size_t *arg_lens, char *err, size_t errlen)
{
    call_keys_t keys;
    call_keys_init(&keys, fn, ids);
    redisReply *r = queue_admin_fcall(a, &keys, nargs, args, arg_lens, err, errlen);
    call_keys_free(&keys);
    return r;
}

/* Appends every command, then reads every reply: the number of replies read. */
static int admin_pipelined(queue_admin_t *a, int n, int argc[], const char **argv[],
                           redisReply *out[], char *err, size_t errlen)
{
    admin_link_t *ctx = admin_node_ctx(a, 0, err, errlen);
    if (!ctx) return 0;
    for (int i = 0; i < n; i++)
        if (link_append(ctx, argc[i], argv[i], NULL) < 0) {
            snprintf(err, errlen, "redis: %s", ctx->errstr);
            return 0;
        }
    for (int i = 0; i < n; i++) {
        void *r = NULL;
        if (link_get_reply(ctx, &r) != REDIS_OK || !r) {
            snprintf(err, errlen, "redis: %s", ctx->errstr);
            return i;
        }
        out[i] = r;
    }
    return n;
}

int queue_admin_pipeline(queue_admin_t *a, int n, int argc[], const char **argv[],
                         redisReply *out[], char *err, size_t errlen)
{
    int got = 0;
    if (a->owner) /* commands for several masters: one by one, each routed */
        while (got < n &&
               (out[got] = admin_exec(a, false, err, errlen, argc[got], argv[got], NULL)))
            got++;
    else
        got = admin_pipelined(a, n, argc, argv, out, err, errlen);
    if (got < n) {
        for (int i = 0; i < got; i++)
            freeReplyObject(out[i]);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (out[i]->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "redis: %s", out[i]->str);
            for (int j = 0; j < n; j++)
                freeReplyObject(out[j]);
            return -1;
        }
    return 0;
}
