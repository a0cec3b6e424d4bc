/* crypto: the secrets side of sealpost. The encryption gateway (recipient
 * policy and the node's key cache, GPGME encryption with one GnuPG home per
 * thread, RFC 3156 PGP/MIME with RFC 9788 header protection), sealing of
 * every stored body with libsodium, and the SMTP AUTH passwords (argon2id,
 * and the CRAM-MD5 response, which needs the password itself on the
 * server). Uses core/ and proto/, nothing else of ours. */
#ifndef SEALPOST_CRYPTO_H
#define SEALPOST_CRYPTO_H

#include "core/core.h"

#include <stdbool.h>
#include <stddef.h>

/* crypto_pwhash_STRBYTES of libsodium: the longest hash string, NUL included. */
#define PASSWORD_HASH_MAX 128

/* An argon2id hash of password in libsodium's string form ("$argon2id$...").
 * Costs about 64 MiB and some tens of ms: never on an event loop. */
int password_hash(const char *password, size_t len, char out[PASSWORD_HASH_MAX]);
/* Whether password matches hash; false for a malformed hash. As costly as
 * password_hash: run it in a worker thread. */
bool password_verify(const char *hash, const char *password, size_t len);
/* A hash that no password matches, for unknown users, so that a failed
 * login costs the same time whether the user exists or not. */
const char *password_dummy_hash(void);

/* RFC 2195: HMAC-MD5 of challenge keyed with secret, as 32 lower-case hex
 * digits and a NUL. */
void password_cram_md5(const char *secret, size_t secret_len, const char *challenge,
                       size_t challenge_len, char out[33]);
/* Compares two strings in time that depends only on their lengths. */
bool password_equal(const char *a, const char *b);

/* ---- sealing at rest (libsodium XChaCha20-Poly1305) ---- */

#define SEAL_KEY_BYTES 32
#define SEAL_ID_MAX    32
/* A sealed body is this much longer than the plain one, at most. */
#define SEAL_OVERHEAD (4 + 1 + SEAL_ID_MAX + 24 + 16)

typedef struct seal_keyring seal_keyring_t;

/* The cluster's sealing keys, from keys (entries "id:base64" separated by
 * white space or commas) and then from key_file (the same, one per line, '#'
 * comments); either may be NULL or "". The first key seals; every key opens,
 * so an old key stays listed after a rotation until no body uses it. NULL with
 * err set when a key is malformed or there is none. */
seal_keyring_t *seal_keyring_load(const char *keys, const char *key_file, char *err, size_t errlen);
void seal_keyring_free(seal_keyring_t *k);
const char *seal_current_id(const seal_keyring_t *k);
unsigned seal_key_count(const seal_keyring_t *k);
const char *seal_key_id(const seal_keyring_t *k, unsigned i);

/* Appends the sealed form of in to out. context (the message id and body
 * variant) is authenticated with it: seal_open must name the same. */
int seal_body(const seal_keyring_t *k, const char *context, const void *in, size_t len, buf_t *out);
/* Appends the plain form to out, or fails with err: unknown key id, wrong
 * key, wrong context, or tampered. */
int seal_open(const seal_keyring_t *k, const char *context, const void *in, size_t len, buf_t *out,
              char *err, size_t errlen);

/* A known text sealed under key i, stored in Redis the first time a key id
 * is seen, so that a node started with a different key under the same id
 * finds out at start-up, not when it meets the first body. */
int seal_check_make(const seal_keyring_t *k, unsigned i, buf_t *out);
bool seal_check_verify(const seal_keyring_t *k, const void *blob, size_t len);

/* A key for another purpose (context names it), derived from the sealing
 * key, so the cluster shares it without another secret to hand out. */
void seal_derive(const seal_keyring_t *k, const char *context, unsigned char out[32]);

/* Authentication tags over what a node stores in Redis and another trusts
 * (a job's envelope, a key directory entry): BLAKE2b-256 keyed by a key
 * derived from a sealing key for purpose, over the fields each prefixed with
 * its length (8 octets, big-endian), so no two lists of fields give the same
 * input. The tag is "id:64 hex digits" and names the sealing key it was made
 * under, so tags made before a rotation verify while that key is listed. */
