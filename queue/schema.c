/* The functions library's schema: each function's KEYS, the names of keys,
 * job ids, and the library's code as loaded (see schema.h). */
#include "queue/schema.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- keys ---- */

enum key_scope { SCOPE_SHARD, SCOPE_AUTH, SCOPE_CRYPTO, SCOPE_DKIM };
/* What a kind's name carries after the fixed part. */
enum key_id { ID_NONE, ID_MID, ID_BODY, ID_JID, ID_CLIENT, ID_ADDR, ID_FPR, ID_DOMAIN };

static const struct {
    const char *name; /* in the key and in sealpost.lua's KEYS lines */
    enum key_scope scope;
    enum key_id id;
} kinds[KEY_KINDS] = {
    [KEY_DUE] = {"due", SCOPE_SHARD, ID_NONE},
    [KEY_LEASE] = {"lease", SCOPE_SHARD, ID_NONE},
    [KEY_HELD] = {"held", SCOPE_SHARD, ID_NONE},
    [KEY_META] = {"meta", SCOPE_SHARD, ID_NONE},
    [KEY_ST] = {"st", SCOPE_SHARD, ID_NONE},
    [KEY_DOM] = {"dom", SCOPE_SHARD, ID_NONE},
    [KEY_AGE] = {"age", SCOPE_SHARD, ID_NONE},
    [KEY_LOG] = {"log", SCOPE_SHARD, ID_NONE},
    [KEY_DQ] = {"dq", SCOPE_SHARD, ID_NONE},
    [KEY_MESSAGE] = {"m", SCOPE_SHARD, ID_MID},
    [KEY_BODY] = {"b", SCOPE_SHARD, ID_BODY},
    [KEY_JOB] = {"j", SCOPE_SHARD, ID_JID},
    [KEY_WITHDRAWN] = {"w", SCOPE_SHARD, ID_MID},
    [KEY_ENC] = {"enc", SCOPE_SHARD, ID_NONE},
    [KEY_USERS] = {"users", SCOPE_AUTH, ID_NONE},
    [KEY_CRAM] = {"cram", SCOPE_AUTH, ID_NONE},
    [KEY_FAIL] = {"fail", SCOPE_AUTH, ID_CLIENT},
    [KEY_USER_MACS] = {"macs", SCOPE_AUTH, ID_NONE},
    [KEY_SEALCHECK] = {"sealcheck", SCOPE_CRYPTO, ID_NONE},
    [KEY_ADDRESS] = {"a", SCOPE_CRYPTO, ID_ADDR},
    [KEY_FPR] = {"k", SCOPE_CRYPTO, ID_FPR},
    [KEY_KEYS] = {"keys", SCOPE_CRYPTO, ID_NONE},
    [KEY_POLICY] = {"policy", SCOPE_CRYPTO, ID_NONE},
    [KEY_VERSION] = {"version", SCOPE_CRYPTO, ID_NONE},
    [KEY_PREFER] = {"prefer", SCOPE_CRYPTO, ID_NONE},
    [KEY_EXPIRY_OPENPGP] = {"expiry_openpgp", SCOPE_CRYPTO, ID_NONE},
    [KEY_EXPIRY_SMIME] = {"expiry_smime", SCOPE_CRYPTO, ID_NONE},
    [KEY_MACS] = {"macs", SCOPE_CRYPTO, ID_NONE},
    [KEY_DIRMAC] = {"dirmac", SCOPE_CRYPTO, ID_NONE},
    [KEY_DISC] = {"disc", SCOPE_CRYPTO, ID_ADDR},
    [KEY_MISS] = {"miss", SCOPE_CRYPTO, ID_ADDR},
    [KEY_DOMAIN_MISS] = {"dmiss", SCOPE_CRYPTO, ID_DOMAIN},
    [KEY_DVERSION] = {"dversion", SCOPE_CRYPTO, ID_NONE},
    [KEY_DINDEX] = {"dindex", SCOPE_CRYPTO, ID_NONE},
    [KEY_DKIM_DOMAIN] = {"d", SCOPE_DKIM, ID_DOMAIN},
    [KEY_DKIM_DOMAINS] = {"domains", SCOPE_DKIM, ID_NONE},
    [KEY_DKIM_VERSION] = {"version", SCOPE_DKIM, ID_NONE},
};

