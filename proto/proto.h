/* proto: SMTP protocol code with no I/O. Command lines, paths and ESMTP
 * parameters (RFC 5321 §4.1), the DATA decoder (dot-unstuffing, strict CRLF
 * rules), reply lines, and dot-stuffing for the client side. Includes nothing
 * of ours; every function works on caller-owned, bounded memory. */
#ifndef SEALPOST_PROTO_H
#define SEALPOST_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum proto_status {
    PROTO_OK = 0,
    PROTO_E_SYNTAX,      /* command or argument syntax */
    PROTO_E_PATH,        /* mailbox syntax */
    PROTO_E_PATH_LENGTH, /* local part over 64, domain over 255, path over 256 */
    PROTO_E_PARAM,       /* ESMTP parameter syntax, or too many of them */
};

/* ---- commands ---- */

typedef enum proto_verb {
    PROTO_UNKNOWN,
    PROTO_HELO,
    PROTO_EHLO,
    PROTO_MAIL,
    PROTO_RCPT,
    PROTO_DATA,
    PROTO_RSET,
    PROTO_NOOP,
    PROTO_QUIT,
    PROTO_HELP,
    PROTO_VRFY,
    PROTO_EXPN,
    PROTO_STARTTLS,
    PROTO_AUTH,
    PROTO_BDAT,
    PROTO_TURN,
    PROTO_VERB_COUNT
} proto_verb_t;

typedef struct proto_command {
    proto_verb_t verb;
    const char *args; /* points into the line: after "VERB " (after "FROM:"/"TO:" for MAIL/RCPT) */
    size_t args_len;
} proto_command_t;

/* Splits a command line (without its CRLF) into verb and arguments. An unknown
 * verb is PROTO_OK with PROTO_UNKNOWN; MAIL without "FROM:" or RCPT without "TO:"
 * is PROTO_E_SYNTAX. A NUL byte anywhere is PROTO_E_SYNTAX. */
enum proto_status proto_command_parse(const char *line, size_t len, proto_command_t *out);
const char *proto_verb_name(proto_verb_t verb);

/* ---- paths and parameters ---- */

#define PROTO_PATH_MAX   256
#define PROTO_MAX_PARAMS 8

typedef struct proto_param {
    const char *key; /* points into the argument text */
    size_t key_len;
    const char *value; /* NULL when the parameter has no "=value" */
    size_t value_len;
} proto_param_t;

/* Which grammar a path follows (RFC 5321 §4.1.2): only a Reverse-path (MAIL)
 * may be the null path "<>", only a Forward-path (RCPT) may be the bare
 * "<Postmaster>" of §4.1.1.3. */
enum proto_path_kind { PROTO_FORWARD_PATH, PROTO_REVERSE_PATH };

typedef struct proto_path {
    char addr[PROTO_PATH_MAX + 1]; /* "local@domain", domain lower-cased; "" for <> */
    size_t at;                     /* index of '@' in addr (0 for "" and "Postmaster") */
    bool utf8;                     /* has non-ASCII octets (needs SMTPUTF8) */
    bool postmaster;               /* "<Postmaster>" without a domain: addr is "Postmaster" */
    proto_param_t params[PROTO_MAX_PARAMS];
    unsigned n_params;
} proto_path_t;

/* Parses "<path> [SP param ...]" as after "MAIL FROM:" or "RCPT TO:". A source
 * route ("<@a,@b:user@c>") is accepted and dropped, as RFC 5321 §4.1.2 asks. */
enum proto_status proto_path_parse(const char *args, size_t len, enum proto_path_kind kind,
                                   proto_path_t *out);
/* The domain part of a parsed path ("" for the null path). */
const char *proto_path_domain(const proto_path_t *path);
/* Whether the octets are well-formed UTF-8 (RFC 3629: no overlong forms, no
 * surrogates); ASCII is. */
bool proto_utf8_valid(const char *p, size_t len);
/* Finds a parameter by keyword (case-insensitive); NULL when absent. */
const proto_param_t *proto_path_param(const proto_path_t *path, const char *key);

/* ---- DSN parameters (RFC 3461) ---- */

#define PROTO_ENVID_MAX 100 /* §4.4 */
#define PROTO_ORCPT_MAX 500 /* §4.2 */

enum {
    PROTO_NOTIFY_NEVER = 1,
    PROTO_NOTIFY_SUCCESS = 2,
    PROTO_NOTIFY_FAILURE = 4,
    PROTO_NOTIFY_DELAY = 8
};

/* xtext (§4): printable ASCII but "+" and "=", with "+XX" (upper-case hex)
 * for any other octet. */
