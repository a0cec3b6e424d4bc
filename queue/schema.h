/* Private to queue/: the functions library (functions/sealpost.lua) as the C
 * side sees it. Each function's KEYS are declared once, in the table of
 * schema.c, in the order the Lua function reads them (its "-- KEYS:" line,
 * which tests/unit/test_queue.c compares with the table); every call builds
 * its keys with call_keys_*, and no other C code spells a key's name. Also
 * here: the job id, made and read in one place, and the library's code with
 * its digest, as nodes and the command line load it. */
#ifndef SEALPOST_QUEUE_SCHEMA_H
#define SEALPOST_QUEUE_SCHEMA_H

#include "core/core.h"

#include <stdbool.h>
#include <stddef.h>

/* What a key is; the names of sealpost.lua's header, which lists their types. */
enum key_kind {
    KEY_END, /* ends a list of kinds */
    /* a shard's, {mq:<shard>}:<name> */
    KEY_DUE,
    KEY_LEASE,
    KEY_HELD,
    KEY_META,
    KEY_ST,
    KEY_DOM,
    KEY_AGE,
    KEY_LOG,
    KEY_DQ,
    KEY_MESSAGE,   /* m:<mid> */
    KEY_BODY,      /* b:<mid>:<variant> */
    KEY_JOB,       /* j:<jid> */
    KEY_WITHDRAWN, /* w:<mid>, a withdrawal's tombstone */
    KEY_ENC,       /* the recipients per minute by the kind of copy they got */
    /* SMTP users, {sealpost:auth}:<name> */
    KEY_USERS,
    KEY_CRAM,
    KEY_FAIL,      /* fail:<client> */
    KEY_USER_MACS, /* the users' tags */
    /* the crypto side's, {sealpost:crypto}:<name> */
    KEY_SEALCHECK,
    KEY_ADDRESS, /* a:<address> */
    KEY_FPR,     /* k:<fingerprint> */
    KEY_KEYS,
    KEY_POLICY,
    KEY_VERSION,
    KEY_PREFER,
    KEY_EXPIRY_OPENPGP, /* the expiry index of the OpenPGP keys */
    KEY_EXPIRY_SMIME,   /* ... and of the certificates */
    KEY_MACS,           /* the directory's index: entry -> tag */
    KEY_DIRMAC,         /* the index's seal: version, tag */
    KEY_DISC,           /* disc:<address>, a discovered key */
    KEY_MISS,           /* miss:<address>, nothing discovered, for a while */
    KEY_DOMAIN_MISS,    /* dmiss:<domain>, a domain without WKD, for a while */
    KEY_DVERSION,       /* raised by each of those */
    KEY_DINDEX,         /* every address with a discovered key */
    /* the DKIM signing keys, {sealpost:dkim}:<name> */
    KEY_DKIM_DOMAIN, /* d:<domain>, its selectors */
    KEY_DKIM_DOMAINS,
    KEY_DKIM_VERSION,
    KEY_KINDS
};

/* What keys are named after; each kind reads the fields it needs. */
typedef struct key_ids {
    unsigned shard;
    const char *mid;    /* KEY_MESSAGE, KEY_BODY */
    unsigned variant;   /* KEY_BODY */
    const char *jid;    /* KEY_JOB */
    const char *client; /* KEY_FAIL */
    const char *addr;   /* KEY_ADDRESS */
    const char *fpr;    /* KEY_FPR */
    const char *domain; /* KEY_DKIM_DOMAIN */
} key_ids_t;

#define KEY_MAX 320
typedef char key_t_[KEY_MAX];

/* One key's name; -1 when an id it needs is missing or the name does not fit. */
int schema_key(key_t_ out, enum key_kind kind, const key_ids_t *ids);

/* The functions of the library, as registered. */
enum queue_fn {
    FN_ENQUEUE,
    FN_WITHDRAW,
    FN_CLAIM,
    FN_FETCH,
    FN_FORGET,
    FN_EXTEND,
    FN_COMPLETE,
    FN_JOB_TAMPERED,
    FN_JOB_OP,
    FN_TOP,
    FN_RECENT,
    FN_STATS,
    FN_AUTH_BEGIN,
    FN_AUTH_UNCOUNT,
    FN_USER_SET,
    FN_USER_DELETE,
    FN_USER_LIST,
    FN_USER_TAG,
    FN_USER_RECORDS,
    FN_SEAL_CHECK,
    FN_KEY_LOOKUP,
    FN_KEY_VERSION,
    FN_KEY_GET,
    FN_KEY_FPRS,
    FN_KEY_PUT,
    FN_KEY_DELETE,
    FN_POLICY_SET,
    FN_POLICY_LIST,
    FN_PREFER_SET,
    FN_COPY_SHARES,
    FN_KEY_INDEX,
    FN_KEY_SUMMARY,
    FN_KEY_ADDRESSES,
    FN_KEY_DIRECTORY,
    FN_KEY_SEAL,
    FN_DKIM_PUT,
    FN_DKIM_DELETE,
    FN_DKIM_ACTIVATE,
    FN_DKIM_DOMAINS,
    FN_DKIM_GET,
    FN_DKIM_VERSION,
    FN_DKIM_TAG,
    FN_DISC_PUT,
    FN_DISC_MISS,
    FN_DISC_DOMAIN_MISS,
    FN_DISC_DELETE,
    FN_DISC_ADDRESSES,
    FN_DISC_GET,
    FN_DISC_DUE,
    FNS
};