/* Each scope's hash tag, with the colon that follows it (a shard's is built). */
static const char *const scope_prefixes[] = {
    [SCOPE_AUTH] = "{sealpost:auth}:",
    [SCOPE_CRYPTO] = "{sealpost:crypto}:",
    [SCOPE_DKIM] = "{sealpost:dkim}:",
};

/* The id a kind's name ends with; NULL when it has none, or it is missing. */
static const char *key_id_of(enum key_id id, const key_ids_t *ids)
{
    switch (id) {
    case ID_MID:
    case ID_BODY:
        return ids->mid;
    case ID_JID:
        return ids->jid;
    case ID_CLIENT:
        return ids->client;
    case ID_ADDR:
        return ids->addr;
    case ID_FPR:
        return ids->fpr;
    case ID_DOMAIN:
        return ids->domain;
    case ID_NONE:
        break;
    }
    return NULL;
}

/* Appends text at *pos of out; false once it does not fit. */
static bool put(char *out, size_t len, size_t *pos, const char *text)
{
    size_t n = strlen(text);
    if (*pos + n >= len) return false;
    memcpy(out + *pos, text, n + 1);
    *pos += n;
    return true;
}

static bool put_uint(char *out, size_t len, size_t *pos, unsigned v)
{
    char digits[16];
    size_t i = sizeof digits - 1;
    digits[i] = 0;
    do
        digits[--i] = (char)('0' + v % 10);
    while ((v /= 10) && i > 0);
    return put(out, len, pos, digits + i);
}

/* Every call builds a dozen of these: written with memcpy, not snprintf,
 * which made up a tenth of a worker's instructions per message. */
int schema_key(key_t_ out, enum key_kind kind, const key_ids_t *ids)
{
    if (kind <= KEY_END || kind >= KEY_KINDS) return -1;
    enum key_id which = kinds[kind].id;
    const char *id = key_id_of(which, ids);
    if (which != ID_NONE && !id) return -1;
    size_t pos = 0;
    bool ok = kinds[kind].scope == SCOPE_SHARD
                  ? put(out, KEY_MAX, &pos, "{mq:") && put_uint(out, KEY_MAX, &pos, ids->shard) &&
                        put(out, KEY_MAX, &pos, "}:")
                  : put(out, KEY_MAX, &pos, scope_prefixes[kinds[kind].scope]);
    ok = ok && put(out, KEY_MAX, &pos, kinds[kind].name);
    if (which != ID_NONE) ok = ok && put(out, KEY_MAX, &pos, ":") && put(out, KEY_MAX, &pos, id);
    if (which == ID_BODY)
        ok = ok && put(out, KEY_MAX, &pos, ":") && put_uint(out, KEY_MAX, &pos, ids->variant);
    return ok ? 0 : -1;
}

/* ---- each function's KEYS ---- */

#define FIXED_MAX 12
#define PARTS_MAX 3
#define GROUP_MAX 3

