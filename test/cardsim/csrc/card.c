/* kilnsim card life beyond one call and one process: axclrtRebootDevice with its delay, the
 * OFFLINE fault and the device status callback, the wedge a process leaves when it dies
 * mid-execute (kept in a state file, so the next process sees it), late enumeration after boot,
 * and a log of engine loads and reboots. The field facts behind each are in
 * research/card-field-notes.md §1; the contract is test/cardsim/README.md "Card life". */
#define _GNU_SOURCE
#include "sim.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

extern pthread_mutex_t g_mu;
extern int g_inited;
extern simdev g_devs[SIM_MAX_DEVICES];
extern int g_ndev;
int sim_llm_loaded_on(const simdev *d, const simmodel *except); /* engine.c */
void sim_power_cycle(simdev *d); /* runtime.c */


/* Survive axclInit/axclFinalize cycles of one process (a card does not reboot because a
 * process re-initialises its runtime). */
static double g_first_init = -1;   /* time of the process's first axclInit: the card's "boot" */
static double g_back_at[256];       /* by device id: when a rebooted card enumerates again */
static char g_offline[256];         /* by device id: OFFLINE until rebooted */
static int64_t g_reboots, g_offline_calls, g_wedged_execs;

typedef void (*status_cb)(int32_t device, int32_t status, void *userdata);
static status_cb g_cb;
static void *g_cb_data;

static const char *state_path(const simdev *d, char *buf, size_t n) {
    if (!g_cfg.state_dir[0]) return NULL;
    snprintf(buf, n, "%s/card%d.state", g_cfg.state_dir, d->id);
    return buf;
}

static void write_state(const simdev *d, const char *state) {
    char p[600];
    if (!state_path(d, p, sizeof p)) return;
    FILE *f = fopen(p, "w");
    if (!f) return;
    if (!strcmp(state, "busy")) fprintf(f, "busy %d\n", (int)getpid());
    else fprintf(f, "%s\n", state);
    fclose(f);
}

static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_line(const char *fmt, ...) {
    if (!g_cfg.load_log[0]) return;
    FILE *f = fopen(g_cfg.load_log, "a");
    if (!f) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fclose(f);
}

int sim_set_path(const char *key, const char *v) {
    char *dst = !strcmp(key, "state_dir") ? g_cfg.state_dir : g_cfg.load_log;
    if (strlen(v) >= sizeof g_cfg.state_dir) return -1;
    strcpy(dst, v);
    return 0;
}

/* sim_boot_init runs at every axclInit (g_mu held): the first one boots the card; each reads the
 * state a dead process left: "busy PID" of a process that is gone, or "wedged", wedges the card. */
void sim_boot_init(void) {
    if (g_first_init < 0) g_first_init = sim_now();
    for (int i = 0; i < g_ndev; i++) {
        simdev *d = &g_devs[i];
        if (d->id >= 0 && d->id < 256) d->offline = g_offline[d->id];
        char p[600], buf[64] = {0};
        if (!state_path(d, p, sizeof p)) continue;
        FILE *f = fopen(p, "r");
        if (!f) continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        int pid = 0;
        if (!strncmp(buf, "wedged", 6)) d->wedged = 1;
        else if (sscanf(buf, "busy %d", &pid) == 1 && pid != (int)getpid() && kill(pid, 0) != 0 && errno == ESRCH)
            d->wedged = 1;
        if (d->wedged) {
            write_state(d, "wedged");
            sim_log("device %d is wedged: a process died mid-execute (%s)", d->id, p);
        }
    }
}

/* sim_uid is the chip's unique id. Without a state dir every process has a simulated card of its own,
 * so the id includes the process id; with one, the processes that share the state dir share one card
 * (its state file), and so its id, which includes a hash of the folder. kiln keys its per-card lock by
 * this id. */
uint64_t sim_uid(const simdev *d) {
    uint64_t h = (uint64_t)getpid();
    if (g_cfg.state_dir[0]) {
        h = 5381;
        for (const char *c = g_cfg.state_dir; *c; c++) h = h * 33 + (unsigned char)*c;
    }
    return 0x4b494c4e00000000ull | (h & 0xffffffull) << 8 | (uint64_t)(uint8_t)d->id;
}

int sim_enumerated(const simdev *d) {
    double now = sim_now();
    if (g_first_init >= 0 && now < g_first_init + (double)g_cfg.enum_delay_ms * 1e-3) return 0;
    if (d->id >= 0 && d->id < 256 && now < g_back_at[d->id]) return 0;
    return 1;
}

axclError sim_lost_code(simdev *d, axclError lost) {
    if (!d->offline) return lost;
    g_offline_calls++;
    return E_DEVICE_NO_CONNECT;
}

/* ---- the status callback, called from a thread of the simulator like the runtime's own */

typedef struct {
    int32_t id;
    int offline_first;
    long delay_ms;
    int online_after;
} notice;

