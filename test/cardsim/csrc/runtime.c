/* kilnsim runtime: init, devices, contexts (per OS thread), device memory, properties with a
 * thermal model, configuration and fault injection. */
#define _GNU_SOURCE
#include "sim.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

#define SIM_CFG_DEFAULTS {0, 0, 0, 40.0, 2.5, 0.05, "", 0, 300000, 7040ull << 20, 0}
simcfg g_cfg = SIM_CFG_DEFAULTS;

pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t g_cond = PTHREAD_COND_INITIALIZER;
uint64_t g_wake_gen; /* bumped by reset/finalize/set_faults: wakes hung executes */

int g_inited;
simdev g_devs[SIM_MAX_DEVICES];
int g_ndev;

static __thread simdev *t_dev;
static __thread void *t_ctx;
static __thread uint64_t t_ctx_serial; /* guards against a stale t_ctx whose address was reused */
static uint64_t g_ctx_serial;
static __thread char t_err[512];
__thread long t_hang_deadline_ms; /* stream.c: a hung execute inside a timed sync gives up after this */

/* ---------------------------------------------------------------- logging */

void sim_log(const char *fmt, ...) {
    if (!g_cfg.log) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("kilnsim: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

axclError sim_fail(axclError code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(t_err, sizeof t_err, "0x%08x: ", (uint32_t)code);
    vsnprintf(t_err + n, sizeof t_err - (size_t)n, fmt, ap);
    va_end(ap);
    if (g_cfg.log) fprintf(stderr, "kilnsim: %s\n", t_err);
    return code;
}

EXPORT const char *kilnsim_last_error(void) { return t_err; }

double sim_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- faults */

#define MAXF 32
static struct {
    int64_t fail_exec[MAXF], hang_exec[MAXF], lose_exec[MAXF], fail_load[MAXF], fail_malloc[MAXF];
    int nfe, nhe, nle, nfl, nfm;
    int64_t offline_exec[MAXF];
    int nof;
    int64_t exec_n, load_n, malloc_n;
} g_faults;

static int parse_faults(const char *s) {
    memset(&g_faults, 0, sizeof g_faults);
    if (s == NULL) return 0;
    char buf[1024];
    if (strlen(s) >= sizeof buf) return -1;
    strcpy(buf, s);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ", \t\n", &save); tok; tok = strtok_r(NULL, ", \t\n", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq) return -1;
        *eq = 0;
        char *end = NULL;
        errno = 0;
        long long n = strtoll(eq + 1, &end, 10);
        if (errno || end == eq + 1 || *end || n < 1) return -1;
        int64_t *arr;
        int *cnt;
        if (!strcmp(tok, "fail_execute")) arr = g_faults.fail_exec, cnt = &g_faults.nfe;
        else if (!strcmp(tok, "hang_execute")) arr = g_faults.hang_exec, cnt = &g_faults.nhe;
        else if (!strcmp(tok, "lose_device")) arr = g_faults.lose_exec, cnt = &g_faults.nle;
        else if (!strcmp(tok, "fail_load")) arr = g_faults.fail_load, cnt = &g_faults.nfl;
        else if (!strcmp(tok, "fail_malloc")) arr = g_faults.fail_malloc, cnt = &g_faults.nfm;
        else if (!strcmp(tok, "offline")) arr = g_faults.offline_exec, cnt = &g_faults.nof;
        else return -1;
        if (*cnt >= MAXF) return -1;
        arr[(*cnt)++] = n;
    }
    return 0;
}

static int hit(const int64_t *arr, int n, int64_t v) {
    for (int i = 0; i < n; i++)
        if (arr[i] == v) return 1;
    return 0;
}

/* sim_exec_fault is called with g_mu held at every execute; returns 0 or an error code. */
axclError sim_exec_fault(simdev *d) {
    int64_t n = ++g_faults.exec_n;
    if (hit(g_faults.offline_exec, g_faults.nof, n)) return sim_go_offline(d, n);
    axclError w = sim_wedge_exec(d);
    if (w) return w;
    if (hit(g_faults.fail_exec, g_faults.nfe, n)) return sim_fail(E_ENGINE_EXECUTE_FAIL, "fault: fail_execute=%lld", (long long)n);
    if (hit(g_faults.lose_exec, g_faults.nle, n)) {
        d->lost = 1;
        return sim_fail(E_ENGINE_LOST, "fault: lose_device=%lld: device %d lost", (long long)n, d->id);
    }
    if (hit(g_faults.hang_exec, g_faults.nhe, n)) {
        sim_log("fault: hang_execute=%lld: hanging", (long long)n);
        uint64_t gen = g_wake_gen;
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        long cap = g_cfg.hang_cap_ms;
        if (t_hang_deadline_ms > 0 && t_hang_deadline_ms < cap) cap = t_hang_deadline_ms;
        dl.tv_sec += cap / 1000;
        dl.tv_nsec += (cap % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) dl.tv_sec++, dl.tv_nsec -= 1000000000L;
        while (gen == g_wake_gen) {
            if (pthread_cond_timedwait(&g_cond, &g_mu, &dl) == ETIMEDOUT) break;
        }
        return sim_fail(E_ENGINE_TIMEOUT, "fault: hang_execute=%lld ended", (long long)n);
    }
    return 0;
}