bool proto_xtext_valid(const char *p, size_t len);
/* NOTIFY's value (§4.1): "NEVER", or a comma list of SUCCESS, FAILURE and
 * DELAY (any case). Returns the PROTO_NOTIFY_* bits, or -1. */
int proto_dsn_notify(const char *p, size_t len);
/* ORCPT's value (§4.2): addr-type ";" xtext, e.g. "rfc822;user@example.org".
 * With utf8, "utf-8;" addresses may hold UTF-8 as RFC 6533 allows. */
bool proto_dsn_orcpt_valid(const char *p, size_t len, bool utf8);

/* In a stored, space-separated parameter list ("BODY=8BITMIME RET=FULL"),
 * finds KEY (case-insensitive) and copies its value ("" for a bare keyword)
 * into out. False when absent, and when outlen is not 0 and the value does
 * not fit in outlen - 1 octets: a value is passed on whole or not at all. */
bool proto_param_find(const char *list, const char *key, char *out, size_t outlen);

/* ---- what MAIL, RCPT and BDAT take ---- */

/* Each check gives 0, or the code of the refusal with the whole reply line
 * ("501 5.5.4 ...", no CRLF) in reply. */

/* RFC 5321 §4.1.1.11 leaves a repeated keyword undefined: refused (501). */
int proto_params_unique(const proto_path_t *path, char *reply, size_t len);

/* "BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=<100 octets>" and room to spare. */
#define PROTO_MAIL_PARAMS_MAX 256
/* "NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=<500 octets>" */
#define PROTO_RCPT_PARAMS_MAX (PROTO_ORCPT_MAX + 48)

typedef struct proto_mail_params {
    bool body_8bit;                     /* BODY=8BITMIME */
    bool smtputf8;                      /* UTF-8 addresses and header fields allowed */
    char stored[PROTO_MAIL_PARAMS_MAX]; /* what a relay passes on, space-separated */
} proto_mail_params_t;

/* MAIL's parameters: SIZE up to max_size, BODY, SMTPUTF8, RET, ENVID, and
 * AUTH when auth_ok (it is offered under TLS only); a repeated one is
 * refused as proto_params_unique does. */
int proto_mail_params(const proto_path_t *path, unsigned long long max_size, bool auth_ok,
                      proto_mail_params_t *out, char *reply, size_t len);
/* RCPT's DSN parameters, NOTIFY and ORCPT (a UTF-8 ORCPT with smtputf8),
 * in their stored form; a repeated one is refused. */
int proto_rcpt_params(const proto_path_t *path, bool smtputf8, char dsn[PROTO_RCPT_PARAMS_MAX],
                      char *reply, size_t len);
/* "BDAT" SP chunk-size [SP "LAST"] (RFC 3030 §3): false when malformed. */
bool proto_bdat_args(const char *args, size_t len, unsigned long long *size, bool *last);

/* ---- the PROXY protocol (HAProxy, v1 and v2) ---- */

typedef struct proto_proxy {
    bool local;       /* LOCAL, UNKNOWN or UNSPEC: the connection's own address stands */
    int family;       /* 4 or 6 */
    uint8_t addr[16]; /* the client's address, network order */
    uint16_t port;
} proto_proxy_t;

/* Reads a PROXY header at the start of in. Returns its length once all of
 * it is there, 0 while more is needed, -1 when this is no valid header. */
long proto_proxy_parse(const char *in, size_t len, proto_proxy_t *out);

/* ---- header fields (RFC 5322) ---- */

/* One field of a header section. All three spans point into the message. */
typedef struct proto_header_field {
    const char *name; /* without the obsolete white space before the colon */
    size_t name_len;
    const char *value; /* after the colon up to the field's last line end: leading
                          white space and folding (CRLF WSP) left as they are */
    size_t value_len;
    const char *raw; /* the whole field: name, continuation lines, final CRLF */
    size_t raw_len;
} proto_header_field_t;

typedef struct proto_header_iter {
    const char *msg;
    size_t len;
    size_t pos;  /* where the next line starts */
    size_t body; /* where the body starts; valid once proto_header_next returned false */
    bool done;
} proto_header_iter_t;

/* Walks the header section of msg: lines end in CRLF (a bare LF is taken as a
 * line end too), a line that starts with SP or HTAB continues the field above,
 * and the section ends at the first empty line or at the end of msg. A line
 * that is no field (no "name:" with a printable ASCII name) is skipped with
 * its continuation lines. */
void proto_header_iter_init(proto_header_iter_t *it, const char *msg, size_t len);
/* The next field into *field; false at the end of the header section, and
 * from then on it->body is the offset of the body (after the empty line;
 * len when there is none). */