#define SEAL_MAC_LEN (SEAL_ID_MAX + 1 + 64) /* the longest tag, without its NUL */
typedef struct {
    const void *data;
    size_t len;
} seal_field_t;
/* Writes the tag under the current key to out (SEAL_MAC_LEN + 1 octets). */
void seal_mac(const seal_keyring_t *k, const char *purpose, const seal_field_t *fields, size_t n,
              char out[SEAL_MAC_LEN + 1]);
/* 1 the tag verifies; 0 it does not (tampered, malformed, or made by another
 * key under the same id); -1 it names a key id this node does not have. */
int seal_mac_verify(const seal_keyring_t *k, const char *purpose, const seal_field_t *fields,
                    size_t n, const char *tag, size_t tag_len);

/* What an envelope's tag covers, all NUL-terminated: the message id, the
 * sender, the MAIL parameters passed on ("" for none), the variants' sealed
 * lengths in order, space-separated (which also fixes how many there are),
 * and every recipient's line as queue_env_append writes it. The ingress tags
 * a message's envelope, the worker a notice's; a worker verifies both before
 * it unseals or sends anything. One function each, so the writers and the
 * reader cannot drift apart. */
typedef struct {
    const char *mid, *sender, *params, *lens, *rcpts;
} seal_envelope_t;
void seal_envelope_tag(const seal_keyring_t *k, const seal_envelope_t *e,
                       char out[SEAL_MAC_LEN + 1]);
/* As seal_mac_verify. */
int seal_envelope_verify(const seal_keyring_t *k, const seal_envelope_t *e, const char *tag);

/* A new random key as "id:base64", for a key file. */
int seal_key_new(const char *id, char *out, size_t outlen);

/* ---- OpenPGP keys and encryption (GPGME; gpg.c) ---- */

#define CRYPTO_FPR_MAX 64 /* hex digits of a v5 fingerprint; v4 has 40 */

/* Once, from the main thread, before any other call below. The gpg run is
 * $SEALPOST_GPG_PROGRAM when set (tests, odd installs), else GPGME's. */
int crypto_gpg_init(char *err, size_t errlen);
/* How long one encryption's gpg may take ([crypto] engine_timeout, 10 s
 * unless told): past it, gpg is killed and crypto_encrypt fails with
 * CRYPTO_TIMED_OUT. Before the first crypto_encrypt. */
void crypto_engine_timeout(unsigned seconds);
#define CRYPTO_TIMED_OUT (-2)

/* The canonical form of an address in the key directory: the domain in
 * lower case; the local part too when case_insensitive; "+detail" dropped
 * when strip_detail. -1 when it is no address or out is too small. */
int crypto_addr_canon(const char *addr, bool case_insensitive, bool strip_detail, char *out,
                      size_t outlen);

/* How a recipient's mail is encrypted: to an OpenPGP key (PGP/MIME) or to
 * an X.509 certificate (S/MIME). 0 is OpenPGP, so a zeroed key is one. */
enum crypto_method { CRYPTO_OPENPGP, CRYPTO_SMIME, CRYPTO_METHODS };

/* What a key offers, as read by gpg; or a certificate, as smime.c reads
 * it (method CRYPTO_SMIME: fpr is the certificate's id, the upper-case hex
 * SHA-256 of its DER; armored its PEM; addresses those of subjectAltName
 * rfc822Name, else of the subject's emailAddress; expires its notAfter). */
typedef struct crypto_key_info {
    enum crypto_method method;
    char fpr[CRYPTO_FPR_MAX + 1];
    const char *why_unusable; /* NULL when it can take mail now: "revoked", "expired", ... */
    bool retired;             /* revoked or expired: a stored copy is to go */
    long long expires;        /* when it stops being usable (Unix time); 0: never */
    char **addresses;         /* of its valid user IDs, as written there */
    unsigned n_addresses;
    char *armored; /* the key, minimal and ASCII-armored, as stored */
    size_t armored_len;
    /* certificates only (NULL, 0 for OpenPGP keys): one-line RFC 2253 names,
     * the serial number in hex, notBefore (0: none) */
    char *subject, *issuer, *serial;
    long long not_before;
} crypto_key_info_t;

/* The directory's copy of the key a revocation names (a fingerprint, or a
 * 16-digit key ID), appended to out: 1; 0 when there is none; -1 with err
 * when the directory could not be asked. */
typedef int (*crypto_stored_key_fn)(const char *issuer, buf_t *out, void *arg, char *err,
                                    size_t errlen);