static const struct {
    const char *name;
    bool read_only;
    enum key_kind fixed[FIXED_MAX + 1]; /* up to KEY_END */
    struct {
        enum key_kind group[GROUP_MAX + 1]; /* up to KEY_END; none: no more parts */
        bool optional; /* the group once or not at all; else once per item, one kind */
    } parts[PARTS_MAX];
} functions[FNS] = {
    [FN_ENQUEUE] =
        {.name = "enqueue",
         .fixed = {KEY_MESSAGE, KEY_DUE, KEY_ST, KEY_DOM, KEY_AGE, KEY_LOG, KEY_DQ, KEY_WITHDRAWN,
                   KEY_ENC},
         .parts = {[ENQUEUE_BODY] = {{KEY_BODY}, false}, [ENQUEUE_JOB] = {{KEY_JOB}, false}}},
    [FN_WITHDRAW] =
        {.name = "withdraw",
         .fixed = {KEY_MESSAGE, KEY_DUE, KEY_HELD, KEY_META, KEY_ST, KEY_DOM, KEY_AGE, KEY_LOG,
                   KEY_DQ, KEY_WITHDRAWN},
         .parts = {[WITHDRAW_BODY] = {{KEY_BODY}, false}, [WITHDRAW_JOB] = {{KEY_JOB}, false}}},
    [FN_CLAIM] = {.name = "claim", .fixed = {KEY_DUE, KEY_LEASE, KEY_META, KEY_HELD, KEY_ST}},
    [FN_FETCH] = {.name = "fetch",
                  .read_only = true,
                  .fixed = {KEY_JOB, KEY_MESSAGE, KEY_BODY, KEY_META}},
    [FN_FORGET] = {.name = "forget", .fixed = {KEY_DUE, KEY_LEASE, KEY_META, KEY_JOB}},
    [FN_EXTEND] = {.name = "extend", .fixed = {KEY_DUE, KEY_LEASE, KEY_META}},
    [FN_COMPLETE] = {.name = "complete",
                     .fixed = {KEY_DUE, KEY_LEASE, KEY_META, KEY_ST, KEY_DOM, KEY_JOB, KEY_MESSAGE,
                               KEY_BODY, KEY_AGE, KEY_LOG, KEY_HELD, KEY_DQ},
                     .parts = {[COMPLETE_BOUNCE] = {{KEY_MESSAGE, KEY_BODY, KEY_JOB}, true}}},
    [FN_JOB_TAMPERED] = {.name = "job_tampered",
                         .fixed = {KEY_LEASE, KEY_META, KEY_HELD, KEY_ST, KEY_LOG}},
    [FN_JOB_OP] = {.name = "job_op",
                   .fixed = {KEY_DUE, KEY_LEASE, KEY_HELD, KEY_META, KEY_ST, KEY_DOM, KEY_JOB,
                             KEY_MESSAGE, KEY_BODY, KEY_AGE, KEY_LOG, KEY_DQ}},
    [FN_TOP] = {.name = "top", .read_only = true, .fixed = {KEY_DOM, KEY_DQ}},
    [FN_RECENT] = {.name = "recent", .read_only = true, .fixed = {KEY_LOG}},
    [FN_STATS] = {.name = "stats",
                  .read_only = true,
                  .fixed = {KEY_DUE, KEY_LEASE, KEY_HELD, KEY_AGE}},
    [FN_AUTH_BEGIN] = {.name = "auth_begin",
                       .fixed = {KEY_USERS, KEY_CRAM, KEY_FAIL, KEY_USER_MACS}},
    [FN_AUTH_UNCOUNT] = {.name = "auth_uncount", .fixed = {KEY_FAIL}},
    [FN_USER_SET] = {.name = "user_set", .fixed = {KEY_USERS, KEY_CRAM, KEY_USER_MACS}},
    [FN_USER_DELETE] = {.name = "user_delete", .fixed = {KEY_USERS, KEY_CRAM, KEY_USER_MACS}},
    [FN_USER_TAG] = {.name = "user_tag", .fixed = {KEY_USERS, KEY_CRAM, KEY_USER_MACS}},
    [FN_USER_RECORDS] = {.name = "user_records", .read_only = true, .fixed = {KEY_USERS, KEY_CRAM}},
    [FN_USER_LIST] = {.name = "user_list", .read_only = true, .fixed = {KEY_USERS, KEY_CRAM}},
    [FN_SEAL_CHECK] = {.name = "seal_check", .fixed = {KEY_SEALCHECK}},
    [FN_KEY_LOOKUP] = {.name = "key_lookup",
                       .read_only = true,
                       .fixed = {KEY_ADDRESS, KEY_POLICY, KEY_PREFER, KEY_VERSION, KEY_DISC,
                                 KEY_MISS, KEY_DVERSION, KEY_DOMAIN_MISS}},
    [FN_KEY_VERSION] = {.name = "key_version",
                        .read_only = true,
                        .fixed = {KEY_VERSION, KEY_DVERSION}},
    [FN_KEY_GET] = {.name = "key_get", .read_only = true, .fixed = {KEY_FPR}},
    [FN_KEY_FPRS] = {.name = "key_fprs", .read_only = true, .fixed = {KEY_KEYS}},
    [FN_KEY_PUT] = {.name = "key_put",
                    .fixed = {KEY_FPR, KEY_KEYS, KEY_VERSION, KEY_EXPIRY_OPENPGP, KEY_EXPIRY_SMIME},
                    .parts = {[KEY_PUT_ADDRESS] = {{KEY_ADDRESS}, false},
                              [KEY_PUT_DROPPED] = {{KEY_ADDRESS}, false},
                              [KEY_PUT_OTHER] = {{KEY_FPR}, false}}},
    [FN_KEY_DELETE] = {.name = "key_delete",
                       .fixed = {KEY_FPR, KEY_KEYS, KEY_VERSION, KEY_EXPIRY_OPENPGP,
                                 KEY_EXPIRY_SMIME},
                       .parts = {[KEY_DELETE_ADDRESS] = {{KEY_ADDRESS}, false},
                                 [KEY_DELETE_OTHER] = {{KEY_FPR}, false}}},
    [FN_POLICY_SET] = {.name = "policy_set", .fixed = {KEY_POLICY, KEY_VERSION}},
    [FN_POLICY_LIST] = {.name = "policy_list",
                        .read_only = true,
                        .fixed = {KEY_POLICY, KEY_PREFER}},
    [FN_PREFER_SET] = {.name = "prefer_set", .fixed = {KEY_PREFER, KEY_VERSION}},
    [FN_COPY_SHARES] = {.name = "copy_shares", .read_only = true, .fixed = {KEY_ENC}},
    [FN_KEY_INDEX] = {.name = "key_index",
                      .fixed = {KEY_EXPIRY_OPENPGP, KEY_EXPIRY_SMIME},
                      .parts = {[KEY_INDEX_KEY] = {{KEY_FPR}, false}}},
    [FN_KEY_SUMMARY] = {.name = "key_summary",
                        .read_only = true,
                        .fixed = {KEY_KEYS, KEY_EXPIRY_OPENPGP, KEY_EXPIRY_SMIME}},
    [FN_KEY_ADDRESSES] = {.name = "key_addresses",
                          .read_only = true,
                          .parts = {[KEY_ADDRESSES_KEY] = {{KEY_FPR}, false}}},
    [FN_KEY_DIRECTORY] = {.name = "key_directory",
                          .read_only = true,
                          .fixed = {KEY_VERSION, KEY_MACS, KEY_DIRMAC, KEY_KEYS, KEY_POLICY,
                                    KEY_PREFER}},
    [FN_KEY_SEAL] = {.name = "key_seal", .fixed = {KEY_VERSION, KEY_MACS, KEY_DIRMAC}},
    [FN_DKIM_PUT] = {.name = "dkim_put",
                     .fixed = {KEY_DKIM_DOMAIN, KEY_DKIM_DOMAINS, KEY_DKIM_VERSION}},
    [FN_DKIM_DELETE] = {.name = "dkim_delete",
                        .fixed = {KEY_DKIM_DOMAIN, KEY_DKIM_DOMAINS, KEY_DKIM_VERSION}},
    [FN_DKIM_ACTIVATE] = {.name = "dkim_activate", .fixed = {KEY_DKIM_DOMAIN, KEY_DKIM_VERSION}},
    [FN_DKIM_DOMAINS] = {.name = "dkim_domains", .read_only = true, .fixed = {KEY_DKIM_DOMAINS}},
    [FN_DKIM_GET] = {.name = "dkim_get", .read_only = true, .fixed = {KEY_DKIM_DOMAIN}},
    [FN_DKIM_VERSION] = {.name = "dkim_version", .read_only = true, .fixed = {KEY_DKIM_VERSION}},
    [FN_DKIM_TAG] = {.name = "dkim_tag", .fixed = {KEY_DKIM_DOMAIN, KEY_DKIM_VERSION}},
    [FN_DISC_PUT] = {.name = "disc_put", .fixed = {KEY_DISC, KEY_MISS, KEY_DVERSION, KEY_DINDEX}},
    [FN_DISC_MISS] = {.name = "disc_miss", .fixed = {KEY_MISS, KEY_DVERSION}},
    [FN_DISC_DOMAIN_MISS] = {.name = "disc_domain_miss", .fixed = {KEY_DOMAIN_MISS, KEY_DVERSION}},
    [FN_DISC_DELETE] = {.name = "disc_delete",
                        .fixed = {KEY_DISC, KEY_MISS, KEY_DVERSION, KEY_DINDEX}},
    [FN_DISC_ADDRESSES] = {.name = "disc_addresses", .read_only = true, .fixed = {KEY_DINDEX}},
    [FN_DISC_GET] = {.name = "disc_get", .read_only = true, .fixed = {KEY_DISC}},
    [FN_DISC_DUE] = {.name = "disc_due", .fixed = {KEY_DINDEX}},
};

