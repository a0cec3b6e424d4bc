/* SMTP reply lines (RFC 5321 §4.2). */
#include "proto/proto.h"

#include <string.h>

int proto_reply_line(const char *line, size_t len, bool *last)
{
    /* The text goes on as a C string (logs, bounces): with a NUL in it the
     * reply would say less than the server did. */
    if (len < 3 || memchr(line, '\0', len)) return -1;
    for (int i = 0; i < 3; i++)
        if (line[i] < '0' || line[i] > '9') return -1;
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (code < 200 || code > 599) return -1;
    if (len == 3 || line[3] == ' ')
        *last = true;
    else if (line[3] == '-')
        *last = false;
    else
        return -1;
    return code;
}