/* Reads every public key in data (armored or binary) in a throw-away
 * GnuPG home made under parent ("" or NULL: $TMPDIR) and calls cb for each.
 * A key revocation certificate on its own (in any armor gpg, sq or rnp
 * writes, gpg's ':'-guarded one too) is applied to its key in data, else to
 * the copy stored() finds: that key is then reported revoked. One that
 * names no key to be found, or does not verify against its key, is
 * reported with why_unusable saying so and retired false. X.509 input
 * (PEM CERTIFICATE or PKCS7 blocks, a DER certificate, a DER PKCS#7
 * bundle) is read by OpenSSL instead, each certificate reported with
 * method CRYPTO_SMIME and checked as crypto_cert_check does; one without an
 * email address has why_unusable "no email address" (nothing to file it
 * under). Blocking (it runs gpg): not on an event loop. */
int crypto_keys_inspect(const char *data, size_t len, const char *parent,
                        crypto_stored_key_fn stored,
                        void (*cb)(const crypto_key_info_t *key, void *arg), void *arg, char *err,
                        size_t errlen);

/* The private parent directory of the per-thread GnuPG homes, made under
 * parent (or $TMPDIR), and its removal with everything in it. */
int crypto_homes_create(const char *parent, char *out, size_t outlen, char *err, size_t errlen);
void crypto_homes_remove(const char *dir);
/* Whether GnuPG homes can be made: dir (crypto_homes_create's, made again
 * when it has vanished) is a directory of ours closed to others; with dir
 * "" or NULL, whether parent (or $TMPDIR) takes a new one. -1 with why not.
 * A few system calls: fine on an event loop. */
int crypto_homes_check(const char *parent, const char *dir, char *err, size_t errlen);
/* How often a thread's home has been made again since the start (it had
 * vanished, or gpg left it in doubt). */
unsigned crypto_homes_remade(void);

/* A recipient key as the directory holds it. For CRYPTO_SMIME, fpr is the
 * certificate's id and armored its PEM. */
typedef struct crypto_rcpt_key {
    enum crypto_method method;
    const char *fpr;
    const char *armored;
    size_t armored_len;
} crypto_rcpt_key_t;

/* Who encrypts OpenPGP mail ([crypto] openpgp_engine): GPGME, a gpg process
 * per encryption in a GnuPG home per thread; or librnp in the calling
 * thread, its keys held in memory per thread (rnp.c): no files, no
 * processes. Both write the same ASCII armor. Once, before the first
 * crypto_encrypt; GPGME unless told. Choosing rnp loads librnp, which is
 * not linked (see rnp.c): -1 with err when it cannot be. */
enum crypto_openpgp_engine { ENGINE_GPGME, ENGINE_RNP };
int crypto_openpgp_engine(enum crypto_openpgp_engine e, char *err, size_t errlen);

/* Appends plain encrypted to all the keys (each key's usable encryption
 * subkey), ASCII-armored, to armor, with the engine chosen above. GPGME runs
 * gpg in the calling thread's own GnuPG home under homes (made on first use,
 * and again, homes too, when it has vanished); librnp needs no home and
 * ignores homes. Either way: call it from thread-pool threads, never the
 * event loop. */
int crypto_encrypt(const char *homes, const crypto_rcpt_key_t *keys, unsigned n, const char *plain,
                   size_t len, buf_t *armor, char *err, size_t errlen);

/* ---- S/MIME (RFC 8551) through OpenSSL's CMS, in-process (smime.c) ---- */

/* The process's S/MIME settings ([crypto] smime_*). gcm: AuthEnvelopedData
 * with AES-256-GCM (RFC 5083, RFC 5084) instead of EnvelopedData with
 * AES-256-CBC; oaep: RSA recipients get RSAES-OAEP (RFC 8017, SHA-1 and
 * MGF1-SHA-1, the defaults every reader takes) instead of PKCS#1 v1.5.
 * ca_file: certificates must chain to one of its certificates (PEM; an
 * intermediate there is an anchor too); crl_file: CRLs (PEM) the chain's
 * leaf is checked against; "" or NULL: none. */
typedef struct crypto_smime_options {
    bool gcm;
    bool oaep;
    const char *ca_file;
    const char *crl_file;
} crypto_smime_options_t;

