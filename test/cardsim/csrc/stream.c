/* kilnsim streams and the latency model: axclrtCreateStream / Destroy / Synchronize(WithTimeout),
 * axclrtMemcpyAsync, axclrtEngineExecuteAsync; the cost of a synchronous round trip to the card;
 * pinned host memory (axclrtMallocHost) vs unpinned transfers; the alignment rule of offset binds;
 * and call counters for benchmarks (kilnsim_stats). */
#define _GNU_SOURCE
#include "sim.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

extern pthread_mutex_t g_mu;
simdev *sim_need_ctx(axclError *err);

/* stream error codes (axcl_rt_stream.h: sub-module 0x03) */
#define SUB_STREAM 0x03
#define E_STREAM_NULL SIM_ERR(SUB_STREAM, ID_NULL_POINTER)   /* 0x80300302 */
#define E_STREAM_ILLEGAL SIM_ERR(SUB_STREAM, ID_ILLEGAL_PARAM) /* 0x80300303 */
#define E_STREAM_NO_MEMORY SIM_ERR(SUB_STREAM, ID_NO_MEMORY) /* 0x80300307 */
#define E_STREAM_SYNC_TIMEOUT SIM_ERR(SUB_STREAM, 0x83)      /* 0x80300383 */

/* ---------------------------------------------------------------- latency model + counters */

simlat g_lat;
static simstats g_stats;

void sim_lat_defaults(void) {
    memset(&g_lat, 0, sizeof g_lat);
    g_lat.bind_align = 2048;
}

/* sim_lat_opt sets one latency key; 0 when it is one of ours. Caller holds g_mu. */
int sim_lat_opt(const char *k, double d) {
    if (!strcmp(k, "sync_us")) g_lat.sync_us = d < 0 ? 0 : (long)d;
    else if (!strcmp(k, "unpinned_us")) g_lat.unpinned_us = d < 0 ? 0 : (long)d;
    else if (!strcmp(k, "bind_align")) g_lat.bind_align = d < 0 ? 0 : (uint64_t)d;
    else return -1;
    return 0;
}

/* sleep_us waits us µs: it sleeps to 150 µs before the end, then yields until it (a plain sleep
 * overshoots by ~0.1 ms, which would swamp a 457 µs round trip). */
static void sleep_us(long us) {
    if (us <= 0) return;
    double until = sim_now() + (double)us * 1e-6;
    struct timespec ts;
    for (double left = until - sim_now(); left > 0; left = until - sim_now()) {
        if (left < 150e-6) {
            sched_yield();
            continue;
        }
        left -= 150e-6;
        ts.tv_sec = (time_t)left;
        ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
        nanosleep(&ts, NULL);
    }
}

/* sim_round_trip charges one synchronous call that waits for the card (caller does not hold g_mu):
 * what = 'x' execute, 'c' copy or memset, 's' stream or device sync. */
void sim_round_trip(char what) {
    pthread_mutex_lock(&g_mu);
    g_stats.sync_calls++;
    if (what == 'x') g_stats.sync_executes++;
    else if (what == 'c') g_stats.sync_copies++;
    else g_stats.stream_syncs++;
    long us = g_lat.sync_us;
    pthread_mutex_unlock(&g_mu);
    sleep_us(us);
}

void sim_count_bind(void) { g_stats.binds++; } /* caller holds g_mu */

EXPORT int kilnsim_stats(uint64_t *out, int n) {
    uint64_t v[] = {g_stats.sync_calls, g_stats.sync_executes, g_stats.sync_copies, g_stats.stream_syncs,
                    g_stats.async_executes, g_stats.async_copies, g_stats.binds, g_stats.unpinned, g_stats.pinned};
    int k = (int)(sizeof v / sizeof v[0]);
    if (!out || n < 0) return k;
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < n && i < k; i++) out[i] = v[i];
    pthread_mutex_unlock(&g_mu);
    return k < n ? k : n;
}

EXPORT void kilnsim_reset_stats(void) {
    pthread_mutex_lock(&g_mu);
    memset(&g_stats, 0, sizeof g_stats);
    pthread_mutex_unlock(&g_mu);
}