axclError sim_load_fault(void) {
    int64_t n = ++g_faults.load_n;
    if (hit(g_faults.fail_load, g_faults.nfl, n)) return sim_fail(E_ENGINE_NO_MEMORY, "fault: fail_load=%lld", (long long)n);
    return 0;
}

static void wake_all(void) {
    g_wake_gen++;
    pthread_cond_broadcast(&g_cond);
}

EXPORT int kilnsim_set_faults(const char *spec) {
    pthread_mutex_lock(&g_mu);
    int r = parse_faults(spec);
    if (r) parse_faults(NULL);
    wake_all();
    pthread_mutex_unlock(&g_mu);
    return r;
}

/* ---------------------------------------------------------------- configuration */

static int set_opt(const char *k, const char *v) {
    char *end = NULL;
    if (!strcmp(k, "temp_file")) {
        if (strlen(v) >= sizeof g_cfg.temp_file) return -1;
        strcpy(g_cfg.temp_file, v);
        return 0;
    }
    if (!strcmp(k, "state_dir") || !strcmp(k, "load_log")) return sim_set_path(k, v);
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end) return -1;
    if (!strcmp(k, "exec_us")) g_cfg.exec_us = d < 0 ? 0 : (long)d;
    else if (!strcmp(k, "prefill_exec_us")) g_cfg.prefill_exec_us = d < 0 ? 0 : (long)d;
    else if (!strcmp(k, "text_exec_us")) g_cfg.text_exec_us = d < 0 ? 0 : (long)d;
    else if (!strcmp(k, "unet_exec_us")) g_cfg.unet_exec_us = d < 0 ? 0 : (long)d;
    else if (!strcmp(k, "vae_exec_us")) g_cfg.vae_exec_us = d < 0 ? 0 : (long)d;
    else if (!strcmp(k, "nocompute")) g_cfg.nocompute = d != 0;
    else if (!strcmp(k, "ambient_c")) g_cfg.ambient_c = d;
    else if (!strcmp(k, "heat_c_per_s")) g_cfg.heat_c_per_s = d;
    else if (!strcmp(k, "cool_per_s")) g_cfg.cool_per_s = d < 0 ? 0 : d;
    else if (!strcmp(k, "log")) g_cfg.log = d != 0;
    else if (!strcmp(k, "hang_cap_ms")) g_cfg.hang_cap_ms = d < 0 ? 0 : (long)d;
    else if (!strcmp(k, "cmm_mib")) g_cfg.cmm_bytes = (uint64_t)(d < 0 ? 0 : d) << 20;
    else if (!strcmp(k, "props_us")) g_cfg.props_us = d < 0 ? 0 : (long)d;
    else if (!strcmp(k, "reboot_ms")) g_cfg.reboot_ms = d < 0 ? 0 : (long)d;
    else if (!strcmp(k, "enum_delay_ms")) g_cfg.enum_delay_ms = d < 0 ? 0 : (long)d;
    else if (!strcmp(k, "load_order_drop")) g_cfg.load_order_drop = d != 0;
    else if (sim_lat_opt(k, d) == 0) {} /* stream.c: sync_us unpinned_us bind_align */
    else return -1;
    return 0;
}

/* kilnsim_config applies "key=value,key=value" (keys: exec_us prefill_exec_us text_exec_us unet_exec_us vae_exec_us nocompute ambient_c heat_c_per_s
 * cool_per_s temp_file log hang_cap_ms cmm_mib props_us). Returns 0, or -1 at the first bad entry. */
EXPORT int kilnsim_config(const char *spec) {
    if (!spec) return -1;
    char buf[2048];
    if (strlen(spec) >= sizeof buf) return -1;
    strcpy(buf, spec);
    pthread_mutex_lock(&g_mu);
    int r = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq) { r = -1; break; }
        *eq = 0;
        if (set_opt(tok, eq + 1)) { r = -1; break; }
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

static void env_opt(const char *env, const char *key) {
    const char *v = getenv(env);
    if (v && *v && set_opt(key, v)) fprintf(stderr, "kilnsim: ignoring bad %s=%s\n", env, v);
}

