/* The cost of authenticating an envelope (issue 18): seal_envelope_tag and
 * seal_envelope_verify, as the ingress and the worker call them, for
 * a two-recipient message, as often as N says. Prints the microseconds one
 * make-and-verify takes; CPU only, so the figure drifts little.
 *
 * usage: envelope_mac [N] */
#include "crypto/crypto.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sodium.h>
int main(int argc, char **argv)
{
    char err[128], tag[SEAL_MAC_LEN + 1];
    if (sodium_init() < 0) return 1;
    seal_keyring_t *k =
        seal_keyring_load("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", NULL, err, sizeof err);
    const char *mid = "0123456789abcdef0123456789abcdef", *snd = "alice@origin.test",
               *par = "BODY=8BITMIME";
    const char *lens = "4187",
               *env = "bob@example.test\t0\t\ncarol@example.test\t0\tNOTIFY=FAILURE\n";
    seal_envelope_t e = {mid, snd, par, lens, env};
    int n = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 200000;
    if (!k || n <= 0) return 1;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        seal_envelope_tag(k, &e, tag);
        ok += seal_envelope_verify(k, &e, tag);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("make+verify: %.2f us per envelope (%d ok)\n",
           ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n / 1000.0, ok);
    return 0;
}
