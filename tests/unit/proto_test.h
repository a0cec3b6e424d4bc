/* What the proto/ unit tests (test_proto*.c) share. */
#ifndef SEALPOST_TESTS_PROTO_TEST_H
#define SEALPOST_TESTS_PROTO_TEST_H

/* A string literal and its length, embedded NULs included. */
#define LIT(s) (s), (sizeof(s) - 1)

#endif
