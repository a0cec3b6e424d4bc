/* Private to ingress/: the SMTP dialogue over a session, for the listeners. */
#ifndef SEALPOST_INGRESS_SMTP_H
#define SEALPOST_INGRESS_SMTP_H

#include "ingress/internal.h"

#include <sys/socket.h>

/* Accepts the listener's next connection for an SMTP session; false when
 * none could be taken. */
bool smtp_accept(ingress_t *ingress, uv_stream_t *listener, enum listener_kind kind);
/* An SMTP session over a socket already connected, as if accepted on
 * kind's listener from peer (socket activation; tests, over a socketpair). */
bool smtp_open_fd(ingress_t *ingress, int fd, enum listener_kind kind, const struct sockaddr *peer);

#endif
