/* The Web Key Directory's names (draft-koch-openpgp-webkey-service §3.1):
 * where a key for an address is published, by the advanced method
 * (openpgpkey.<domain>) and by the direct one (<domain>). */
#include "discovery/internal.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

/* Five bits at a time, most significant first: 160 bits make 32 letters. */
void wkd_hash(const char *local, size_t len, char out[33])
{
    static const char alphabet[] = "ybndrfg8ejkmcpqxot1uwisza345h769";
    char lower[256];
    size_t n = len < sizeof lower ? len : sizeof lower;
    for (size_t i = 0; i < n; i++)
        lower[i] = (local[i] >= 'A' && local[i] <= 'Z') ? (char)(local[i] + 32) : local[i];
    unsigned char digest[20];
    unsigned dlen = 0;
    EVP_Digest(lower, n, digest, &dlen, EVP_sha1(), NULL);
    unsigned acc = 0, bits = 0, o = 0;
    for (size_t i = 0; i < sizeof digest; i++) {
        acc = (acc << 8) | digest[i];
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            out[o++] = alphabet[(acc >> bits) & 31];
        }
    }
    out[o] = 0;
}

int wkd_percent_encode(const char *in, size_t len, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '.' || c == '_' || c == '~';
        if (o + (plain ? 1 : 3) >= outlen) return -1;
        if (plain) {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = 0;
    return 0;
}

int wkd_url(const char *address, bool advanced, wkd_url_t *out)
{
    const char *at = strrchr(address, '@');
    if (!at || at == address || !at[1] || (size_t)(at - address) > 255) return -1;
    size_t local_len = (size_t)(at - address);
    char domain[256];
    if (snprintf(domain, sizeof domain, "%s", at + 1) >= (int)sizeof domain) return -1;
    util_ascii_lower(domain);
    char hash[33], l[768];
    wkd_hash(address, local_len, hash);
    if (wkd_percent_encode(address, local_len, l, sizeof l) < 0) return -1;
    int h = advanced ? snprintf(out->host, sizeof out->host, "openpgpkey.%s", domain)
                     : snprintf(out->host, sizeof out->host, "%s", domain);
    int p = advanced ? snprintf(out->path, sizeof out->path,
                                "/.well-known/openpgpkey/%s/hu/%s?l=%s", domain, hash, l)
                     : snprintf(out->path, sizeof out->path, "/.well-known/openpgpkey/hu/%s?l=%s",
                                hash, l);
    return h < (int)sizeof out->host && p < (int)sizeof out->path ? 0 : -1;
}