/* Once per process (from the main thread, before any other S/MIME call):
 * keeps the options, and loads the CA file and CRLs into one store that
 * every thread then verifies against, read-only. -1 with err when a file
 * cannot be read or holds nothing of its kind, or a CRL file comes without
 * a CA file; the settings before stay then. */
int crypto_smime_configure(const crypto_smime_options_t *o, char *err, size_t errlen);
/* Loads the CA file and CRLs again (an operator's fresh CRL, on SIGHUP):
 * the part of crypto_smime_configure that may be done again, from the
 * thread that calls crypto_cert_check (pool threads never read the
 * store). The store before stays when a file cannot be read. */
int crypto_smime_trust(const char *ca_file, const char *crl_file, char *err, size_t errlen);

/* The check at each use of a stored certificate (pem, as the directory
 * holds it) at time now: dates, key usage, extended key usage, the key's
 * type and size, and with a CA file the chain (and the CRL). 1 when it
 * holds; 0 with why (crypto_key_info_t's why_unusable wording) when the
 * certificate fails; -1 with why when it cannot be judged now (the stored
 * data unreadable, a CRL missing or stale, no memory). One signature check
 * per certificate in the chain: fine on an event loop. */
int crypto_cert_check(const char *pem, size_t len, long long now, char *why, size_t whylen);

/* Appends to der the CMS ContentInfo of plain encrypted to every
 * certificate (method CRYPTO_SMIME, armored the PEM): EnvelopedData with
 * AES-256-CBC, or AuthEnvelopedData with AES-256-GCM when configured; RSA
 * recipients by KeyTransRecipientInfo (PKCS#1 v1.5, or OAEP when
 * configured), EC ones by KeyAgreeRecipientInfo (ECDH); each named by
 * issuer and serial number. plain goes in as it is (CRLF lines: the
 * caller's canonical MIME entity). Thread-safe; -1 with err. */
int smime_encrypt(const crypto_rcpt_key_t *certs, unsigned n, const char *plain, size_t len,
                  buf_t *der, char *err, size_t errlen);

/* ---- the node's cache of the key directory (keydir.c) ---- */

/* One method's key for an address, as the directory holds it. */
typedef struct keydir_key {
    char fpr[CRYPTO_FPR_MAX + 1]; /* "" when there is none */
    long long expires;            /* 0: never */
    char *armored;                /* the OpenPGP key armored, the certificate as PEM */
    size_t armored_len;
} keydir_key_t;

/* What is known about one recipient address: an OpenPGP key, an S/MIME
 * certificate, both or neither, and which one mail uses when both can. */
typedef struct keydir_entry {
    enum enc_policy policy;    /* in effect: the address's, its domain's, or the default */
    enum config_trust trust;   /* the least a key needs: the policy's, or [crypto] min_trust */
    enum crypto_method prefer; /* in effect, as policy */
    keydir_key_t keys[CRYPTO_METHODS];
} keydir_entry_t;

/* What happens to mail for a recipient. */
/* DECIDE_UNKNOWN: a key or certificate is there but cannot be judged now:
 * neither clear text nor a refusal may follow, only "try again". */
enum crypto_decision { DECIDE_PLAIN, DECIDE_ENCRYPT, DECIDE_REFUSE, DECIDE_UNKNOWN, DECISIONS };

typedef struct keydir keydir_t;
keydir_t *keydir_new(unsigned capacity);
void keydir_free(keydir_t *d);
/* Tells the cache the directory's current version; true (and the cache
 * emptied) when it moved. */
bool keydir_version(keydir_t *d, long long version);
/* Empties the cache whatever its version: nothing in it is to be used. */
void keydir_drop(keydir_t *d);
/* The cached entry of a canonical address, or NULL. */
const keydir_entry_t *keydir_get(const keydir_t *d, const char *addr);
/* Caches what Redis said at version (a reply older than the cache's version
 * is dropped); the keys' data is copied. */
int keydir_put(keydir_t *d, long long version, const char *addr, const keydir_entry_t *e);

/* The directory's authentication (issue 18). Every entry a node trusts has
 * a tag (seal_mac, purpose "keydir-entry") over its name and content, kept
 * in an index; the index itself has a tag (purpose "keydir-index") over the
 * version it was sealed at and every entry name and tag, sorted by name.
 * The command line that writes the directory makes them; nodes check them. */
