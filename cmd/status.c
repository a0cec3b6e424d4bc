/* The status page (GET / on the metrics port): one self-contained HTML page,
 * rendered here, no scripts and no external assets, that refreshes itself.
 * It shows the queue depth by state over the last minutes (sampled by this
 * process), the destinations with the most queued jobs and their oldest,
 * the newest bounces, the share of the last ten minutes' recipients by the
 * kind of copy they got (cluster-wide, counted in Redis), and the key
 * directory: its size and what in it expires within STATUS_EXPIRY_DAYS. */
#include "cmd/cmd.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *const state_names[4] = {"due", "scheduled", "leased", "held"};
static const char *const state_colours[4] = {"#2f7ed8", "#8bbc21", "#f28f43", "#c42525"};

static void sample_of(status_sample_t *s, const queue_stats_t *st, int64_t now_ms)
{
    s->at_ms = now_ms;
    const long long jobs[4] = {st->due_now, st->scheduled, st->leased, st->held};
    memcpy(s->jobs, jobs, sizeof jobs);
    s->messages = st->messages;
    s->oldest_s = st->oldest_ms < 0 ? 0 : (double)(st->now_ms - st->oldest_ms) / 1000.0;
}

void status_history_add(status_history_t *h, const queue_stats_t *st, int64_t now_ms)
{
    sample_of(&h->samples[h->next], st, now_ms);
    h->next = (h->next + 1) % STATUS_SAMPLES;
    if (h->n < STATUS_SAMPLES) h->n++;
}

/* The i-th sample, oldest first. */
static const status_sample_t *sample(const status_history_t *h, unsigned i)
{
    return &h->samples[(h->next + STATUS_SAMPLES - h->n + i) % STATUS_SAMPLES];
}

static void html(buf_t *out, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<':
            buf_printf(out, "&lt;");
            break;
        case '>':
            buf_printf(out, "&gt;");
            break;
        case '&':
            buf_printf(out, "&amp;");
            break;
        case '"':
            buf_printf(out, "&quot;");
            break;
        case '\'':
            buf_printf(out, "&#39;");
            break;
        default:
            buf_append(out, s, 1);
        }
    }
}

static void clock_text(int64_t ms, char *out, size_t len)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, len, "%H:%M:%S", &tm);
}

/* "3 s", "4 min", "2 h 5 min", "3 d 4 h" */
static void age_text(double s, char *out, size_t len)
{
    long v = (long)s;
    if (v < 60)
        snprintf(out, len, "%ld s", v);
    else if (v < 3600)
        snprintf(out, len, "%ld min", v / 60);
    else if (v < 86400)
        snprintf(out, len, "%ld h %ld min", v / 3600, v % 3600 / 60);
    else
        snprintf(out, len, "%ld d %ld h", v / 86400, v % 86400 / 3600);
}

static const char style[] =
    "body{font:15px/1.4 system-ui,sans-serif;margin:24px auto;max-width:980px;color:#222;"
    "padding:0 16px}h1{font-size:22px;margin:0 0 4px}h1 small{font-weight:normal;color:#777;"
    "font-size:14px}h2{font-size:17px;margin:28px 0 8px}.cards{display:flex;gap:12px;"
    "flex-wrap:wrap;margin-top:16px}.card{border:1px solid #ddd;border-radius:6px;"
    "padding:10px 14px;min-width:110px}.card b{display:block;font-size:24px}"
    ".card span{color:#666;font-size:13px}table{border-collapse:collapse;width:100%}"
    "th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eee;font-size:14px}"
    "th{color:#555;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".legend i{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}"
    ".none{color:#888}code{font-size:13px}svg{border:1px solid #eee;border-radius:4px}";