/* ---------------------------------------------------------------- pinned host memory */

typedef struct pinned {
    uintptr_t p;
    size_t n;
    struct pinned *next;
} pinned;
static pinned *g_pinned;

void sim_pin_add(void *p, size_t n) { /* caller holds g_mu */
    pinned *e = malloc(sizeof *e);
    if (!e) return;
    *e = (pinned){(uintptr_t)p, n, g_pinned};
    g_pinned = e;
}

int sim_pin_del(void *p) { /* caller holds g_mu; 0 when p came from MallocHost */
    for (pinned **pp = &g_pinned; *pp; pp = &(*pp)->next)
        if ((*pp)->p == (uintptr_t)p) {
            pinned *e = *pp;
            *pp = e->next;
            free(e);
            return 0;
        }
    return -1;
}

/* sim_host_transfer counts a host<->device transfer of [p, p+n) and returns the extra cost of an
 * unpinned host buffer (µs): the runtime pins pages per transfer. Caller holds g_mu. */
long sim_host_transfer(const void *p, size_t n) {
    uintptr_t a = (uintptr_t)p;
    for (pinned *e = g_pinned; e; e = e->next)
        if (a >= e->p && a - e->p <= e->n && n <= e->n - (a - e->p)) {
            g_stats.pinned++;
            return 0;
        }
    g_stats.unpinned++;
    return g_lat.unpinned_us;
}

/* sim_check_bind: the alignment rule of a buffer bound at an offset into an allocation. off is
 * the offset from the allocation's start. Caller holds g_mu. */
axclError sim_check_bind(uint64_t off, int isin, uint32_t index) {
    if (off == 0 || g_lat.bind_align == 0 || off % g_lat.bind_align == 0) return 0;
    return sim_fail(E_ENGINE_ILLEGAL, "%s %u: buffer bound at offset %llu into its allocation, not a multiple of %llu bytes",
                    isin ? "input" : "output", index, (unsigned long long)off, (unsigned long long)g_lat.bind_align);
}

/* ---------------------------------------------------------------- streams */

#define STREAM_MAGIC 0x5354524du

typedef struct simop {
    char kind; /* 'c' memcpy, 'x' execute */
    void *dst;
    const void *src;
    size_t n;
    int32_t mkind;
    uint64_t id, ctx;
    uint32_t group;
    void *io;
} simop;

typedef struct simstream {
    uint32_t magic;
    simdev *dev;
    simop *ops;
    int nops, cap;
    struct simstream *next;
} simstream;

static simstream *g_streams;

static __attribute__((unused)) simstream *find_stream(void *s) {
    for (simstream *x = g_streams; x; x = x->next)
        if (x == s && x->magic == STREAM_MAGIC) return x;
    return NULL;
}

/* sim_streams_reset frees every stream (axclFinalize). Caller holds g_mu. */
void sim_streams_reset(void) {
    while (g_streams) {
        simstream *s = g_streams;
        g_streams = s->next;
        s->magic = 0;
        free(s->ops);
        free(s);
    }
    while (g_pinned) {
        pinned *e = g_pinned;
        g_pinned = e->next;
        free(e);
    }
}