const char *schema_fn_name(enum queue_fn fn)
{
    return functions[fn].name;
}

bool schema_fn_read_only(enum queue_fn fn)
{
    return functions[fn].read_only;
}

static bool put_kinds(char *out, size_t len, size_t *pos, const enum key_kind *list,
                      const char *each)
{
    bool ok = true;
    for (unsigned i = 0; ok && list[i] != KEY_END; i++)
        ok = (i == 0 || put(out, len, pos, ", ")) && put(out, len, pos, kinds[list[i]].name) &&
             put(out, len, pos, each);
    return ok;
}

int schema_keys_text(enum queue_fn fn, char *out, size_t len)
{
    size_t pos = 0;
    if (len == 0) return -1;
    out[0] = 0;
    bool ok = put_kinds(out, len, &pos, functions[fn].fixed, "");
    for (unsigned p = 0; ok && p < PARTS_MAX && functions[fn].parts[p].group[0] != KEY_END; p++) {
        bool optional = functions[fn].parts[p].optional;
        const char *open = optional ? ", [" : ", ";
        ok = put(out, len, &pos, pos ? open : open + 2) && /* a function with no fixed keys */
             put_kinds(out, len, &pos, functions[fn].parts[p].group, optional ? "" : "...") &&
             (!optional || put(out, len, &pos, "]"));
    }
    return ok ? 0 : -1;
}