/* The parts of KEYS after a function's fixed keys, each a run of keys (one
 * group per item) or a group that is there or not. By function, in order: */
enum { ENQUEUE_BODY, ENQUEUE_JOB };
enum { WITHDRAW_BODY, WITHDRAW_JOB };
enum { COMPLETE_BOUNCE };
enum { KEY_PUT_ADDRESS, KEY_PUT_DROPPED, KEY_PUT_OTHER };
enum { KEY_DELETE_ADDRESS, KEY_DELETE_OTHER };
enum { KEY_INDEX_KEY };
enum { KEY_ADDRESSES_KEY };

const char *schema_fn_name(enum queue_fn fn);
/* Registered with the no-writes flag: called with FCALL_RO. */
bool schema_fn_read_only(enum queue_fn fn);
/* fn's KEYS as its "-- KEYS:" line in sealpost.lua spells them
 * ("due, lease, meta, j", "m, ..., b..., j...", "..., dq, [m, b, j]"). */
int schema_keys_text(enum queue_fn fn, char *out, size_t len);

/* The KEYS of one call, built in order. A failure (out of memory, a part
 * out of order, an id missing) is remembered, and a call with such keys is
 * refused when it is sent. */
typedef struct call_keys {
    enum queue_fn fn;
    key_t_ *names;
    const char **list; /* names[i], as argv wants them */
    unsigned n, cap;
    unsigned next_part; /* parts before it are closed */
    bool failed;
} call_keys_t;

/* Starts fn's KEYS: its fixed keys, named from ids. */
void call_keys_init(call_keys_t *ck, enum queue_fn fn, const key_ids_t *ids);
/* Appends one group of fn's tail part `part`, named from ids. */
void call_keys_add(call_keys_t *ck, unsigned part, const key_ids_t *ids);
void call_keys_free(call_keys_t *ck);

/* The words of one call: FCALL (FCALL_RO for a no-writes function), its
 * name, the number of keys, the keys, the arguments. */
typedef struct fcall_argv {
    const char **argv;
    size_t *lens;
    int argc;
    char numkeys[16];
} fcall_argv_t;

/* -1 when the keys failed or memory ran out (nothing to free then). arg_lens
 * may be NULL for NUL-terminated args. The words point into ck and args. */
int fcall_argv_build(fcall_argv_t *v, const call_keys_t *ck, int nargs, const char **args,
                     const size_t *arg_lens);
void fcall_argv_free(fcall_argv_t *v);

/* A job id, "<mid>.<variant>.<n>": the message's id (32 lower-case hex
 * digits, as util_random_id makes them), the body variant the job sends,
 * and its number in the message. */
#define JOB_ID_MAX 48 /* room for one, NUL included (queue_claimed_t.jid) */
typedef struct job_id {
    char mid[33];
    unsigned variant, n;
} job_id_t;

/* 0, or -1 when jid is not a job id. */
int job_id_parse(const char *jid, job_id_t *out);
/* 0, or -1 when mid is not a message id or the id does not fit. */
int job_id_format(char out[JOB_ID_MAX], const char *mid, unsigned variant, unsigned n);

/* The library as every node and the command line load it: sealpost.lua with
 * one more function, LIBRARY_DIGEST_FUNCTION, that returns digest. A node
 * that answers it with ours has this very library and needs no load; the
 * digest covers the code, so a new version is loaded over an old one. */
#define LIBRARY_DIGEST_FUNCTION "library_digest"
typedef struct library {
    buf_t code;
    char digest[33]; /* hex */
} library_t;

int library_prepare(library_t *lib);
void library_free(library_t *lib);

/* sealpost.lua itself, compiled in (cmake/embed.cmake), NUL-terminated. */
extern const char queue_functions_lua[];
extern const size_t queue_functions_lua_len;

#endif