/* ---------------------------------------------------------------- thermal model */

static void thermal_advance(simdev *d, double now) {
    double dt = now - d->last_update;
    if (dt < 0) dt = 0;
    d->temp_c = g_cfg.ambient_c + (d->temp_c - g_cfg.ambient_c) * exp(-g_cfg.cool_per_s * dt) +
                g_cfg.heat_c_per_s * d->busy_pending;
    d->busy_pending = 0;
    d->last_update = now;
}

void sim_add_busy(simdev *d, double sec) {
    d->busy_pending += sec;
    d->busy_since_sample += sec;
    thermal_advance(d, sim_now());
}

EXPORT int kilnsim_set_temp_c(int c) {
    pthread_mutex_lock(&g_mu);
    double now = sim_now();
    for (int i = 0; i < g_ndev; i++) {
        thermal_advance(&g_devs[i], now);
        g_devs[i].temp_c = c;
    }
    pthread_mutex_unlock(&g_mu);
    return 0;
}

/* kilnsim_temp_mc returns the thermal model's temperature of device id in millidegrees (no file). */
EXPORT int kilnsim_temp_mc(int32_t id) {
    pthread_mutex_lock(&g_mu);
    int r = -1;
    for (int i = 0; i < g_ndev; i++)
        if (g_devs[i].id == id) {
            thermal_advance(&g_devs[i], sim_now());
            r = (int)lround(g_devs[i].temp_c * 1000.0);
        }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT int kilnsim_sizeof_props(void) { return (int)sizeof(axclrtDeviceProperties); }

/* ---------------------------------------------------------------- device memory */

/* Device addresses: 0x00D0 << 48 | slot << 34 | offset. Bits 48..55 make them non-canonical on
 * x86-64 and arm64 (even with top-byte-ignore), so a host dereference faults. */
#define ADDR_TAG 0x00D0000000000000ull
#define SLOT_SHIFT 34
#define NSLOTS 16384
#define OFF_MASK ((1ull << SLOT_SHIFT) - 1)

typedef struct {
    void *host;
    uint64_t size;
    simdev *dev;
    int used;
} memslot;

static memslot g_mem[NSLOTS];
static uint32_t g_next_slot = 1;

int sim_is_device_addr(uint64_t a) { return (a >> 48) == (ADDR_TAG >> 48); }

static memslot *slot_of(uint64_t a) {
    if (!sim_is_device_addr(a)) return NULL;
    uint64_t s = (a >> SLOT_SHIFT) & (NSLOTS - 1);
    if (s == 0 || !g_mem[s].used) return NULL;
    return &g_mem[s];
}

/* sim_resolve maps [addr, addr+len) of device memory to a host pointer. Caller holds g_mu. */
axclError sim_resolve(uint64_t addr, uint64_t len, void **host) {
    memslot *m = slot_of(addr);
    if (!m) return sim_fail(E_MEM_NOT_DEVICE, "0x%llx is not device memory", (unsigned long long)addr);
    uint64_t off = addr & OFF_MASK;
    if (off > m->size || len > m->size - off)
        return sim_fail(E_MEM_ILLEGAL, "0x%llx+%llu is past the end of a %llu-byte device buffer",
                        (unsigned long long)addr, (unsigned long long)len, (unsigned long long)m->size);
    *host = (char *)m->host + off;
    return 0;
}

uint64_t sim_cmm_free(simdev *d) { return d->cmm_used >= g_cfg.cmm_bytes ? 0 : g_cfg.cmm_bytes - d->cmm_used; }

static void release_device(simdev *d); /* frees memory and models of d */
void sim_engine_reset(void);             /* engine.c: frees every model, IO info and IO */

/* ---------------------------------------------------------------- contexts */

#define CTX_MAGIC 0x4b435458u
typedef struct simctx {
    uint32_t magic;
    simdev *dev;
    int implicit;
    uint64_t serial;
    struct simctx *next;
} simctx;
static simctx *g_ctxs;

static simctx *find_ctx(void *p) {
    for (simctx *c = g_ctxs; c; c = c->next)
        if (c == p && c->magic == CTX_MAGIC) return c;
    return NULL;
}

static simctx *new_ctx(simdev *d, int implicit) {
    simctx *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->magic = CTX_MAGIC;
    c->dev = d;
    c->implicit = implicit;
    c->serial = ++g_ctx_serial;
    c->next = g_ctxs;
    g_ctxs = c;
    return c;
}

static void free_ctxs_of(simdev *d) {
    simctx **pp = &g_ctxs;
    while (*pp) {
        simctx *c = *pp;
        if (d == NULL || c->dev == d) {
            *pp = c->next;
            c->magic = 0;
            free(c);
        } else {
            pp = &c->next;
        }
    }
}

/* sim_need_ctx: the thread rule. Caller holds g_mu. Returns the bound device or NULL with *err set. */
simdev *sim_need_ctx(axclError *err) {
    if (!g_inited) {
        *err = sim_fail(E_CONTEXT_NO_BIND, "axclInit has not been called");
        return NULL;
    }
    simctx *c = t_ctx ? find_ctx(t_ctx) : NULL;
    if (!c || c->serial != t_ctx_serial || !t_dev || t_dev->refcnt <= 0) {
        *err = sim_fail(E_CONTEXT_NO_BIND, "thread hasn't binded any context yet (thread rule: bind per OS thread)");
        return NULL;
    }
    return t_dev;
}

/* bound_dev returns the calling thread's device when its binding is still valid. */
static simdev *bound_dev(void) {
    if (!g_inited || !t_ctx) return NULL;
    simctx *c = find_ctx(t_ctx);
    if (!c || c->serial != t_ctx_serial || !t_dev || t_dev->refcnt <= 0) return NULL;
    return t_dev;
}

static simdev *find_dev(int32_t id) {
    for (int i = 0; i < g_ndev; i++)
        if (g_devs[i].id == id) return &g_devs[i];
    return NULL;
}

/* ---------------------------------------------------------------- init / finalize */

EXPORT axclError axclInit(const char *config) {
    (void)config;
    pthread_mutex_lock(&g_mu);
    if (g_inited) {
        pthread_mutex_unlock(&g_mu);
        return 0;
    }
    /* every axclInit starts from the defaults plus the environment, so settings of an earlier
     * init/finalize cycle in the same process (kilnsim_config, env) do not leak into this one */
    g_cfg = (simcfg)SIM_CFG_DEFAULTS;
    env_opt("KILN_SIM_EXEC_US", "exec_us");
    env_opt("KILN_SIM_PREFILL_EXEC_US", "prefill_exec_us");
    env_opt("KILN_SIM_NOCOMPUTE", "nocompute");
    env_opt("KILN_SIM_AMBIENT_C", "ambient_c");
    env_opt("KILN_SIM_HEAT_C_PER_S", "heat_c_per_s");
    env_opt("KILN_SIM_COOL_PER_S", "cool_per_s");
    env_opt("KILN_SIM_LOG", "log");
    env_opt("KILN_SIM_HANG_CAP_MS", "hang_cap_ms");
    env_opt("KILN_SIM_CMM_MIB", "cmm_mib");
    env_opt("KILN_SIM_PROPS_US", "props_us");
    sim_lat_defaults();
    env_opt("KILN_SIM_SYNC_US", "sync_us");
    env_opt("KILN_SIM_UNPINNED_US", "unpinned_us");
    env_opt("KILN_SIM_BIND_ALIGN", "bind_align");
    env_opt("KILN_SIM_REBOOT_MS", "reboot_ms");
    env_opt("KILN_SIM_ENUM_DELAY_MS", "enum_delay_ms");
    env_opt("KILN_SIM_STATE_DIR", "state_dir");
    env_opt("KILN_SIM_LOAD_LOG", "load_log");
    env_opt("KILN_SIM_LOAD_ORDER_DROP", "load_order_drop");
    const char *tf = getenv("KILN_SIM_TEMP_FILE");
    if (tf) set_opt("temp_file", tf);
    if (parse_faults(getenv("KILN_SIM_FAULTS"))) {
        parse_faults(NULL);
        pthread_mutex_unlock(&g_mu);
        return sim_fail(E_CONFIG_ILLEGAL, "bad KILN_SIM_FAULTS=%s", getenv("KILN_SIM_FAULTS"));
    }
    int32_t ids[SIM_MAX_DEVICES];
    int n = 0;
    const char *ds = getenv("KILN_SIM_DEVICES");
    if (ds && *ds) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", ds);
        char *save = NULL;
        for (char *tok = strtok_r(buf, ", ", &save); tok && n < SIM_MAX_DEVICES; tok = strtok_r(NULL, ", ", &save)) {
            char *end;
            long v = strtol(tok, &end, 0);
            if (*end || v < 0 || v > 255) {
                pthread_mutex_unlock(&g_mu);
                return sim_fail(E_CONFIG_ILLEGAL, "bad KILN_SIM_DEVICES=%s", ds);
            }
            ids[n++] = (int32_t)v;
        }
        /* the real list is sorted */
        for (int i = 1; i < n; i++)
            for (int j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
                int32_t t = ids[j];
                ids[j] = ids[j - 1];
                ids[j - 1] = t;
            }
    } else {
        ids[n++] = 1; /* Raspberry Pi 5: 0001:01:00.0, device id 1 (a bus number, not an index) */
    }
    double now = sim_now();
    memset(g_devs, 0, sizeof g_devs);
    for (int i = 0; i < n; i++) {
        g_devs[i].id = ids[i];
        g_devs[i].temp_c = g_cfg.ambient_c;
        g_devs[i].last_update = now;
    }
    g_ndev = n;
    g_inited = 1;
    sim_boot_init();
    pthread_mutex_unlock(&g_mu);
    return 0;
}