static bool keys_room(call_keys_t *ck, unsigned more)
{
    if (ck->n + more <= ck->cap) return true;
    unsigned cap = 2 * (ck->n + more);
    key_t_ *names = realloc(ck->names, cap * sizeof *names);
    if (!names) return false;
    ck->names = names;
    const char **list = realloc(ck->list, cap * sizeof *list);
    if (!list) return false;
    ck->list = list;
    ck->cap = cap;
    for (unsigned i = 0; i < ck->n; i++)
        list[i] = names[i];
    return true;
}

static void keys_append(call_keys_t *ck, const enum key_kind *group, const key_ids_t *ids)
{
    unsigned n = 0;
    while (group[n] != KEY_END)
        n++;
    if (ck->failed || !keys_room(ck, n)) {
        ck->failed = true;
        return;
    }
    for (unsigned i = 0; i < n; i++, ck->n++) {
        if (schema_key(ck->names[ck->n], group[i], ids) < 0) ck->failed = true;
        ck->list[ck->n] = ck->names[ck->n];
    }
}

void call_keys_init(call_keys_t *ck, enum queue_fn fn, const key_ids_t *ids)
{
    *ck = (call_keys_t){.fn = fn};
    keys_append(ck, functions[fn].fixed, ids);
}

void call_keys_add(call_keys_t *ck, unsigned part, const key_ids_t *ids)
{
    if (part >= PARTS_MAX || part < ck->next_part ||
        functions[ck->fn].parts[part].group[0] == KEY_END) {
        ck->failed = true;
        return;
    }
    /* A run stays open for its next item; a group that is there or not closes. */
    ck->next_part = functions[ck->fn].parts[part].optional ? part + 1 : part;
    keys_append(ck, functions[ck->fn].parts[part].group, ids);
}

