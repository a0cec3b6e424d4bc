/* sealpost keys lookup: key discovery (discovery/) run by hand, on a loop
 * of its own, filing what it finds as a node would; and the discovered keys
 * in keys list. */
#include "cmd/cmd.h"
#include "crypto/crypto.h"
#include "discovery/discovery.h"
#include "queue/admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* What the look-up's callback leaves for after the loop. */
struct answer {
    bool done;
    enum discovery_outcome outcome;
    enum discovery_source source;
    buf_t data;
    char url[1600];
    char detail[300];
};

static void on_found(const discovery_result_t *r, void *arg)
{
    struct answer *ans = arg;
    ans->done = true;
    ans->outcome = r->outcome;
    ans->source = r->source;
    snprintf(ans->url, sizeof ans->url, "%s", r->url);
    snprintf(ans->detail, sizeof ans->detail, "%s", r->detail);
    if (r->outcome == DISCOVERY_FOUND && buf_append(&ans->data, r->data, r->len) < 0)
        ans->outcome = DISCOVERY_ERROR;
}

/* The look-up on a loop of its own; 0 when it ran (ans says how it went). */
static int run_lookup(const config_t *cfg, const char *address, struct answer *ans)
{
    uv_loop_t loop;
    char err[600];
    if (uv_loop_init(&loop) < 0) return -1;
    discovery_t *d = discovery_new(&loop, cfg, err, sizeof err);
    if (!d) {
        fprintf(stderr, "sealpost: %s\n", err);
        uv_loop_close(&loop);
        return -1;
    }
    int rc = discovery_lookup(d, address, true, on_found, ans) ? 0 : -1;
    if (rc < 0) fprintf(stderr, "sealpost: '%s' cannot be looked up\n", address);
    while (rc == 0 && !ans->done)
        uv_run(&loop, UV_RUN_ONCE);
    discovery_free(d);
    uv_run(&loop, UV_RUN_DEFAULT); /* the handles' close callbacks */
    uv_loop_close(&loop);
    return rc;
}

/* What key_lookup says of the address now: its operator's keys, and its
 * discovered key's fingerprint and when that was first filed. */
struct filed {
    bool imported;
    char imported_fpr[65];
    char fpr[65];
    long long found;
};

static void on_filed(int status, const char *err, const queue_key_found_t *f, void *arg)
{
    struct filed *filed = arg;
    (void)err;
    if (status < 0) return;
    for (int m = 0; m < QUEUE_KEY_METHODS; m++)
        if (f->keys[m].fpr[0] && !filed->imported) {
            filed->imported = true;
            snprintf(filed->imported_fpr, sizeof filed->imported_fpr, "%s", f->keys[m].fpr);
        }
    snprintf(filed->fpr, sizeof filed->fpr, "%s", f->disc.fpr);
    filed->found = f->disc.found;
}

/* Files key for address with its tag; found stays what it was while the
 * fingerprint is the same. */
static int file_key(struct queue_admin *a, const struct seal_keyring *seal, const char *address,
                    const struct filed *before, const struct answer *ans,
                    const discovery_key_t *key)
{
    long long now = (long long)time(NULL);
    const char *source = discovery_source_name(ans->source);
    keydir_disc_t it = {.address = address,
                        .fpr = key->fpr,
                        .expires = key->expires,
                        .data = key->armored,
                        .len = key->armored_len,
                        .source = source,
                        .found =
                            strcmp(before->fpr, key->fpr) || !before->found ? now : before->found,
                        .checked = now};
    queue_disc_t d = {.address = address,
                      .expires = it.expires,
                      .data = it.data,
                      .len = it.len,
                      .source = source,
                      .url = ans->url,
                      .found = it.found,
                      .checked = now};
    char tag[SEAL_MAC_LEN + 1], err[600];
    snprintf(d.fpr, sizeof d.fpr, "%s", key->fpr);
    keydir_disc_tag(seal, &it, tag);
    d.tag = tag;
    if (queue_admin_disc_put(a, &d, err, sizeof err) < 0) {
        fprintf(stderr, "sealpost: %s\n", err);
        return 1;
    }
    return 0;
}