static void render_cards(buf_t *out, const status_sample_t *now)
{
    buf_printf(out, "<section class=cards>");
    for (int i = 0; i < 4; i++)
        buf_printf(out, "<div class=card><b id=%s>%lld</b><span>jobs %s</span></div>",
                   state_names[i], now ? now->jobs[i] : 0, state_names[i]);
    char age[32];
    age_text(now ? now->oldest_s : 0, age, sizeof age);
    buf_printf(out,
               "<div class=card><b id=messages>%lld</b><span>messages queued</span></div>"
               "<div class=card><b id=oldest>%s</b><span>oldest message</span></div></section>",
               now ? now->messages : 0, age);
}

/* Stacked bars, one per sample, drawn here as SVG: no script needed. */
static void render_chart(buf_t *out, const status_history_t *h)
{
    const int width = 940, height = 160;
    long long top = 1;
    for (unsigned i = 0; i < h->n; i++) {
        const status_sample_t *s = sample(h, i);
        long long sum = s->jobs[0] + s->jobs[1] + s->jobs[2] + s->jobs[3];
        if (sum > top) top = sum;
    }
    buf_printf(out,
               "<svg width=%d height=%d viewBox=\"0 0 %d %d\" role=img "
               "aria-label=\"queue depth by state\">",
               width, height + 20, width, height + 20);
    double bar = (double)width / STATUS_SAMPLES;
    for (unsigned i = 0; i < h->n; i++) {
        const status_sample_t *s = sample(h, i);
        double x = (STATUS_SAMPLES - h->n + i) * bar, y = height;
        for (int k = 0; k < 4; k++) {
            double hgt = (double)s->jobs[k] * (height - 10) / (double)top;
            if (hgt <= 0) continue;
            y -= hgt;
            buf_printf(out, "<rect x=%.1f y=%.1f width=%.1f height=%.1f fill=\"%s\"/>", x + 1, y,
                       bar - 2, hgt, state_colours[k]);
        }
    }
    buf_printf(out, "<text x=4 y=%d font-size=12 fill=\"#777\">max %lld jobs</text></svg>",
               height + 16, top);
    buf_printf(out, "<div class=legend>");
    for (int k = 0; k < 4; k++)
        buf_printf(out, "<i style=\"background:%s\"></i>%s", state_colours[k], state_names[k]);
    buf_printf(out, "</div>");
}

static void render_history(buf_t *out, const status_history_t *h)
{
    buf_printf(out, "<table><tr><th>time (UTC)</th><th>due</th><th>scheduled</th><th>leased</th>"
                    "<th>held</th><th>messages</th></tr>");
    unsigned shown = h->n < 6 ? h->n : 6; /* the newest, as figures */
    for (unsigned i = 0; i < shown; i++) {
        const status_sample_t *s = sample(h, h->n - 1 - i);
        char when[16];
        clock_text(s->at_ms, when, sizeof when);
        buf_printf(out, "<tr><td>%s</td>", when);
        for (int k = 0; k < 4; k++)
            buf_printf(out, "<td class=n>%lld</td>", s->jobs[k]);
        buf_printf(out, "<td class=n>%lld</td></tr>", s->messages);
    }
    buf_printf(out, "</table>");
}

static void render_destinations(buf_t *out, const queue_report_t *r, int64_t now_ms)
{
    if (!r || r->n_dests == 0) {
        buf_printf(out, "<p class=none>No queued jobs.</p>");
        return;
    }
    buf_printf(out, "<table id=destinations><tr><th>destination</th><th>queued jobs</th>"
                    "<th>oldest</th></tr>");
    for (unsigned i = 0; i < r->n_dests && i < 15; i++) {
        const queue_destination_t *d = &r->dests[i];
        char age[32] = "?";
        if (d->oldest_ms) age_text((double)(now_ms - d->oldest_ms) / 1000.0, age, sizeof age);
        buf_printf(out, "<tr><td>");
        html(out, d->domain);
        buf_printf(out, "</td><td class=n>%lld</td><td class=n>%s</td></tr>", d->jobs, age);
    }
    buf_printf(out, "</table>");
}