enum keydir_item_kind {
    KEYDIR_ITEM_ADDRESS, /* an address's key of one method: "a:<name>:<method>" */
    KEYDIR_ITEM_KEY,     /* a stored key or certificate: "k:<name>" */
    KEYDIR_ITEM_POLICY,  /* an address's or a domain's policy: "p:<name>" */
    KEYDIR_ITEM_PREFER,  /* ... and preference: "r:<name>" */
    KEYDIR_ITEM_USER,    /* an SMTP user's argon2id hash (data): "h:<name>" */
    KEYDIR_ITEM_CRAM     /* ... and CRAM-MD5 secret: "c:<name>" */
};
typedef struct keydir_item {
    enum keydir_item_kind kind;
    const char *name;   /* the address, the key's id, the address or domain */
    const char *method; /* "openpgp" or "smime" (ADDRESS, KEY) */
    const char *fpr;    /* ADDRESS: the key's id */
    const char *addrs;  /* KEY: its addresses, LF-separated, as stored */
    long long expires;  /* ADDRESS, KEY */
    const char *data;   /* the key's data; a setting's value */
    size_t len;
} keydir_item_t;
/* The item's name in the index; -1 when out is too small. */
int keydir_item_entry(const keydir_item_t *it, char *out, size_t outlen);
void keydir_item_tag(const seal_keyring_t *k, const keydir_item_t *it, char out[SEAL_MAC_LEN + 1]);
/* As seal_mac_verify. */
int keydir_item_verify(const seal_keyring_t *k, const keydir_item_t *it, const char *tag);

/* An index: entry names and their tags, copied and sorted. */
typedef struct keydir_index keydir_index_t;
keydir_index_t *keydir_index_new(const char *const *entries, const char *const *tags, size_t n);
void keydir_index_free(keydir_index_t *x);
size_t keydir_index_size(const keydir_index_t *x);
/* The tag of entry, or NULL when the index has none. */
const char *keydir_index_find(const keydir_index_t *x, const char *entry);
/* The index's own tag, sealed at version; -1 when memory ran out. */
int keydir_index_tag(const seal_keyring_t *k, long long version, const keydir_index_t *x,
                     char out[SEAL_MAC_LEN + 1]);
/* As seal_mac_verify (-2 when memory ran out). */
int keydir_index_verify(const seal_keyring_t *k, long long version, const keydir_index_t *x,
                        const char *tag);
/* A DKIM key entry's tag (purpose "dkim-entry"): over the domain, the
 * selector, the algorithm's name, the TXT record and the sealed key. */
void keydir_dkim_tag(const seal_keyring_t *k, const char *domain, const char *selector,
                     const char *algorithm, const char *record, const void *sealed, size_t len,
                     char out[SEAL_MAC_LEN + 1]);
/* As seal_mac_verify; 0 for no tag (""). */
int keydir_dkim_verify(const seal_keyring_t *k, const char *domain, const char *selector,
                       const char *algorithm, const char *record, const void *sealed, size_t len,
                       const char *tag);
/* A discovered key (issue 16), as Redis holds it beside the directory:
 * made by the node (or `sealpost keys lookup`) that found it and checked
 * at every use, so a Redis writer can neither plant a key nor change where
 * it came from. Its tag (purpose "keydir-discovered") covers every field
 * but the URL, which is shown only. times are Unix times, as text. */
typedef struct keydir_disc {
    const char *address; /* canonical */
    const char *fpr;
    long long expires; /* 0: never */
    const char *data;
    size_t len;
    const char *source; /* "wkd", "keyserver" */
    long long found;    /* this fingerprint first filed */
    long long checked;  /* last looked up */
} keydir_disc_t;
void keydir_disc_tag(const seal_keyring_t *k, const keydir_disc_t *d, char out[SEAL_MAC_LEN + 1]);
/* As seal_mac_verify; 0 for no tag. */
int keydir_disc_verify(const seal_keyring_t *k, const keydir_disc_t *d, const char *tag);
/* A miss (nothing found for address, or the look-up failed, until then):
 * its tag, purpose "keydir-miss", over the address, until and the kind. */
void keydir_miss_tag(const seal_keyring_t *k, const char *address, long long until, bool failed,
                     char out[SEAL_MAC_LEN + 1]);
