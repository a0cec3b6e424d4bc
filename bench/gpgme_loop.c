/* The bare GPGME loop the encrypted benchmark compares the ingress with:
 * T threads, each with its own context and GnuPG home (as the ingress has),
 * encrypting the same message to the same key, armored, for S seconds.
 * Prints one line of JSON: {"threads":T,"encryptions":N,"seconds":S,
 * "rate":R,"p50_ms":...,"p99_ms":...}.
 *
 * usage: gpgme_loop KEYFILE MESSAGEFILE THREADS SECONDS */
#include <ftw.h>
#include <gpgme.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES 200000

static char *key_data, *message;
static size_t key_len, message_len;
static double seconds;
static double samples[MAX_SAMPLES];
static unsigned n_samples;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t ready; /* the clock starts when every thread has its key */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

static void die(const char *what, gpgme_error_t e)
{
    fprintf(stderr, "gpgme_loop: %s: %s\n", what, gpgme_strerror(e));
    exit(1);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void *run(void *arg)
{
    char home[] = "/tmp/gpgme-loop-XXXXXX";
    (void)arg;
    if (!mkdtemp(home)) exit(1);
    char conf[64];
    snprintf(conf, sizeof conf, "%s/gpg.conf", home);
    FILE *f = fopen(conf, "w");
    if (f) {
        fputs("no-auto-key-retrieve\ntrust-model always\n", f);
        fclose(f);
    }
    gpgme_ctx_t ctx;
    gpgme_error_t e = gpgme_new(&ctx);
    if (!e) e = gpgme_ctx_set_engine_info(ctx, GPGME_PROTOCOL_OpenPGP, NULL, home);
    if (e) die("context", e);
    gpgme_set_armor(ctx, 1);
    gpgme_data_t kd;
    gpgme_data_new_from_mem(&kd, key_data, key_len, 0);
    if ((e = gpgme_op_import(ctx, kd))) die("import", e);
    gpgme_data_release(kd);
    gpgme_import_result_t ir = gpgme_op_import_result(ctx);
    if (!ir || !ir->imports) die("import", GPG_ERR_NO_PUBKEY);
    char fpr[128];
    snprintf(fpr, sizeof fpr, "%s", ir->imports->fpr);
    gpgme_key_t keys[2] = {NULL, NULL};
    if ((e = gpgme_get_key(ctx, fpr, &keys[0], 0))) die("get_key", e);
    pthread_barrier_wait(&ready);
    double end = now() + seconds;
    while (now() < end) {
        double t0 = now();
        gpgme_data_t in, out;
        gpgme_data_new_from_mem(&in, message, message_len, 0);
        gpgme_data_new(&out);
        if ((e = gpgme_op_encrypt(ctx, keys, GPGME_ENCRYPT_ALWAYS_TRUST, in, out)))
            die("encrypt", e);
        size_t olen;
        char *armor = gpgme_data_release_and_get_mem(out, &olen);
        gpgme_free(armor);
        gpgme_data_release(in);
        pthread_mutex_lock(&lock);
        if (n_samples < MAX_SAMPLES) samples[n_samples++] = (now() - t0) * 1000;
        pthread_mutex_unlock(&lock);
    }
    gpgme_key_unref(keys[0]);
    gpgme_release(ctx);
    nftw(home, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return NULL;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: gpgme_loop KEYFILE MESSAGEFILE THREADS SECONDS\n");
        return 2;
    }
    gpgme_check_version(NULL);
    key_data = slurp(argv[1], &key_len);
    message = slurp(argv[2], &message_len);
    int threads = (int)strtol(argv[3], NULL, 10);
    seconds = strtod(argv[4], NULL);
    if (!key_data || !message || threads < 1 || threads > 64 || seconds <= 0) return 2;
    pthread_t tid[64];
    pthread_barrier_init(&ready, NULL, (unsigned)threads + 1);
    for (int i = 0; i < threads; i++)
        pthread_create(&tid[i], NULL, run, NULL);
    pthread_barrier_wait(&ready);
    double t0 = now();
    for (int i = 0; i < threads; i++)
        pthread_join(tid[i], NULL);
    double took = now() - t0;
    qsort(samples, n_samples, sizeof samples[0], by_value);
    printf("{\"threads\":%d,\"encryptions\":%u,\"seconds\":%.2f,\"rate\":%.1f,"
           "\"p50_ms\":%.1f,\"p99_ms\":%.1f}\n",
           threads, n_samples, took, n_samples / took, n_samples ? samples[n_samples / 2] : 0,
           n_samples ? samples[n_samples * 99 / 100] : 0);
    return 0;
}