EXPORT axclError axclFinalize(void) {
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < g_ndev; i++) release_device(&g_devs[i]);
    sim_engine_reset();
    sim_streams_reset();
    free_ctxs_of(NULL);
    g_ndev = 0;
    g_inited = 0;
    wake_all();
    pthread_mutex_unlock(&g_mu);
    t_ctx = NULL;
    t_dev = NULL;
    return 0;
}

EXPORT axclError axclSetLogLevel(int32_t lv) {
    if (lv < 0 || lv > 6) return sim_fail(E_CONFIG_ILLEGAL, "log level %d", lv);
    return 0;
}

EXPORT axclError axclrtGetVersion(int32_t *major, int32_t *minor, int32_t *patch) {
    if (!major || !minor || !patch) return sim_fail(E_DEVICE_NULL, "null out-param");
    *major = 3, *minor = 10, *patch = 2;
    return 0;
}

#ifndef KILNSIM_NO_FULLVERSION /* a V2.25-era runtime has no axclrtGetFullVersion */
EXPORT const char *axclrtGetFullVersion(void) { return "V3.10.2_kilnsim"; }
#endif
EXPORT const char *axclrtGetSocName(void) { return "AX650N"; }

/* ---------------------------------------------------------------- devices */

EXPORT axclError axclrtGetDeviceCount(uint32_t *count) {
    if (!count) return sim_fail(E_DEVICE_NULL, "null count");
    pthread_mutex_lock(&g_mu);
    int inited = g_inited;
    *count = 0;
    for (int i = 0; i < g_ndev; i++) *count += (uint32_t)sim_enumerated(&g_devs[i]);
    pthread_mutex_unlock(&g_mu);
    if (!inited) return sim_fail(E_DEVICE_FAIL, "axclInit has not been called");
    return 0;
}

