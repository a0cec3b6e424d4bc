/* Sealing at rest: every body the queue stores is XChaCha20-Poly1305 under a
 * cluster key, so Redis, its AOF and its replicas never hold a body in
 * clear. A sealed body is
 *
 *     "SPS1" | id length (1 octet) | key id | nonce (24) | ciphertext | tag (16)
 *
 * and the authenticated data is that header plus a context the caller names
 * (the message id and variant), so a body cannot be moved to another message
 * or variant, nor its key id changed, without failing to open. */
#include "crypto/crypto.h"

#include <errno.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEAL_MAGIC     "SPS1"
#define SEAL_MAGIC_LEN 4
#define SEAL_MAX_KEYS  16
#define NONCE_LEN      crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG_LEN        crypto_aead_xchacha20poly1305_ietf_ABYTES

struct seal_key {
    char id[SEAL_ID_MAX + 1];
    unsigned char *key; /* sodium_malloc'd: guarded and kept out of swap */
};

struct seal_keyring {
    struct seal_key keys[SEAL_MAX_KEYS]; /* keys[0] seals; all of them open */
    unsigned n;
};

static bool valid_id(const char *id, size_t len)
{
    if (len == 0 || len > SEAL_ID_MAX) return false;
    for (size_t i = 0; i < len; i++)
        if (!(id[i] >= '0' && id[i] <= '9') && !(id[i] >= 'a' && id[i] <= 'z') &&
            !(id[i] >= 'A' && id[i] <= 'Z') && id[i] != '-' && id[i] != '_' && id[i] != '.')
            return false;
    return true;
}

/* One entry "id:base64-of-32-octets"; the key text is wiped by the caller. */
static int keyring_add(seal_keyring_t *k, const char *entry, size_t len, char *err, size_t errlen)
{
    const char *colon = memchr(entry, ':', len);
    if (!colon || !valid_id(entry, (size_t)(colon - entry))) {
        snprintf(err, errlen,
                 "a sealing key is \"id:base64\" with an id of 1 to %d letters, "
                 "digits, '-', '_' or '.'",
                 SEAL_ID_MAX);
        return -1;
    }
    size_t id_len = (size_t)(colon - entry);
    for (unsigned i = 0; i < k->n; i++)
        if (strlen(k->keys[i].id) == id_len && !memcmp(k->keys[i].id, entry, id_len)) {
            snprintf(err, errlen, "sealing key id \"%.*s\" given twice", (int)id_len, entry);
            return -1;
        }
    if (k->n == SEAL_MAX_KEYS) {
        snprintf(err, errlen, "more than %d sealing keys", SEAL_MAX_KEYS);
        return -1;
    }
    struct seal_key *key = &k->keys[k->n];
    key->key = sodium_malloc(SEAL_KEY_BYTES + 1);
    if (!key->key) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t bin_len = 0;
    const char *b64 = colon + 1;
    if (sodium_base642bin(key->key, SEAL_KEY_BYTES + 1, b64, len - id_len - 1, NULL, &bin_len, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        bin_len != SEAL_KEY_BYTES) {
        sodium_free(key->key);
        key->key = NULL;
        snprintf(err, errlen, "sealing key \"%.*s\" is not %d octets in base64", (int)id_len, entry,
                 SEAL_KEY_BYTES);
        return -1;
    }
    memcpy(key->id, entry, id_len);
    key->id[id_len] = 0;
    k->n++;
    return 0;
}

/* Entries are separated by white space or commas; '#' starts a comment
 * that runs to the end of the line (for key files). */
static int keyring_parse(seal_keyring_t *k, const char *text, char *err, size_t errlen)
{
    const char *p = text;
    while (*p) {
        if (*p == '#') {
            p += strcspn(p, "\n");
            continue;
        }
        size_t skip = strspn(p, " \t\r\n,");
        if (skip) {
            p += skip;
            continue;
        }
        size_t len = strcspn(p, " \t\r\n,#");
        if (keyring_add(k, p, len, err, errlen) < 0) return -1;
        p += len;
    }
    return 0;
}

static int read_key_file(const char *path, char *text, size_t size, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "sealing key file %s: %s", path, strerror(errno));
        return -1;
    }
    size_t n = fread(text, 1, size - 1, f);
    bool too_big = n == size - 1 && fgetc(f) != EOF;
    fclose(f);
    text[n] = 0;
    if (too_big || memchr(text, 0, n)) {
        snprintf(err, errlen, "sealing key file %s: not a key file", path);
        return -1;
    }
    return 0;
}

seal_keyring_t *seal_keyring_load(const char *keys, const char *key_file, char *err, size_t errlen)
{
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium failed to initialise");
        return NULL;
    }
    seal_keyring_t *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    char text[4096];
    int rc = keys && keys[0] ? keyring_parse(k, keys, err, errlen) : 0;
    if (rc == 0 && key_file && key_file[0]) {
        rc = read_key_file(key_file, text, sizeof text, err, errlen);
        if (rc == 0) rc = keyring_parse(k, text, err, errlen);
        sodium_memzero(text, sizeof text);
    }
    if (rc == 0 && k->n == 0) {
        snprintf(err, errlen,
                 "no sealing key: set [seal] key_file or keys "
                 "(SEALPOST_SEAL_KEYS); \"sealpost seal-key new\" makes one");
        rc = -1;
    }
    if (rc < 0) {
        seal_keyring_free(k);
        return NULL;
    }
    return k;
}