static void render_failures(buf_t *out, const queue_report_t *r)
{
    if (!r || r->n_failures == 0) {
        buf_printf(out, "<p class=none>No recent bounces.</p>");
        return;
    }
    buf_printf(out, "<table id=bounces><tr><th>time (UTC)</th><th>message</th><th>recipient</th>"
                    "<th></th><th>reply</th></tr>");
    for (unsigned i = 0; i < r->n_failures; i++) {
        const queue_failure_t *f = &r->failures[i];
        char when[16];
        clock_text(f->ms, when, sizeof when);
        buf_printf(out, "<tr><td>%s</td><td><code>%.12s</code></td><td>", when, f->mid);
        /* The page is as discreet as the logs ([log] redact_addresses). */
        char rcpt[LOG_SAFE_MAX], detail[LOG_SAFE_MAX];
        html(out, log_redacting() ? log_addr(f->rcpt, rcpt) : f->rcpt);
        buf_printf(out, "</td><td>%s</td><td>", f->event);
        html(out, log_redacting() ? log_text(f->detail, detail) : f->detail);
        buf_printf(out, "</td></tr>");
    }
    buf_printf(out, "</table>");
}

static const char *const copy_ids[QUEUE_COPY_KINDS] = {"openpgp", "smime", "passthrough", "plain"};
static const char *const copy_names[QUEUE_COPY_KINDS] = {
    "OpenPGP (PGP/MIME)", "S/MIME", "passthrough (encrypted by the sender)", "plain"};

/* "50%", "33.3%": a share of total, to one decimal where it has one. */
static void share_text(long long part, long long total, char *out, size_t len)
{
    long long tenths = total ? (part * 1000 + total / 2) / total : 0;
    if (tenths % 10)
        snprintf(out, len, "%lld.%lld%%", tenths / 10, tenths % 10);
    else
        snprintf(out, len, "%lld%%", tenths / 10);
}

static void render_copies(buf_t *out, const queue_report_t *r)
{
    long long total = 0;
    for (int k = 0; r && k < QUEUE_COPY_KINDS; k++)
        total += r->copies[k];
    if (!total) {
        buf_printf(out, "<p class=none>No mail stored in the last ten minutes.</p>");
        return;
    }
    buf_printf(out, "<table id=copies><tr><th>copy</th><th>recipients</th><th>share</th></tr>");
    for (int k = 0; k < QUEUE_COPY_KINDS; k++) {
        char share[48];
        share_text(r->copies[k], total, share, sizeof share);
        buf_printf(out,
                   "<tr><td>%s</td><td class=n id=copies_%s>%lld</td>"
                   "<td class=n id=share_%s>%s</td></tr>",
                   copy_names[k], copy_ids[k], r->copies[k], copy_ids[k], share);
    }
    buf_printf(out, "<tr><th>all</th><td class=n id=copies_all>%lld</td><td></td></tr></table>",
               total);
}

static void render_directory(buf_t *out, const queue_key_summary_t *k)
{
    buf_printf(out,
               "<section class=cards><div class=card><b id=keys_openpgp>%lld</b>"
               "<span>OpenPGP keys</span></div><div class=card><b id=keys_smime>%lld</b>"
               "<span>S/MIME certificates</span></div><div class=card><b id=keys_expired>%lld"
               "</b><span>expired</span></div></section>",
               k->indexed[0], k->indexed[1], k->expired);
    long long unindexed = k->stored - k->indexed[0] - k->indexed[1];
    if (unindexed > 0)
        buf_printf(out,
                   "<p class=none>%lld stored before the expiry index are being filed in it: "
                   "counted once the next page is made.</p>",
                   unindexed);
}

