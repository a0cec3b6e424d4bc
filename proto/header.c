/* RFC 5322 header fields: just enough to ask whether a message has one. */
#include "proto/proto.h"

#include <string.h>
#include <strings.h>

bool proto_header_has(const char *msg, size_t len, const char *name)
{
    size_t name_len = strlen(name);
    size_t i = 0;
    while (i < len) {
        if (msg[i] == '\r' || msg[i] == '\n') return false; /* the empty line ends the header */
        size_t n = i;
        while (n < len && msg[n] != ':' && msg[n] != '\n')
            n++;
        size_t end = n; /* RFC 5322 §4.5.3 (obsolete): white space before the colon */
        while (end > i && (msg[end - 1] == ' ' || msg[end - 1] == '\t'))
            end--;
        if (n < len && msg[n] == ':' && end - i == name_len &&
            !strncasecmp(msg + i, name, name_len))
            return true;
        while (i < len && msg[i] != '\n') /* on to the next line; folded lines start with WSP */
            i++;
        i++;
        while (i < len && (msg[i] == ' ' || msg[i] == '\t')) { /* skip continuation lines */
            while (i < len && msg[i] != '\n')
                i++;
            i++;
        }
    }
    return false;
}