void seal_keyring_free(seal_keyring_t *k)
{
    if (!k) return;
    for (unsigned i = 0; i < k->n; i++)
        sodium_free(k->keys[i].key);
    free(k);
}

const char *seal_current_id(const seal_keyring_t *k)
{
    return k->keys[0].id;
}

static size_t header_len(const char *id)
{
    return SEAL_MAGIC_LEN + 1 + strlen(id);
}

static int seal_with(const struct seal_key *key, const char *context, const void *in, size_t len,
                     buf_t *out)
{
    size_t head = header_len(key->id), total = head + NONCE_LEN + len + TAG_LEN;
    if (total < len || buf_reserve(out, total) < 0) return -1;
    unsigned char *p = (unsigned char *)out->data + out->len;
    memcpy(p, SEAL_MAGIC, SEAL_MAGIC_LEN);
    p[SEAL_MAGIC_LEN] = (unsigned char)strlen(key->id);
    memcpy(p + SEAL_MAGIC_LEN + 1, key->id, strlen(key->id));
    unsigned char *nonce = p + head;
    randombytes_buf(nonce, NONCE_LEN);

    /* The authenticated data: the header, then the context. */
    size_t ctx_len = strlen(context);
    unsigned char *ad = malloc(head + ctx_len + 1);
    if (!ad) return -1;
    memcpy(ad, p, head);
    memcpy(ad + head, context, ctx_len);
    unsigned long long clen = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(nonce + NONCE_LEN, &clen, in, len, ad,
                                               head + ctx_len, NULL, nonce, key->key);
    free(ad);
    out->len += head + NONCE_LEN + (size_t)clen;
    out->data[out->len] = 0; /* buf_reserve kept room: buf_t text stays terminated */
    return 0;
}

int seal_body(const seal_keyring_t *k, const char *context, const void *in, size_t len, buf_t *out)
{
    return seal_with(&k->keys[0], context, in, len, out);
}

