/* S/MIME's structures (RFC 8551, RFC 5652) through OpenSSL's CMS: for now,
 * whether a body the sender labelled enveloped data really is. */
#include "crypto/internal.h"

#include <limits.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/objects.h>

bool smime_is_enveloped(const unsigned char *der, size_t len, bool auth)
{
    if (len == 0 || len > LONG_MAX) return false;
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    if (!cms) {
        ERR_clear_error(); /* the pool thread's queue: no stale error for its next call */
        return false;
    }
    int want = auth ? NID_id_smime_ct_authEnvelopedData : NID_pkcs7_enveloped;
    ASN1_OCTET_STRING **content =
        OBJ_obj2nid(CMS_get0_type(cms)) == want ? CMS_get0_content(cms) : NULL;
    /* Detached content would travel somewhere else, maybe in clear; and
     * octets after the structure are not inside it. */
    bool ok = content && *content && ASN1_STRING_length(*content) > 0 && p == der + len;
    CMS_ContentInfo_free(cms);
    ERR_clear_error();
    return ok;
}