bool proto_header_next(proto_header_iter_t *it, proto_header_field_t *field);

/* Whether the header section of msg (up to its first empty line) has a field
 * called name (case-insensitive, "Message-ID"). */
bool proto_header_has(const char *msg, size_t len, const char *name);

/* The offset of the first octet at or after i in p[0..len) that is neither
 * folding white space (SP, HTAB, CR, LF) nor in a comment ("(...)", nested,
 * with quoted-pairs): RFC 5322 CFWS, for reading structured field values. */
size_t proto_header_skip_cfws(const char *p, size_t len, size_t i);

/* Called with each address found: "local@domain", NUL-terminated, at most
 * PROTO_PATH_MAX octets. */
typedef void (*proto_addr_fn)(const char *addr, size_t len, void *arg);

/* Calls cb for each addr-spec in every field called field_name ("To", "Cc";
 * case-insensitive), read as an RFC 5322 address-list: display names, quoted
 * strings, comments, angle-addrs, groups, source routes and the obsolete forms
 * of §4.4. The address comes without comments, white space, route or
 * brackets; a quoted local part keeps its quotes, and the domain is
 * lower-cased (ASCII), as in proto_path_t.addr, so the two compare with
 * memcmp. What does not parse, and addresses over PROTO_PATH_MAX octets (no
 * SMTP path can hold them), are skipped. Returns how many calls were made. */
size_t proto_header_addresses(const char *msg, size_t len, const char *field_name, proto_addr_fn cb,
                              void *arg);

/* ---- the DATA decoder ---- */

/* Content is refused (the error below; the data is still read to its end)
 * for a bare CR or LF, a NUL, a line over max_line or more than max_size
 * octets: what passes is 7bit or 8bitmime text (RFC 5321 §4.5.2, RFC 6152)
 * that every next hop reads as the same lines. */
enum proto_data_error {
    PROTO_DATA_OK = 0,
    PROTO_DATA_BARE_LF,   /* LF not preceded by CR */
    PROTO_DATA_BARE_CR,   /* CR not followed by LF */
    PROTO_DATA_LONG_LINE, /* a line over max_line octets, CRLF included */
    PROTO_DATA_TOO_BIG,   /* more than max_size octets of content */
    PROTO_DATA_NUL,       /* a NUL octet: RFC 6152 §2 keeps it out of 8BITMIME content, and
                             we offer no BINARYMIME (RFC 3030 §3) that could carry one */
};

typedef struct proto_data {
    size_t max_line;
    size_t max_size;
    size_t size;     /* content octets so far */
    size_t line_len; /* octets of the current line so far, as sent */
    int state;
    enum proto_data_error error; /* the first error; decoding goes on to the end marker */
    bool done;
    bool chunked; /* BDAT: no dot-unstuffing, no end marker */
} proto_data_t;

void proto_data_init(proto_data_t *d, size_t max_line, size_t max_size);
/* For BDAT chunks (RFC 3030): the content arrives as counted octets, so a
 * "." line is content and nothing ends the data but the count; the line
 * rules (CRLF only, line length, size) are the same as for DATA, so what
 * goes on to a next hop by DATA cannot be read differently there. Feed each
 * chunk's octets and call proto_data_end after the LAST one. */
void proto_chunk_init(proto_data_t *d, size_t max_line, size_t max_size);
/* The end of chunked content: a CR left without its LF is a bare CR. */
void proto_data_end(proto_data_t *d);
/* Decodes input until the end of data (the line "." after CRLF) or the end of the
 * input. Content goes to out (at most len octets are written, never more than the
 * input); *out_len gets how many. Returns how many input octets were consumed:
 * fewer than len only when the end marker was reached, and the rest belongs to
 * whatever follows DATA. After an error nothing more is written to out, but the
 * input is still scanned for the end marker so the session stays in step. */
size_t proto_data_feed(proto_data_t *d, const char *in, size_t len, char *out, size_t *out_len);

/* ---- dot-stuffing for sending ---- */

/* The size of body after dot-stuffing, with a final CRLF if it lacks one, plus the
 * ".CRLF" end marker. */
size_t proto_dot_stuffed_len(const char *body, size_t len);
/* Writes exactly proto_dot_stuffed_len(body, len) octets to out. */
void proto_dot_stuff(const char *body, size_t len, char *out);

/* ---- replies ---- */

/* Parses one reply line ("250-text" or "250 text" or "250"). Returns the code
 * (200..599) and sets *last for the final line of a reply; -1 when malformed
 * (a NUL anywhere included: RFC 5321 §4.2's textstring has none). */
int proto_reply_line(const char *line, size_t len, bool *last);

#endif