int seal_open(const seal_keyring_t *k, const char *context, const void *in, size_t len, buf_t *out,
              char *err, size_t errlen)
{
    const unsigned char *p = in;
    if (len < SEAL_MAGIC_LEN + 1 || memcmp(p, SEAL_MAGIC, SEAL_MAGIC_LEN)) {
        snprintf(err, errlen, "not a sealed body");
        return -1;
    }
    size_t id_len = p[SEAL_MAGIC_LEN], head = SEAL_MAGIC_LEN + 1 + id_len;
    if (len < head + NONCE_LEN + TAG_LEN || !valid_id((const char *)p + head - id_len, id_len)) {
        snprintf(err, errlen, "sealed body truncated or malformed");
        return -1;
    }
    const struct seal_key *key = NULL;
    for (unsigned i = 0; i < k->n && !key; i++)
        if (strlen(k->keys[i].id) == id_len && !memcmp(k->keys[i].id, p + head - id_len, id_len))
            key = &k->keys[i];
    if (!key) {
        snprintf(err, errlen, "body sealed with key \"%.*s\", which this node does not have",
                 (int)id_len, (const char *)p + head - id_len);
        return -1;
    }
    size_t ctx_len = strlen(context), clen = len - head - NONCE_LEN;
    unsigned char *ad = malloc(head + ctx_len + 1);
    if (!ad || buf_reserve(out, clen - TAG_LEN) < 0) {
        free(ad);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(ad, p, head);
    memcpy(ad + head, context, ctx_len);
    unsigned long long mlen = 0;
    int rc = crypto_aead_xchacha20poly1305_ietf_decrypt((unsigned char *)out->data + out->len,
                                                        &mlen, NULL, p + head + NONCE_LEN, clen, ad,
                                                        head + ctx_len, p + head, key->key);
    free(ad);
    if (rc != 0) {
        snprintf(err, errlen, "sealed body fails authentication under key \"%s\"", key->id);
        return -1;
    }
    out->len += (size_t)mlen;
    out->data[out->len] = 0;
    return 0;
}

unsigned seal_key_count(const seal_keyring_t *k)
{
    return k->n;
}

const char *seal_key_id(const seal_keyring_t *k, unsigned i)
{
    return k->keys[i].id;
}

#define CHECK_CONTEXT "sealpost:key-check"
#define CHECK_TEXT    "sealpost"

int seal_check_make(const seal_keyring_t *k, unsigned i, buf_t *out)
{
    return seal_with(&k->keys[i], CHECK_CONTEXT, CHECK_TEXT, strlen(CHECK_TEXT), out);
}

bool seal_check_verify(const seal_keyring_t *k, const void *blob, size_t len)
{
    buf_t plain;
    buf_init(&plain);
    char err[128];
    bool ok = seal_open(k, CHECK_CONTEXT, blob, len, &plain, err, sizeof err) == 0 &&
              plain.len == strlen(CHECK_TEXT) && !memcmp(plain.data, CHECK_TEXT, plain.len);
    buf_free(&plain);
    return ok;
}

void seal_derive(const seal_keyring_t *k, const char *context, unsigned char out[32])
{
    crypto_generichash(out, 32, (const unsigned char *)context, strlen(context), k->keys[0].key,
                       SEAL_KEY_BYTES);
}

static void mac_with(const struct seal_key *key, const char *purpose, const seal_field_t *fields,
                     size_t n, unsigned char tag[32])
{
    unsigned char mac_key[32];
    crypto_generichash_state st;
    crypto_generichash_init(&st, key->key, SEAL_KEY_BYTES, sizeof mac_key);
    crypto_generichash_update(&st, (const unsigned char *)"sealpost mac:", 13);
    crypto_generichash_update(&st, (const unsigned char *)purpose, strlen(purpose));
    crypto_generichash_final(&st, mac_key, sizeof mac_key);
    crypto_generichash_init(&st, mac_key, sizeof mac_key, 32);
    for (size_t i = 0; i < n; i++) {
        unsigned char len[8];
        uint64_t v = fields[i].len;
        for (int b = 7; b >= 0; b--, v >>= 8)
            len[b] = (unsigned char)(v & 0xff);
        crypto_generichash_update(&st, len, sizeof len);
        if (fields[i].len) crypto_generichash_update(&st, fields[i].data, fields[i].len);
    }
    crypto_generichash_final(&st, tag, 32);
    sodium_memzero(mac_key, sizeof mac_key);
    sodium_memzero(&st, sizeof st);
}

void seal_mac(const seal_keyring_t *k, const char *purpose, const seal_field_t *fields, size_t n,
              char out[SEAL_MAC_LEN + 1])
{
    unsigned char tag[32];
    mac_with(&k->keys[0], purpose, fields, n, tag);
    size_t id_len = strlen(k->keys[0].id);
    memcpy(out, k->keys[0].id, id_len);
    out[id_len] = ':';
    sodium_bin2hex(out + id_len + 1, 65, tag, sizeof tag);
}

int seal_mac_verify(const seal_keyring_t *k, const char *purpose, const seal_field_t *fields,
                    size_t n, const char *tag, size_t tag_len)
{
    const char *colon = tag ? memchr(tag, ':', tag_len) : NULL;
    if (!colon || tag_len - (size_t)(colon - tag) - 1 != 64) return 0;
    size_t id_len = (size_t)(colon - tag);
    const struct seal_key *key = NULL;
    for (unsigned i = 0; i < k->n && !key; i++)
        if (strlen(k->keys[i].id) == id_len && !memcmp(k->keys[i].id, tag, id_len))
            key = &k->keys[i];
    if (!key) return -1;
    unsigned char want[32], got[32];
    size_t got_len = 0;
    if (sodium_hex2bin(got, sizeof got, colon + 1, 64, NULL, &got_len, NULL) != 0 ||
        got_len != sizeof got)
        return 0;
    mac_with(key, purpose, fields, n, want);
    return sodium_memcmp(want, got, sizeof want) == 0 ? 1 : 0;
}

static void envelope_fields(const seal_envelope_t *e, seal_field_t f[5])
{
    const char *s[] = {e->mid, e->sender, e->params, e->lens, e->rcpts};
    for (unsigned i = 0; i < 5; i++)
        f[i] = (seal_field_t){s[i], strlen(s[i])};
}

void seal_envelope_tag(const seal_keyring_t *k, const seal_envelope_t *e,
                       char out[SEAL_MAC_LEN + 1])
{
    seal_field_t f[5];
    envelope_fields(e, f);
    seal_mac(k, "envelope", f, 5, out);
}

int seal_envelope_verify(const seal_keyring_t *k, const seal_envelope_t *e, const char *tag)
{
    seal_field_t f[5];
    envelope_fields(e, f);
    return seal_mac_verify(k, "envelope", f, 5, tag, strlen(tag));
}

int seal_key_new(const char *id, char *out, size_t outlen)
{
    if (sodium_init() < 0 || !valid_id(id, strlen(id))) return -1;
    unsigned char key[SEAL_KEY_BYTES];
    char b64[sodium_base64_ENCODED_LEN(SEAL_KEY_BYTES, sodium_base64_VARIANT_ORIGINAL)];
    randombytes_buf(key, sizeof key);
    sodium_bin2base64(b64, sizeof b64, key, sizeof key, sodium_base64_VARIANT_ORIGINAL);
    int n = snprintf(out, outlen, "%s:%s", id, b64);
    sodium_memzero(key, sizeof key);
    sodium_memzero(b64, sizeof b64);
    return n > 0 && (size_t)n < outlen ? 0 : -1;
}