int keydir_miss_verify(const seal_keyring_t *k, const char *address, long long until, bool failed,
                       const char *tag);
/* Entry i's name and tag, for i < keydir_index_size (sorted by name). */
const char *keydir_index_entry(const keydir_index_t *x, size_t i);
const char *keydir_index_entry_tag(const keydir_index_t *x, size_t i);

/* ---- the gateway: a message's body variants (gateway.c) ---- */

typedef struct gateway_rcpt {
    const char *addr;             /* canonical (crypto_addr_canon) */
    const crypto_rcpt_key_t *key; /* NULL: this recipient gets the original */
    unsigned variant;             /* out: the body it gets */
} gateway_rcpt_t;

enum gateway_outcome {
    GATEWAY_PLAIN,       /* no recipient has a key */
    GATEWAY_ENCRYPTED,   /* at least one copy encrypted */
    GATEWAY_PASSTHROUGH, /* already encrypted by the sender: stored as it came */
    GATEWAY_FAILED,
    GATEWAY_OUTCOMES
};

/* One ciphertext the gateway made (one per encrypted variant): which
 * method, how the engine call ended, and how long the engine call alone took
 * (crypto_encrypt or smime_encrypt; not the MIME around it, nor sealing). */
enum gateway_cipher_result { CIPHER_OK, CIPHER_FAILED, CIPHER_TIMED_OUT, CIPHER_RESULTS };
typedef struct gateway_cipher {
    enum crypto_method method;
    enum gateway_cipher_result result;
    double seconds;
} gateway_cipher_t;

typedef struct gateway_job {
    const char *mid; /* names each sealed variant: "<mid>:<n>" */
    const char *msg;
    size_t len;
    gateway_rcpt_t *rcpts;
    unsigned n_rcpts;
    bool hide_subject, case_insensitive, strip_detail;
    bool legacy_display; /* protected-headers="v1" and a legacy display element */
    const char *homes;   /* crypto_homes_create's */
    const seal_keyring_t *seal;
    unsigned max_bcc_copies; /* ciphertexts of their own for Bcc recipients; 0: no limit */
    bool too_many_copies;    /* out: failed for max_bcc_copies, which no retry changes */
    bool timed_out;          /* out: failed for gpg's deadline (crypto_engine_timeout) */
    buf_t *variants;         /* out: the sealed bodies, variant n at [n] */
    unsigned n_variants;
    enum gateway_outcome outcome;
    char error[256]; /* when it failed */

    /* out: each engine call, in order, for the metrics (counted on the loop) */
    gateway_cipher_t *ciphers;
    unsigned n_ciphers;
} gateway_job_t;

/* Groups the recipients, encrypts (running gpg: call it in a worker thread
 * when any recipient has a key), wraps in PGP/MIME and seals each variant.
 * -1 on failure, with outcome GATEWAY_FAILED and error set: then nothing may
 * be stored. gateway_job_release frees the variants either way. */
int gateway_run(gateway_job_t *job);
void gateway_job_release(gateway_job_t *job);

/* A policy as the directory stores it: never, opportunistic or required,
 * the last two optionally followed by the least trust a key needs for
 * the address or domain ("required imported"). *trust is -1 when the value
 * names none. -1 when value is none of these. */
int keydir_parse_policy(const char *value, enum enc_policy *policy, int *trust);
/* e's policy and trust in effect, from Redis's settings (NULL: none): the
 * address's setting, else its domain's, else the defaults; the trust is the
 * setting's own when it names one. */
void keydir_policy(keydir_entry_t *e, const char *addr_policy, const char *domain_policy,
                   enum enc_policy fallback, enum config_trust min_trust);
/* crypto_smime_configure with cfg's [crypto] smime_* settings: once per
 * process, by the ingress and by the admin commands that check
 * certificates, so both judge a certificate alike. */
int keydir_smime_configure(const config_t *cfg, char *err, size_t errlen);
/* The preference in effect ("openpgp" or "smime" from Redis, NULL: none set). */
enum crypto_method keydir_prefer(const char *addr_prefer, const char *domain_prefer,
                                 enum enc_prefer fallback);
/* never: plain. Else the preferred method's key when it is usable at now,
 * else the other's: encrypt, with *method saying which; else plain, or
 * refuse when required; but DECIDE_UNKNOWN when neither is usable and one
 * of them cannot be judged (no data, or crypto_cert_check's -1). A key is
 * usable when it has data and has not expired; a certificate also when
 * crypto_cert_check passes (dates, usage, key size, chain and CRL when
 * configured). why (for the log) says what made each key there unusable,
 * "none" when there is none. */