EXPORT axclError axclrtGetDeviceList(axclrtDeviceList *l) {
    if (!l) return sim_fail(E_DEVICE_NULL, "null list");
    pthread_mutex_lock(&g_mu);
    if (!g_inited) {
        pthread_mutex_unlock(&g_mu);
        return sim_fail(E_DEVICE_FAIL, "axclInit has not been called");
    }
    memset(l, 0, sizeof *l);
    for (int i = 0; i < g_ndev; i++)
        if (sim_enumerated(&g_devs[i])) l->devices[l->num++] = g_devs[i].id;
    pthread_mutex_unlock(&g_mu);
    return 0;
}

/* bind_new_ctx activates device id, creates a context on it (implicit: the
 * default context of SetDevice) and binds both to the calling thread. */
static axclError bind_new_ctx(int32_t id, int implicit, simctx **out) {
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = g_inited ? find_dev(id) : NULL;
    if (!g_inited) r = sim_fail(E_DEVICE_FAIL, "axclInit has not been called");
    else if (!d) r = sim_fail(E_DEVICE_INVALID_ID, "device id %d is not in the device list (ids are PCIe bus numbers)", id);
    else if (!sim_enumerated(d)) r = sim_fail(E_DEVICE_NO_CONNECT, "device %d is not connected (not enumerated yet)", id);
    else if (SIM_DEAD(d)) r = sim_fail(sim_lost_code(d, E_DEVICE_LOST), "device %d is lost; reset it", id);
    else {
        simctx *c = new_ctx(d, implicit);
        if (!c) r = sim_fail(E_DEVICE_FAIL, "out of host memory");
        else {
            d->refcnt++;
            t_dev = d;
            t_ctx = c;
            t_ctx_serial = c->serial;
            if (out) *out = c;
        }
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtSetDevice(int32_t id) { return bind_new_ctx(id, 1, NULL); }

EXPORT axclError axclrtResetDevice(int32_t id) {
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = g_inited ? find_dev(id) : NULL;
    if (!g_inited) r = sim_fail(E_DEVICE_FAIL, "axclInit has not been called");
    else if (!d) r = sim_fail(E_DEVICE_INVALID_ID, "device id %d is not in the device list", id);
    else if (d->refcnt <= 0) r = sim_fail(E_DEVICE_NOT_ACTIVE, "device %d is not active", id);
    else {
        d->refcnt--;
        if (t_dev == d) {
            t_dev = NULL;
            t_ctx = NULL;
        }
        if (d->refcnt == 0) {
            release_device(d);
            free_ctxs_of(d);
            d->lost = 0;
            d->engine_init = 0;
        }
        wake_all();
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtGetDevice(int32_t *id) {
    if (!id) return sim_fail(E_DEVICE_NULL, "null id");
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = bound_dev();
    if (!d) r = sim_fail(E_DEVICE_NO_ACTIVE_DEVICE, "thread has no active device");
    else *id = d->id;
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtSynchronizeDevice(void) {
    sim_round_trip('s');
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = bound_dev();
    if (!d) r = sim_fail(E_DEVICE_NO_ACTIVE_DEVICE, "thread has no active device");
    else if (SIM_DEAD(d)) r = sim_fail(sim_lost_code(d, E_DEVICE_LOST), "device %d is lost", d->id);
    pthread_mutex_unlock(&g_mu);
    return r;
}

static __attribute__((unused)) int read_temp_file(int32_t *mc) {
    if (!g_cfg.temp_file[0]) return 0;
    FILE *f = fopen(g_cfg.temp_file, "r");
    if (!f) return 0;
    char buf[64] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *end;
    double c = strtod(buf, &end);
    if (end == buf || c < -100 || c > 300) return 0;
    while (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t') end++;
    if (*end) return 0;
    *mc = (int32_t)lround(c * 1000.0);
    return 1;
}

#ifndef KILNSIM_NO_DEVICE_PROPERTIES /* a V2.25-era runtime has no axclrtGetDeviceProperties */
EXPORT axclError axclrtGetDeviceProperties(int32_t id, axclrtDeviceProperties *p) {
    if (!p) return sim_fail(E_DEVICE_NULL, "null properties");
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = g_inited ? find_dev(id) : NULL;
    if (!g_inited) r = sim_fail(E_DEVICE_FAIL, "axclInit has not been called");
    else if (!d) r = sim_fail(E_DEVICE_INVALID_ID, "device id %d is not in the device list", id);
    else if (SIM_DEAD(d)) r = sim_fail(sim_lost_code(d, E_DEVICE_LOST), "device %d is lost", id);
    if (r) {
        pthread_mutex_unlock(&g_mu);
        return r;
    }
    double now = sim_now();
    thermal_advance(d, now);
    memset(p, 0, sizeof *p);
    snprintf(p->swVersion, sizeof p->swVersion, "Ax_Version V3.10.2_kilnsim");
    p->uid = sim_uid(d);
    p->pciDomain = 1;
    p->pciBusID = (uint32_t)d->id;
    p->pciDeviceID = 0;
    int32_t mc;
    if (read_temp_file(&mc)) p->temperature = mc;
    else p->temperature = (int32_t)lround(d->temp_c * 1000.0);
    p->totalMemSize = 968356;
    p->freeMemSize = 812000;
    p->totalCmmSize = (uint32_t)(g_cfg.cmm_bytes >> 10);
    p->freeCmmSize = (uint32_t)(sim_cmm_free(d) >> 10);
    double frac = 0;
    if (d->have_sample && now > d->sample_t) frac = d->busy_since_sample / (now - d->sample_t);
    if (frac > 1) frac = 1;
    if (frac < 0) frac = 0;
    p->npuLoading = (uint32_t)lround(frac * 10000.0);
    p->cpuLoading = 300 + (uint32_t)lround(frac * 1200.0);
    d->sample_t = now;
    d->busy_since_sample = 0;
    d->have_sample = 1;
    long props_us = g_cfg.props_us;
    pthread_mutex_unlock(&g_mu);
    if (props_us > 0) { /* the real call runs 7 shell commands on the card */
        struct timespec ts = {props_us / 1000000, (props_us % 1000000) * 1000};
        while (nanosleep(&ts, &ts) && errno == EINTR) {}
    }
    return 0;
}
#endif /* KILNSIM_NO_DEVICE_PROPERTIES */

/* ---------------------------------------------------------------- contexts API */

EXPORT axclError axclrtCreateContext(void **ctx, int32_t id) {
    if (!ctx) return sim_fail(E_CONTEXT_NULL, "null context out-param");
    simctx *c = NULL;
    axclError r = bind_new_ctx(id, 0, &c);
    if (r == 0) *ctx = c;
    return r;
}

EXPORT axclError axclrtDestroyContext(void *ctx) {
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simctx *c = find_ctx(ctx);
    if (!c || c->implicit) r = sim_fail(E_CONTEXT_ILLEGAL, "%p is not an explicitly created context", ctx);
    else {
        simdev *d = c->dev;
        simctx **pp = &g_ctxs;
        while (*pp != c) pp = &(*pp)->next;
        *pp = c->next;
        c->magic = 0;
        free(c);
        if (t_ctx == ctx) {
            t_ctx = NULL;
            t_dev = NULL;
        }
        if (d->refcnt > 0 && --d->refcnt == 0) {
            release_device(d);
            free_ctxs_of(d);
            d->lost = 0;
            d->engine_init = 0;
        }
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtSetCurrentContext(void *ctx) {
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simctx *c = find_ctx(ctx);
    if (!c) r = sim_fail(E_CONTEXT_ILLEGAL, "%p is not a context", ctx);
    else {
        t_ctx = c;
        t_ctx_serial = c->serial;
        t_dev = c->dev;
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtGetCurrentContext(void **ctx) {
    if (!ctx) return sim_fail(E_CONTEXT_NULL, "null context out-param");
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simctx *c = (g_inited && t_ctx) ? find_ctx(t_ctx) : NULL;
    if (!c || c->serial != t_ctx_serial) r = sim_fail(E_CONTEXT_NO_BIND, "thread hasn't binded any context yet");
    else *ctx = t_ctx;
    pthread_mutex_unlock(&g_mu);
    return r;
}

/* ---------------------------------------------------------------- memory API */

static axclError do_malloc(void **p, size_t size) {
    if (!p) return sim_fail(E_MEM_NULL, "null out-param");
    if (size == 0) return sim_fail(E_MEM_ILLEGAL, "size 0");
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = sim_need_ctx(&r);
    if (!d) goto out;
    if (SIM_DEAD(d)) {
        r = sim_fail(sim_lost_code(d, E_MEM_LOST), "device %d is lost", d->id);
        goto out;
    }
    int64_t n = ++g_faults.malloc_n;
    if (hit(g_faults.fail_malloc, g_faults.nfm, n)) {
        r = sim_fail(E_MEM_NO_MEMORY, "fault: fail_malloc=%lld", (long long)n);
        goto out;
    }
    uint64_t need = ((uint64_t)size + 4095) & ~4095ull;
    if (need > OFF_MASK || need > sim_cmm_free(d)) {
        r = sim_fail(E_MEM_NO_MEMORY, "CMM exhausted: %llu bytes asked, %llu of %llu free", (unsigned long long)size,
                     (unsigned long long)sim_cmm_free(d), (unsigned long long)g_cfg.cmm_bytes);
        goto out;
    }
    uint32_t s = 0;
    for (uint32_t i = 0; i < NSLOTS - 1; i++) {
        uint32_t c = g_next_slot;
        g_next_slot = g_next_slot + 1 >= NSLOTS ? 1 : g_next_slot + 1;
        if (!g_mem[c].used) {
            s = c;
            break;
        }
    }
    if (!s) {
        r = sim_fail(E_MEM_NO_MEMORY, "too many device buffers (%d)", NSLOTS - 1);
        goto out;
    }
    void *h = calloc(1, size);
    if (!h) {
        r = sim_fail(E_MEM_NO_MEMORY, "host out of memory for %zu bytes", size);
        goto out;
    }
    g_mem[s] = (memslot){h, size, d, 1};
    d->cmm_used += need;
    *p = (void *)(uintptr_t)(ADDR_TAG | ((uint64_t)s << SLOT_SHIFT));
out:
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtMalloc(void **p, size_t size, int32_t policy) {
    if (policy < 0 || policy > 3) return sim_fail(E_MEM_ILLEGAL, "policy %d", policy);
    return do_malloc(p, size);
}

EXPORT axclError axclrtMallocCached(void **p, size_t size, int32_t policy) {
    if (policy < 0 || policy > 3) return sim_fail(E_MEM_ILLEGAL, "policy %d", policy);
    return do_malloc(p, size);
}

static void free_slot(memslot *m) {
    uint64_t need = (m->size + 4095) & ~4095ull;
    m->dev->cmm_used = m->dev->cmm_used >= need ? m->dev->cmm_used - need : 0;
    free(m->host);
    memset(m, 0, sizeof *m);
}

EXPORT axclError axclrtFree(void *p) {
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = sim_need_ctx(&r);
    if (d) {
        memslot *m = slot_of((uint64_t)(uintptr_t)p);
        if (!m || ((uint64_t)(uintptr_t)p & OFF_MASK) != 0) r = sim_fail(E_MEM_NOT_DEVICE, "%p is not a device buffer", p);
        else free_slot(m);
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtMemFlush(void *p, size_t size) {
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    void *h;
    if (sim_need_ctx(&r)) r = sim_resolve((uint64_t)(uintptr_t)p, size, &h);
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtMemInvalidate(void *p, size_t size) { return axclrtMemFlush(p, size); }

EXPORT axclError axclrtMallocHost(void **p, size_t size) {
    if (!p) return sim_fail(E_MEM_NULL, "null out-param");
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    if (sim_need_ctx(&r)) {
        *p = malloc(size ? size : 1);
        if (!*p) r = sim_fail(E_MEM_NO_MEMORY, "host out of memory");
        else sim_pin_add(*p, size);
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtFreeHost(void *p) {
    if (sim_is_device_addr((uint64_t)(uintptr_t)p)) return sim_fail(E_MEM_ILLEGAL, "%p is device memory", p);
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    if (sim_need_ctx(&r)) {
        if (sim_pin_del(p)) r = sim_fail(E_MEM_ILLEGAL, "%p is not from axclrtMallocHost", p);
        else free(p);
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtMemset(void *p, uint8_t v, size_t n) {
    sim_round_trip('c');
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = sim_need_ctx(&r);
    void *h;
    if (d && SIM_DEAD(d)) r = sim_fail(sim_lost_code(d, E_MEM_LOST), "device %d is lost", d->id);
    else if (d && !(r = sim_resolve((uint64_t)(uintptr_t)p, n, &h))) memset(h, v, n);
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtMemcpy(void *dst, const void *src, size_t n, int32_t kind) {
    if (kind != 0) sim_round_trip('c');
    return sim_memcpy(dst, src, n, kind);
}

/* sim_memcpy is axclrtMemcpy without the round trip (also what a stream runs). */
axclError sim_memcpy(void *dst, const void *src, size_t n, int32_t kind) {
    long extra_us = 0;
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = sim_need_ctx(&r);
    if (!d) goto out;
    if (SIM_DEAD(d)) {
        r = sim_fail(sim_lost_code(d, E_MEM_LOST), "device %d is lost", d->id);
        goto out;
    }
    if (!dst || !src) {
        r = sim_fail(E_MEM_NULL, "null pointer");
        goto out;
    }
    uint64_t da = (uint64_t)(uintptr_t)dst, sa = (uint64_t)(uintptr_t)src;
    void *hd = dst, *hs = (void *)src;
    switch (kind) {
    case 0: /* host to host */
        if (sim_is_device_addr(da) || sim_is_device_addr(sa))
            r = sim_fail(E_MEM_ILLEGAL, "HOST_TO_HOST with a device address");
        break;
    case 1: /* host to device */
        if (sim_is_device_addr(sa)) r = sim_fail(E_MEM_ILLEGAL, "HOST_TO_DEVICE: source %p is device memory", src);
        else r = sim_resolve(da, n, &hd);
        break;
    case 2: /* device to host */
        if (sim_is_device_addr(da)) r = sim_fail(E_MEM_ILLEGAL, "DEVICE_TO_HOST: destination %p is device memory", dst);
        else r = sim_resolve(sa, n, &hs);
        break;
    case 3: /* device to device */
        r = sim_resolve(da, n, &hd);
        if (!r) r = sim_resolve(sa, n, &hs);
        break;
    case 4:
    case 5:
        r = sim_fail(E_MEM_UNSUPPORT, "memcpy kind %d (physical host addresses) is not simulated", kind);
        break;
    default:
        r = sim_fail(E_MEM_ILLEGAL, "memcpy kind %d", kind);
    }
    if (!r && n) memmove(hd, hs, n);
    if (!r && (kind == 1 || kind == 2)) extra_us = sim_host_transfer(kind == 1 ? src : dst, n);
out:
    pthread_mutex_unlock(&g_mu);
    if (extra_us > 0) {
        struct timespec ts = {extra_us / 1000000, (extra_us % 1000000) * 1000};
        while (nanosleep(&ts, &ts) && errno == EINTR) {}
    }
    return r;
}

/* ---------------------------------------------------------------- device release */

void sim_release_models(simdev *d); /* engine.c */

static void release_device(simdev *d) {
    for (uint32_t i = 1; i < NSLOTS; i++)
        if (g_mem[i].used && g_mem[i].dev == d) free_slot(&g_mem[i]);
    sim_release_models(d);
    d->cmm_used = 0;
    d->refcnt = 0;
    wake_all(); /* a hung execute ends when its device is reset */
}

/* sim_power_cycle drops everything the runtime holds on d, as a firmware reboot does (card.c).
 * Caller holds g_mu. */
void sim_power_cycle(simdev *d) {
    release_device(d);
    free_ctxs_of(d);
    d->lost = 0;
    d->engine_init = 0;
    wake_all();
}
