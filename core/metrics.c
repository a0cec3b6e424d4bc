/* The process's metrics, written as Prometheus text (exposition format
 * 0.0.4). Series are registered once, at start, and updated by pointer from
 * the event loop thread, so an update is one addition, with no lookup and
 * no lock. */
#include "core/core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct metric {
    const char *family;
    const char *help;
    bool counter;
    char labels[160]; /* 'reason="relay_denied"', or "" */
    double value;
    metric_t *next;
};

static metric_t *registry, **registry_tail = &registry;

static metric_t *metric_new(const char *name, const char *help, const char *labels, bool counter)
{
    for (metric_t *m = registry; m; m = m->next) /* registered twice: the same series */
        if (!strcmp(m->family, name) && !strcmp(m->labels, labels)) return m;
    metric_t *m = calloc(1, sizeof *m);
    if (!m) abort(); /* at start only: nothing sensible to go on with */
    m->family = name;
    m->help = help;
    m->counter = counter;
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
    return metric_new(name, help, labels, true);
}

metric_t *metric_gauge(const char *name, const char *help, const char *labels)
{
    return metric_new(name, help, labels, false);
}

void metric_add(metric_t *m, double v)
{
    m->value += v;
}

void metric_set(metric_t *m, double v)
{
    m->value = v;
}

double metric_value(const metric_t *m)
{
    return m->value;
}

int metrics_render(buf_t *out)
{
    const char *family = NULL;
    for (const metric_t *m = registry; m; m = m->next) {
        if (!family || strcmp(family, m->family)) {
            family = m->family;
            buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", m->family, m->help, m->family,
                       m->counter ? "counter" : "gauge");
        }
        /* %.17g keeps a counter exact up to 2^53. */
        buf_printf(out, "%s%s%s%s %.17g\n", m->family, m->labels[0] ? "{" : "", m->labels,
                   m->labels[0] ? "}" : "", m->value);
    }
    return out->data || out->len == 0 ? 0 : -1;
}
