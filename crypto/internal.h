/* crypto/'s private interfaces between its own files: OpenPGP's armor and
 * packets (openpgp.c) and S/MIME's structures and certificates (smime.c),
 * read by the passthrough check and the S/MIME builder (pgpmime.c) and by
 * key import (gpg.c). Nothing outside crypto/ includes this. */
#ifndef SEALPOST_CRYPTO_INTERNAL_H
#define SEALPOST_CRYPTO_INTERNAL_H

#include "crypto/crypto.h"

#include <stdbool.h>
#include <stddef.h>

/* ---- OpenPGP armor and packets (RFC 9580 §4.2, §6; openpgp.c) ---- */

#define OPENPGP_TAG_PKESK     1
#define OPENPGP_TAG_SIGNATURE 2
#define OPENPGP_TAG_SKESK     3
#define OPENPGP_TAG_PUBLIC    6
#define OPENPGP_TAG_SED       9
#define OPENPGP_TAG_SEIPD     18
#define OPENPGP_TAG_AEAD      20

#define OPENPGP_SIG_KEY_REVOCATION 0x20

#define OPENPGP_ISSUER_MAX 65 /* hex digits of a v6 fingerprint, and a NUL */

/* One packet of a binary stream. A packet with partial body lengths has its
 * body in chunks: then body is the first chunk only. */
typedef struct openpgp_packet {
    unsigned tag;
    const unsigned char *raw; /* header and body, as in the stream */
    size_t raw_len;
    const unsigned char *body;
    size_t body_len;
    bool partial;
} openpgp_packet_t;

/* The packet at *pos into *p, *pos moved past it: 1; 0 at the end of bin;
 * -1 when what is there is no packet or runs past the end. */
int openpgp_packet_next(const unsigned char *bin, size_t len, size_t *pos, openpgp_packet_t *p);

/* Whether bin is exactly one encrypted OpenPGP message (RFC 9580 §10.3):
 * one or more PKESK/SKESK packets of a known version, then one SEIPD, SED
 * or AEAD packet that ends where bin does. Nothing in clear beside it. */
bool openpgp_is_encrypted_message(const unsigned char *bin, size_t len);

/* A signature packet's type and issuer: the Issuer Fingerprint subpacket
 * as upper-case hex, else the Issuer Key ID's 16 hex digits. -1 when it is
 * no signature of version 3, 4 or 6, or names no issuer. */
int openpgp_signature_issuer(const openpgp_packet_t *p, unsigned *type, char *issuer,
                             size_t issuer_len);

/* Calls fn for each ASCII-armored block in text ("-----BEGIN PGP <kind>-----"
 * at the start of a line, or after one ':' as gpg writes its revocation
 * certificates so that gpg itself does not import them unasked), with the
 * kind and the decoded octets. Blocks whose base64 is broken are skipped.
 * Returns the number of blocks, or -1 when memory ran out or fn failed. */
typedef int (*openpgp_block_fn)(const char *kind, size_t kind_len, const unsigned char *bin,
                                size_t bin_len, void *arg);
int openpgp_armor_each(const char *text, size_t len, openpgp_block_fn fn, void *arg);

/* Decodes text that is one armored block and nothing else (empty lines
 * aside), read strictly: no ':' before BEGIN, only the armor header keys of
 * §6.2.2, the empty line after them. 1 with *bin (free it) and the kind;
 * 0 when text is not so; -1 when memory ran out. */
int openpgp_dearmor(const char *text, size_t len, const char **kind, size_t *kind_len,
                    unsigned char **bin, size_t *bin_len);

/* ---- S/MIME (RFC 8551) through OpenSSL's CMS (smime.c) ---- */

/* Whether der is one CMS ContentInfo, and nothing after it, holding
 * EnvelopedData (or AuthEnvelopedData when auth) with its encrypted content
 * inside. */
bool smime_is_enveloped(const unsigned char *der, size_t len, bool auth);

/* What a ContentInfo holds, read from its contentType alone: for a
 * structure smime_encrypt has just made, which needs no parse in full. */
enum smime_structure { SMIME_OTHER, SMIME_ENVELOPED, SMIME_AUTH_ENVELOPED };
enum smime_structure smime_structure(const unsigned char *der, size_t len);

/* Frees what a crypto_key_info_t of an inspection holds (addresses, the
 * armored key or PEM, a certificate's names and serial), not itself. */
void crypto_key_info_free(crypto_key_info_t *info);

/* Reads the X.509 certificates in data (PEM CERTIFICATE, X509 CERTIFICATE
 * or PKCS7 blocks at the start of a line; or one DER certificate; or one
 * DER PKCS#7 bundle) and calls cb for each, once, with method CRYPTO_SMIME
 * and the checks of crypto_cert_check done at the present time. The number
 * of certificates reported: 0 when data holds no X.509 at all (OpenPGP,
 * then); -1 with err when a block is broken or memory ran out. */
int smime_inspect(const char *data, size_t len, void (*cb)(const crypto_key_info_t *key, void *arg),
                  void *arg, char *err, size_t errlen);

/* ---- OpenPGP encryption in-process (librnp; rnp.c) ---- */

/* Loads librnp (once; it is not linked: see rnp.c). -1 with err when it
 * cannot be. */
int rnp_engine_load(char *err, size_t errlen);
/* crypto_encrypt with ENGINE_RNP: the same contract, in the calling
 * thread's own in-memory keyring; librnp loaded first if need be. */
int rnp_engine_encrypt(const crypto_rcpt_key_t *keys, unsigned n, const char *plain, size_t len,
                       buf_t *armor, char *err, size_t errlen);

/* ---- DKIM canonicalisation (RFC 6376 §3.4; dkim.c), for the tests and
 * the fuzz target ---- */

/* The relaxed canonical form of a message body (§3.4.4) appended to out:
 * white space at the ends of lines dropped and runs of it made one SP,
 * empty lines at the end dropped, a CRLF added to a last line without one;
 * an empty body (or one of empty lines only) gives nothing. Only CRLF ends a
 * line. 0, or -1 (out as it was) when memory runs out. */
int dkim_canon_body(const char *body, size_t len, buf_t *out);
/* The relaxed canonical form of one whole raw header field (name, colon,
 * value, folds, final CRLF) appended to out (§3.4.2): the name lower-cased,
 * the value unfolded (CRLF, and a bare LF as the header reader takes it),
 * runs of white space made one SP, none around the colon nor at the end;
 * "name:value" and CRLF. -1 (out as it was) when there is no colon, or the
 * name before it (white space before the colon aside) is empty or not
 * printable ASCII. */
int dkim_canon_header(const char *field, size_t len, buf_t *out);

#endif