int cmd_keys_lookup(struct queue_admin *a, const config_t *cfg, const struct seal_keyring *seal,
                    const char *address)
{
    char canon[320], err[600] = "", why[300] = "";
    if (crypto_addr_canon(address, cfg->crypto.case_insensitive, cfg->crypto.strip_detail, canon,
                          sizeof canon) < 0 ||
        !strchr(canon, '@')) {
        fprintf(stderr, "sealpost: '%s' is not an address\n", address);
        return 2;
    }
    struct filed before = {0};
    if (queue_admin_key_address(a, canon, on_filed, &before, err, sizeof err) < 0) {
        fprintf(stderr, "sealpost: %s\n", err);
        return 1;
    }
    struct answer ans = {0};
    buf_init(&ans.data);
    if (run_lookup(cfg, canon, &ans) < 0) {
        buf_free(&ans.data);
        return 1;
    }
    if (ans.outcome != DISCOVERY_FOUND) {
        printf("%s: %s (%s)\n", canon, discovery_outcome_name(ans.outcome), ans.detail);
        buf_free(&ans.data);
        return 1;
    }
    discovery_key_t key;
    int picked = crypto_gpg_init(err, sizeof err) < 0
                     ? -1
                     : discovery_select(canon, ans.data.data, ans.data.len, cfg->crypto.home_dir,
                                        &key, why, sizeof why);
    if (picked <= 0) {
        printf("%s: refused from %s: %s\n", canon, ans.url, picked < 0 && !why[0] ? err : why);
        buf_free(&ans.data);
        return 1;
    }
    int rc = 0;
    printf("%s %s source %s trust discovered expires ", canon, key.fpr,
           discovery_source_name(ans.source));
    cmd_print_time(key.expires);
    printf(" from %s", ans.url);
    if (before.imported) {
        printf(": not filed, the directory has the operator's key %s\n", before.imported_fpr);
    } else if ((rc = file_key(a, seal, canon, &before, &ans, &key)) == 0) {
        bool changed = before.fpr[0] && strcmp(before.fpr, key.fpr);
        printf(changed ? ": filed, replacing %s\n" : ": filed\n", before.fpr);
    }
    discovery_key_free(&key);
    buf_free(&ans.data);
    return rc;
}

struct listing {
    bool json, first;
};

static void list_one(const queue_disc_t *d, void *arg)
{
    struct listing *l = arg;
    if (l->json) {
        printf("%s{\"fingerprint\":\"%s\",\"method\":\"openpgp\",\"expires\":%lld,"
               "\"addresses\":[",
               l->first ? "" : ",", d->fpr, d->expires);
        cmd_json_string(d->address);
        printf("],\"source\":");
        cmd_json_string(d->source ? d->source : "");
        printf(",\"trust\":\"discovered\",\"found\":%lld,\"checked\":%lld,\"url\":", d->found,
               d->checked);
        cmd_json_string(d->url ? d->url : "");
        printf(",\"change\":");
        cmd_json_string(d->change ? d->change : "");
        printf("}");
    } else {
        printf("%s ", d->fpr);
        cmd_print_time(d->expires);
        printf(" %s (source %s, trust discovered, found ", d->address, d->source ? d->source : "");
        cmd_print_time(d->found);
        printf(", checked ");
        cmd_print_time(d->checked);
        if (d->change && d->change[0]) printf(", changed %s", d->change);
        printf(")\n");
    }
    l->first = false;
}

int cmd_keys_list_discovered(struct queue_admin *a, bool json, bool first)
{
    char err[600];
    struct listing l = {json, first};
    if (queue_admin_disc_list(a, list_one, &l, err, sizeof err) < 0) {
        fprintf(stderr, "sealpost: %s\n", err);
        return -1;
    }
    return 0;
}