enum crypto_decision keydir_decide(const keydir_entry_t *e, long long now,
                                   enum crypto_method *method, char *why, size_t whylen);

/* ---- PGP/MIME (RFC 3156) with header protection (RFC 9788) ---- */

/* Whether msg is already encrypted and must pass untouched: a top-level
 * Content-Type of multipart/encrypted, application/pkcs7-mime or
 * application/x-pkcs7-mime (every Content-Type field must say so), or inline
 * PGP: a body line that is exactly "-----BEGIN PGP MESSAGE-----". */
bool pgpmime_is_encrypted(const char *msg, size_t len);

/* Whether msg's header has a Bcc or Resent-Bcc field (any case). */
bool pgpmime_has_blind(const char *msg, size_t len);
/* Appends msg to out without its Bcc and Resent-Bcc fields (continuation
 * lines included): every other octet as it is. The copy sent in clear names
 * no blind recipient. 0, or -1 (out as it was) when memory runs out. */
int pgpmime_without_blind(const char *msg, size_t len, buf_t *out);

/* How the builders protect the header. */
#define PGPMIME_HIDE_SUBJECT   1u /* the outer Subject is "[...]" */
#define PGPMIME_LEGACY_DISPLAY 2u /* protected-headers="v1", and a legacy display element */

/* Appends to out the plaintext to encrypt, the Cryptographic Payload of RFC
 * 9788: msg's header fields but the trace, structural, Bcc and Resent-Bcc
 * ones, copied as they are; one HP-Outer field for each non-trace field
 * pgpmime_outer puts outside (with "[...]" for a hidden Subject); msg's
 * Content-* fields, with hp="cipher" added to Content-Type (text/plain when
 * msg has none); an empty line; msg's body, untouched. With
 * PGPMIME_LEGACY_DISPLAY the Content-Type also gets protected-headers="v1";
 * and when a field is hidden outside (Subject, Keywords, Comments) the
 * payload is a multipart/mixed instead: a text/plain legacy display element
 * repeating those fields, then msg's Content-* fields and body, untouched.
 * Returns 0, or -1 (out as it was) when memory runs out or msg has no header
 * field at all. */
int pgpmime_inner(const char *msg, size_t len, unsigned flags, buf_t *out);

/* Appends to out the message to send: msg's Received and Return-Path fields,
 * its From, To, Cc, Date, Message-ID, In-Reply-To, References, Reply-To,
 * Sender, Auto-Submitted, Precedence and List-* fields, its Subject (or
 * "Subject: [...]" with PGPMIME_HIDE_SUBJECT), MIME-Version and a
 * multipart/encrypted Content-Type, then the two parts of RFC 3156 §4: the
 * version identification and armor (ASCII armor; LF line ends become CRLF).
 * Never a Bcc. Returns 0, or -1 (out as it was) when memory runs out or msg
 * has no header field at all. */
int pgpmime_outer(const char *msg, size_t len, const char *armor, size_t armor_len, unsigned flags,
                  buf_t *out);

/* The same outer header as pgpmime_outer, then an S/MIME body (RFC 8551
 * §3.2.2): application/pkcs7-mime; smime-type=enveloped-data (or
 * authEnveloped-data, when der is AuthEnvelopedData); name="smime.p7m",
 * as an attachment, der in base64 lines of 76. 0, or -1 (out as it was)
 * when memory runs out, msg has no header field or der is no enveloped
 * data. */
int smime_outer(const char *msg, size_t len, const unsigned char *der, size_t der_len,
                unsigned flags, buf_t *out);

/* ---- DKIM signing (RFC 6376, RFC 8463; dkim.c) ---- */

/* The algorithms a DKIM key signs with: a=ed25519-sha256 (RFC 8463) and
 * a=rsa-sha256 (RSASSA-PKCS1-v1_5 over SHA-256, keys of 2048..8192 bits). */