/* A key's addresses, LF-separated as stored, as a comma-separated list. */
static void render_addresses(buf_t *out, const char *addrs)
{
    char copy[sizeof((queue_expiring_t *)0)->addresses];
    snprintf(copy, sizeof copy, "%s", addrs);
    const char *sep = "";
    for (char *save = NULL, *a = strtok_r(copy, "\n", &save); a; a = strtok_r(NULL, "\n", &save)) {
        char safe[LOG_SAFE_MAX];
        buf_printf(out, "%s", sep);
        html(out, log_redacting() ? log_addr(a, safe) : a);
        sep = ", ";
    }
}

static void render_expiring(buf_t *out, const queue_key_summary_t *k, int64_t now_ms)
{
    if (!k->n_soon) {
        buf_printf(out, "<p class=none>Nothing expires within %d days.</p>", STATUS_EXPIRY_DAYS);
        return;
    }
    buf_printf(out, "<table id=expiring><tr><th>expires (UTC)</th><th>in</th><th>method</th>"
                    "<th>addresses</th><th>id</th></tr>");
    for (unsigned i = 0; i < k->n_soon; i++) {
        const queue_expiring_t *e = &k->soon[i];
        time_t t = (time_t)e->expires;
        struct tm tm;
        gmtime_r(&t, &tm);
        char date[32], left[32];
        strftime(date, sizeof date, "%Y-%m-%d %H:%M", &tm);
        age_text((double)e->expires - (double)now_ms / 1000.0, left, sizeof left);
        buf_printf(out, "<tr><td>%s</td><td class=n>%s</td><td>%s</td><td>", date, left,
                   e->smime ? "S/MIME" : "OpenPGP");
        render_addresses(out, e->addresses);
        buf_printf(out, "</td><td><code>");
        html(out, e->id);
        buf_printf(out, "</code></td></tr>");
    }
    buf_printf(out, "</table>");
    if (k->expiring > k->n_soon)
        buf_printf(out, "<p class=none>and %lld more: <code>sealpost keys list</code></p>",
                   k->expiring - k->n_soon);
}

int status_render(buf_t *out, const char *host, const status_history_t *h, const queue_report_t *r,
                  const char *err, int64_t now_ms)
{
    char when[16];
    clock_text(now_ms, when, sizeof when);
    buf_printf(out, "<!doctype html><html lang=en><head><meta charset=utf-8>"
                    "<meta http-equiv=refresh content=10><meta name=viewport "
                    "content=\"width=device-width\"><title>sealpost ");
    html(out, host);
    buf_printf(out, "</title><style>%s</style></head><body><h1>sealpost <small>", style);
    html(out, host);
    buf_printf(out, " · %s · %s UTC, refreshes every 10 s</small></h1>", SEALPOST_VERSION, when);
    if (err) {
        buf_printf(out, "<p class=none>Redis could not be read: ");
        html(out, err);
        buf_printf(out, "</p>");
    }
    /* The figures of the moment; without them, the last sample. */
    status_sample_t now;
    if (r) sample_of(&now, &r->stats, now_ms);
    render_cards(out, r ? &now : h->n ? sample(h, h->n - 1) : NULL);
    buf_printf(out, "<h2>Queue depth, last %d minutes</h2>", STATUS_SAMPLES * STATUS_SAMPLE_S / 60);
    render_chart(out, h);
    render_history(out, h);
    buf_printf(out, "<h2>Top destinations</h2>");
    render_destinations(out, r, now_ms);
    buf_printf(out, "<h2>Recent bounces</h2>");
    render_failures(out, r);
    buf_printf(out, "<h2>Recipients by copy, last ten minutes</h2>");
    render_copies(out, r);
    if (r) {
        buf_printf(out, "<h2>Key directory</h2>");
        render_directory(out, &r->keys);
        buf_printf(out, "<h2>Expiring within %d days</h2>", STATUS_EXPIRY_DAYS);
        render_expiring(out, &r->keys, now_ms);
    }
    return buf_printf(out, "<p class=none>Metrics: <a href=\"/metrics\">/metrics</a> · "
                           "<a href=\"/readyz\">/readyz</a></p></body></html>\n");
}