void call_keys_free(call_keys_t *ck)
{
    free(ck->names);
    free(ck->list);
    *ck = (call_keys_t){.fn = ck->fn, .failed = true};
}

int fcall_argv_build(fcall_argv_t *v, const call_keys_t *ck, int nargs, const char **args,
                     const size_t *arg_lens)
{
    *v = (fcall_argv_t){.argc = 3 + (int)ck->n + nargs};
    if (ck->failed) return -1;
    v->argv = calloc((size_t)v->argc, sizeof *v->argv);
    v->lens = calloc((size_t)v->argc, sizeof *v->lens);
    if (!v->argv || !v->lens) {
        fcall_argv_free(v);
        return -1;
    }
    snprintf(v->numkeys, sizeof v->numkeys, "%u", ck->n);
    v->argv[0] = functions[ck->fn].read_only ? "FCALL_RO" : "FCALL";
    v->argv[1] = functions[ck->fn].name;
    v->argv[2] = v->numkeys;
    for (unsigned i = 0; i < ck->n; i++)
        v->argv[3 + i] = ck->list[i];
    for (int i = 0; i < 3 + (int)ck->n; i++)
        v->lens[i] = strlen(v->argv[i]);
    for (int i = 0; i < nargs; i++) {
        v->argv[3 + ck->n + i] = args[i];
        v->lens[3 + ck->n + i] = arg_lens ? arg_lens[i] : strlen(args[i]);
    }
    return 0;
}

void fcall_argv_free(fcall_argv_t *v)
{
    free(v->argv);
    free(v->lens);
    v->argv = NULL;
    v->lens = NULL;
}

/* ---- job ids ---- */

static bool is_message_id(const char *s, size_t len)
{
    if (len != 32) return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

/* A decimal number of one to nine digits at *p, up to stop; moves *p past it. */
static int decimal(const char **p, char stop, unsigned *out)
{
    const char *s = *p;
    unsigned v = 0, digits = 0;
    for (; *s >= '0' && *s <= '9' && digits < 9; s++, digits++)
        v = v * 10 + (unsigned)(*s - '0');
    if (!digits || *s != stop) return -1;
    *out = v;
    *p = s;
    return 0;
}

int job_id_parse(const char *jid, job_id_t *out)
{
    const char *dot = strchr(jid, '.');
    if (!dot || !is_message_id(jid, (size_t)(dot - jid))) return -1;
    job_id_t id;
    memcpy(id.mid, jid, 32);
    id.mid[32] = 0;
    const char *p = dot + 1;
    if (decimal(&p, '.', &id.variant) < 0) return -1;
    p++;
    if (decimal(&p, '\0', &id.n) < 0) return -1;
    *out = id;
    return 0;
}

int job_id_format(char out[JOB_ID_MAX], const char *mid, unsigned variant, unsigned n)
{
    if (!is_message_id(mid, strlen(mid))) return -1;
    int len = snprintf(out, JOB_ID_MAX, "%s.%u.%u", mid, variant, n);
    return len > 0 && len < JOB_ID_MAX ? 0 : -1;
}

/* ---- the library ---- */

int library_prepare(library_t *lib)
{
    unsigned char hash[16];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)queue_functions_lua,
                       queue_functions_lua_len, NULL, 0);
    sodium_bin2hex(lib->digest, sizeof lib->digest, hash, sizeof hash);
    buf_init(&lib->code);
    if (buf_append(&lib->code, queue_functions_lua, queue_functions_lua_len) < 0 ||
        buf_printf(&lib->code,
                   "\nredis.register_function{function_name='" LIBRARY_DIGEST_FUNCTION "',\n"
                   "  callback=function() return '%s' end, flags={'no-writes'}}\n",
                   lib->digest) < 0) {
        buf_free(&lib->code);
        return -1;
    }
    return 0;
}

void library_free(library_t *lib)
{
    buf_free(&lib->code);
}
