/* The process's metrics, written as Prometheus text (exposition format
 * 0.0.4). Series are registered once, at start, and updated by pointer from
 * the event loop thread, so an update is one addition, with no lookup and
 * no lock. */
#include "core/core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum metric_kind { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM };

struct metric {
    const char *family;
    const char *help;
    enum metric_kind kind;
    char labels[320];     /* 'reason="relay_denied"', or ""; room for a 253-octet domain */
    double value;         /* counters and gauges; a histogram's sum */
    const double *bounds; /* a histogram's bucket upper bounds, ascending */
    unsigned n_bounds;
    uint64_t *buckets; /* observations per bucket (not cumulative), and +Inf last */
    uint64_t count;
    metric_t *next;
};

static metric_t *registry, **registry_tail = &registry;

static metric_t *metric_new(const char *name, const char *help, const char *labels,
                            enum metric_kind kind)
{
    for (metric_t *m = registry; m; m = m->next) /* registered twice: the same series */
        if (!strcmp(m->family, name) && !strcmp(m->labels, labels)) return m;
    metric_t *m = calloc(1, sizeof *m);
    if (!m) abort(); /* at start only: nothing sensible to go on with */
    m->family = name;
    m->help = help;
    m->kind = kind;
    snprintf(m->labels, sizeof m->labels, "%s", labels);
    /* A family's series stay together, in the order first seen. */
    metric_t **at = registry_tail;
    for (metric_t **p = &registry; *p; p = &(*p)->next)
        if (!strcmp((*p)->family, name)) at = &(*p)->next;
    m->next = *at;
    *at = m;
    if (!m->next) registry_tail = &m->next;
    return m;
}

metric_t *metric_counter(const char *name, const char *help, const char *labels)
{
    return metric_new(name, help, labels, KIND_COUNTER);
}

metric_t *metric_gauge(const char *name, const char *help, const char *labels)
{
    return metric_new(name, help, labels, KIND_GAUGE);
}

void metric_counters(metric_t **out, const char *name, const char *help, const char *label,
                     const char *const *values, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        char labels[128];
        snprintf(labels, sizeof labels, "%s=\"%s\"", label, values[i]);
        out[i] = metric_counter(name, help, labels);
    }
}

metric_t *metric_histogram(const char *name, const char *help, const char *labels,
                           const double *bounds, unsigned n_bounds)
{
    metric_t *m = metric_new(name, help, labels, KIND_HISTOGRAM);
    if (!m->buckets) {
        m->bounds = bounds;
        m->n_bounds = n_bounds;
        m->buckets = calloc(n_bounds + 1, sizeof *m->buckets);
        if (!m->buckets) abort();
    }
    return m;
}

void metric_observe(metric_t *m, double v)
{
    unsigned i = 0;
    while (i < m->n_bounds && v > m->bounds[i])
        i++;
    m->buckets[i]++;
    m->count++;
    m->value += v;
}

/* name_bucket{labels,le="x"} ... name_sum, name_count: the buckets cumulative. */
static void render_histogram(const metric_t *m, buf_t *out)
{
    const char *sep = m->labels[0] ? "," : "";
    uint64_t cumulative = 0;
    for (unsigned i = 0; i <= m->n_bounds; i++) {
        cumulative += m->buckets[i];
        if (i < m->n_bounds)
            buf_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", m->family, m->labels, sep,
                       m->bounds[i], (unsigned long long)cumulative);
        else
            buf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", m->family, m->labels, sep,
                       (unsigned long long)cumulative);
    }
    const char *open = m->labels[0] ? "{" : "", *close = m->labels[0] ? "}" : "";
    buf_printf(out, "%s_sum%s%s%s %.17g\n%s_count%s%s%s %llu\n", m->family, open, m->labels, close,
               m->value, m->family, open, m->labels, close, (unsigned long long)m->count);
}

void metric_add(metric_t *m, double v)
{
    m->value += v;
}

void metric_set(metric_t *m, double v)
{
    m->value = v;
}

int metrics_render(buf_t *out)
{
    const char *family = NULL;
    for (const metric_t *m = registry; m; m = m->next) {
        if (!family || strcmp(family, m->family)) {
            static const char *const types[] = {"counter", "gauge", "histogram"};
            family = m->family;
            buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", m->family, m->help, m->family,
                       types[m->kind]);
        }
        if (m->kind == KIND_HISTOGRAM) {
            render_histogram(m, out);
            continue;
        }
        /* %.17g keeps a counter exact up to 2^53. */
        buf_printf(out, "%s%s%s%s %.17g\n", m->family, m->labels[0] ? "{" : "", m->labels,
                   m->labels[0] ? "}" : "", m->value);
    }
    return out->data || out->len == 0 ? 0 : -1;
}