#ifndef KILNSIM_NO_STREAMS /* a runtime without streams: kiln runs everything synchronously */
EXPORT axclError axclrtCreateStream(void **stream) {
    if (!stream) return sim_fail(E_STREAM_NULL, "null stream out-param");
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = sim_need_ctx(&r);
    if (d) {
        simstream *s = calloc(1, sizeof *s);
        if (!s) r = sim_fail(E_STREAM_NO_MEMORY, "host out of memory");
        else {
            s->magic = STREAM_MAGIC;
            s->dev = d;
            s->next = g_streams;
            g_streams = s;
            *stream = s;
        }
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

static axclError destroy(void *stream) {
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simstream **pp = &g_streams;
    while (*pp && *pp != stream) pp = &(*pp)->next;
    if (!*pp) r = sim_fail(E_STREAM_ILLEGAL, "%p is not a stream", stream);
    else {
        simstream *s = *pp;
        *pp = s->next;
        s->magic = 0;
        free(s->ops); /* queued work that never ran is dropped */
        free(s);
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtDestroyStream(void *stream) { return destroy(stream); }
EXPORT axclError axclrtDestroyStreamForce(void *stream) { return destroy(stream); }

static axclError enqueue(void *stream, simop op) {
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = sim_need_ctx(&r);
    simstream *s = d ? find_stream(stream) : NULL;
    if (d && !s) r = sim_fail(E_STREAM_ILLEGAL, "%p is not a stream", stream);
    else if (s && s->dev != d) r = sim_fail(E_STREAM_ILLEGAL, "stream %p belongs to device %d, thread is bound to %d", stream, s->dev->id, d->id);
    else if (s && d->lost) r = sim_fail(op.kind == 'x' ? E_ENGINE_LOST : E_MEM_LOST, "device %d is lost", d->id);
    else if (s) {
        if (s->nops == s->cap) {
            int cap = s->cap ? s->cap * 2 : 64;
            simop *ops = realloc(s->ops, (size_t)cap * sizeof *ops);
            if (!ops) r = sim_fail(E_STREAM_NO_MEMORY, "host out of memory");
            else s->ops = ops, s->cap = cap;
        }
        if (!r) {
            s->ops[s->nops++] = op;
            if (op.kind == 'x') g_stats.async_executes++;
            else g_stats.async_copies++;
        }
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtMemcpyAsync(void *dst, const void *src, size_t n, int32_t kind, void *stream) {
    if (!dst || !src) return sim_fail(E_MEM_NULL, "null pointer");
    if (kind < 0 || kind > 3) return sim_fail(kind <= 5 ? E_MEM_UNSUPPORT : E_MEM_ILLEGAL, "memcpy kind %d", kind);
    return enqueue(stream, (simop){.kind = 'c', .dst = dst, .src = src, .n = n, .mkind = kind});
}

EXPORT axclError axclrtEngineExecuteAsync(uint64_t id, uint64_t ctx, uint32_t group, void *io, void *stream) {
    return enqueue(stream, (simop){.kind = 'x', .id = id, .ctx = ctx, .group = group, .io = io});
}


/* sync runs the stream's queued work in order (the card runs it meanwhile; the simulator runs it
 * when the host waits) and returns the first error; work after a failed one is dropped. */
static axclError sync(void *stream, int32_t timeout_ms) {
    sim_round_trip('s');
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = sim_need_ctx(&r);
    simstream *s = d ? find_stream(stream) : NULL;
    if (d && !s) r = sim_fail(E_STREAM_ILLEGAL, "%p is not a stream", stream);
    simop *ops = NULL;
    int n = 0;
    if (s) { /* take the queue: the stream may be destroyed by another call meanwhile */
        ops = s->ops, n = s->nops;
        s->ops = NULL, s->nops = s->cap = 0;
    }
    pthread_mutex_unlock(&g_mu);
    double start = sim_now();
    for (int i = 0; i < n && !r; i++) {
        simop *o = &ops[i];
        if (o->kind == 'c') {
            r = sim_memcpy(o->dst, o->src, o->n, o->mkind);
            continue;
        }
        long left = 0;
        if (timeout_ms >= 0) {
            left = timeout_ms - (long)((sim_now() - start) * 1000.0);
            if (left <= 0) {
                r = sim_fail(E_STREAM_SYNC_TIMEOUT, "stream %p: no completion within %d ms", stream, timeout_ms);
                break;
            }
        }
        t_hang_deadline_ms = left;
        r = sim_execute(o->id, o->ctx, o->group, o->io);
        t_hang_deadline_ms = 0;
        if (r == E_ENGINE_TIMEOUT && timeout_ms >= 0)
            r = sim_fail(E_STREAM_SYNC_TIMEOUT, "stream %p: no completion within %d ms", stream, timeout_ms);
    }
    free(ops);
    return r;
}

EXPORT axclError axclrtSynchronizeStream(void *stream) { return sync(stream, -1); }
EXPORT axclError axclrtSynchronizeStreamWithTimeout(void *stream, int32_t timeout) { return sync(stream, timeout); }
#endif /* KILNSIM_NO_STREAMS */