static void *notify(void *arg) {
    notice *n = arg;
    status_cb cb;
    void *data;
    pthread_mutex_lock(&g_mu);
    cb = g_cb, data = g_cb_data;
    pthread_mutex_unlock(&g_mu);
    if (cb && n->offline_first) cb(n->id, 1 /* AXCL_DEVICE_STATUS_OFFLINE */, data);
    if (n->online_after) {
        struct timespec ts = {n->delay_ms / 1000, (n->delay_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) && errno == EINTR) {}
        pthread_mutex_lock(&g_mu);
        cb = g_cb, data = g_cb_data;
        pthread_mutex_unlock(&g_mu);
        if (cb) cb(n->id, 0 /* AXCL_DEVICE_STATUS_ONLINE */, data);
    }
    free(n);
    return NULL;
}

static void announce(int32_t id, int offline_first, int online_after, long delay_ms) {
    notice *n = malloc(sizeof *n);
    if (!n) return;
    *n = (notice){id, offline_first, delay_ms, online_after};
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &a, notify, n)) free(n);
    pthread_attr_destroy(&a);
}

#ifndef KILNSIM_NO_STATUS_CALLBACK /* the public V3.10.2 library does not export it */
EXPORT axclError axclrtRegisterDeviceStatusCallback(status_cb cb, void *userdata) {
    pthread_mutex_lock(&g_mu);
    g_cb = cb, g_cb_data = userdata;
    pthread_mutex_unlock(&g_mu);
    return 0;
}
#endif

/* ---- faults at execute (g_mu held) */

axclError sim_go_offline(simdev *d, int64_t n) {
    d->offline = 1;
    if (d->id >= 0 && d->id < 256) g_offline[d->id] = 1;
    announce(d->id, 1, 0, 0);
    g_offline_calls++;
    return sim_fail(E_DEVICE_NO_CONNECT, "fault: offline=%lld: device %d is not connected", (long long)n, d->id);
}

axclError sim_wedge_exec(simdev *d) {
    if (d->wedged) {
        g_wedged_execs++;
        return sim_fail(SIM_ERR(SUB_ENGINE, ID_UNEXPECT_RESPONSE), "device %d is wedged: recv dma size 0 (reboot the card)", d->id);
    }
    write_state(d, "busy");
    return 0;
}

void sim_exec_done(simdev *d) {
    if (!d->wedged) write_state(d, "idle");
}

/* An engine built by pulsar2 build (ONNX: SD, vision) loaded after an llm_build one (LLM layer or post)
 * on the same device drops the card with KILN_SIM_LOAD_ORDER_DROP=1, as seen in the field
 * (card-field-notes.md §2): the load returns, then the card is OFFLINE. */
void sim_log_load(const simmodel *m, const char *what) {
    log_line("load %s %s %s", m->spec.kind_name, m->spec.name[0] ? m->spec.name : "-", what);
    simdev *d = m->dev;
    if (!g_cfg.load_order_drop || m->spec.kind == KIND_LLM_LAYER || m->spec.kind == KIND_LLM_POST || d->offline) return;
    if (!sim_llm_loaded_on(d, m)) return;
    d->offline = 1;
    if (d->id >= 0 && d->id < 256) g_offline[d->id] = 1;
    announce(d->id, 1, 0, 0);
    log_line("drop %d: %s loaded after an llm_build engine", d->id, m->spec.kind_name);
    sim_log("device %d dropped: %s (pulsar2 build) loaded after an llm_build engine", d->id, what);
}

/* ---- the reboot */

#ifndef KILNSIM_NO_REBOOT /* a runtime without the rescue */
EXPORT axclError axclrtRebootDevice(int32_t id) {
    pthread_mutex_lock(&g_mu);
    simdev *d = NULL;
    for (int i = 0; g_inited && i < g_ndev; i++)
        if (g_devs[i].id == id) d = &g_devs[i];
    if (!g_inited || !d) {
        pthread_mutex_unlock(&g_mu);
        return sim_fail(g_inited ? SIM_ERR(SUB_DEVICE, 0x84) : SIM_ERR(SUB_DEVICE, ID_FAIL), "reboot device %d: %s", id,
                        g_inited ? "not in the device list" : "axclInit has not been called");
    }
    int was_offline = d->offline;
    sim_power_cycle(d);
    d->offline = 0;
    if (id >= 0 && id < 256) g_offline[id] = 0;
    d->wedged = 0;
    write_state(d, "idle");
    long delay = g_cfg.reboot_ms;
    if (id >= 0 && id < 256) g_back_at[id] = sim_now() + (double)delay * 1e-3;
    g_reboots++;
    log_line("reboot %d", id);
    sim_log("reboot device %d: back in %ld ms", id, delay);
    announce(id, !was_offline, 1, delay);
    pthread_mutex_unlock(&g_mu);
    return 0;
}
#endif

/* kilnsim_count returns a counter of the card's life: "reboots", "offline_calls" (calls made
 * while a device was OFFLINE, teardown excepted), "wedged_executes"; -1 for an unknown name. */
EXPORT int64_t kilnsim_count(const char *name) {
    pthread_mutex_lock(&g_mu);
    int64_t r = -1;
    if (!strcmp(name, "reboots")) r = g_reboots;
    else if (!strcmp(name, "offline_calls")) r = g_offline_calls;
    else if (!strcmp(name, "wedged_executes")) r = g_wedged_execs;
    pthread_mutex_unlock(&g_mu);
    return r;
}