enum dkim_algorithm { DKIM_ED25519, DKIM_RSA, DKIM_ALGORITHMS };
/* "ed25519", "rsa": the names of the command line and the key store. */
const char *dkim_algorithm_name(enum dkim_algorithm a);
/* "ed25519-sha256", "rsa-sha256": the a= tag. */
const char *dkim_algorithm_tag(enum dkim_algorithm a);
/* name as dkim_algorithm_name gives it into *out: 0, or -1. */
int dkim_algorithm_parse(const char *name, enum dkim_algorithm *out);

typedef struct dkim_key dkim_key_t; /* a private key (an EVP_PKEY inside) */

/* A new key as PEM (PKCS#8, "BEGIN PRIVATE KEY") appended to pem; bits for
 * RSA only: 0 means 2048, else 2048..8192 (0 for ed25519). The caller wipes
 * (sodium_memzero) and frees pem. 0, or -1 with err. */
int dkim_keygen(enum dkim_algorithm a, unsigned bits, buf_t *pem, char *err, size_t errlen);
/* Reads a private key from PEM (PKCS#8, or "RSA PRIVATE KEY"); refuses
 * other key types, an encrypted key, and RSA under 2048 or over 8192 bits,
 * saying why in err. */
dkim_key_t *dkim_key_load(const char *pem, size_t len, char *err, size_t errlen);
void dkim_key_free(dkim_key_t *k);
enum dkim_algorithm dkim_key_algorithm(const dkim_key_t *k);
unsigned dkim_key_bits(const dkim_key_t *k); /* 256 for ed25519 */
/* The TXT record's text appended to out: "v=DKIM1; k=ed25519; p=<base64 of
 * the 32 raw octets>" or "v=DKIM1; k=rsa; p=<base64 of the DER
 * SubjectPublicKeyInfo>". 0, or -1 (out as it was). */
int dkim_key_record(const dkim_key_t *k, buf_t *out);
/* The zone-file line (no LF) appended to out:
 * `S._domainkey.D. IN TXT "..." "..."`, the record split into strings of at
 * most 255 octets each ('"' and '\\' escaped). -1 (out as it was) for an
 * invalid domain or selector, or a record with an octet that is not
 * printable ASCII. */
int dkim_zone_line(const char *domain, const char *selector, const char *record, buf_t *out);
/* Whether name is a valid selector (RFC 6376 §3.1: dot-separated labels of
 * letters, digits and hyphens, 1..63 octets each, not starting or ending
 * with a hyphen; at most 253 in all) and a valid signing domain (the same,
 * with at least two labels). ASCII only; case-insensitive (callers
 * lower-case first). */
bool dkim_selector_valid(const char *name);
bool dkim_domain_valid(const char *name);
/* The domain of msg's From into out (lower-cased): 0; -2 when the From's
 * one address has a domain that is not ASCII (UTF-8, RFC 6532: not signed,
 * for no A-label is made, but told apart from a missing From); else -1 when
 * there is none, the message has several From fields, its From holds not
 * exactly one address, or the domain is no valid signing domain (a
 * literal), or does not fit in size. */
int dkim_from_domain(const char *msg, size_t len, char *out, size_t size);

typedef struct dkim_signer {
    const dkim_key_t *key;
    const char *domain;   /* d= */
    const char *selector; /* s= */
} dkim_signer_t;

#define DKIM_SIGNERS_MAX 8

/* Signs msg (the whole message as it goes on the wire: header, empty line,
 * body, CRLF line ends, NOT dot-stuffed) once per signer (1..DKIM_SIGNERS_MAX),
 * relaxed/relaxed, t=now, x=now+expire_s when expire_s > 0. Signed fields
 * (h=): From once more than it occurs (over-signed), and each of To, Cc,
 * Subject, Date, Message-ID, MIME-Version, Content-Type,
 * Content-Transfer-Encoding, In-Reply-To, References, Reply-To, Sender,
 * List-* (every field whose name starts "List-" and is letters, digits and
 * hyphens), Autocrypt, as many times as it occurs (RFC 6376 §5.4.2:
 * instances taken bottom-up). The body hash is computed once for all
 * signers. Appends the DKIM-Signature fields (folded to lines of at most 78
 * octets where possible, each field ending CRLF; the first signer's field
 * first) to out: the caller puts out before msg. 0, or -1 with err (out as
 * it was). */
int dkim_sign(const char *msg, size_t len, const dkim_signer_t *signers, unsigned n, long long now,
              unsigned expire_s, buf_t *out, char *err, size_t errlen);

#endif
