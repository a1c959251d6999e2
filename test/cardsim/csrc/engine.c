/* kilnsim engine: model spec parser, model table, IO info, IO and execute. */
#define _GNU_SOURCE
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

extern pthread_mutex_t g_mu;
simdev *sim_need_ctx(axclError *err);
axclError sim_exec_fault(simdev *d);
axclError sim_load_fault(void);
void sim_add_busy(simdev *d, double sec);
uint64_t sim_cmm_free(simdev *d);

/* ---------------------------------------------------------------- spec parser */

int sim_dtype_size(int32_t dt) {
    switch (dt) {
    case DT_INT8: case DT_UINT8: return 1;
    case DT_INT16: case DT_UINT16: case DT_FP16: case DT_BF16: return 2;
    case DT_INT32: case DT_UINT32: case DT_FP32: return 4;
    case DT_INT64: case DT_UINT64: case DT_FP64: return 8;
    default: return 0;
    }
}

static const struct { const char *name; int32_t dt; } dtypes[] = {
    {"int8", DT_INT8}, {"uint8", DT_UINT8}, {"int16", DT_INT16}, {"uint16", DT_UINT16}, {"int32", DT_INT32},
    {"uint32", DT_UINT32}, {"int64", DT_INT64}, {"uint64", DT_UINT64}, {"fp16", DT_FP16}, {"bf16", DT_BF16},
    {"fp32", DT_FP32}, {"fp64", DT_FP64},
};

static const struct { const char *name; int kind; } kinds[] = {
    {"llm_layer", KIND_LLM_LAYER}, {"llm_post", KIND_LLM_POST}, {"vision", KIND_VISION},
    {"sd_text_encoder", KIND_SD_TEXT}, {"sd_unet", KIND_SD_UNET}, {"sd_vae_decoder", KIND_SD_VAE_DEC},
    {"sd_vae_encoder", KIND_SD_VAE_ENC},
};

static int perr(char *err, size_t errn, int line, const char *msg) {
    snprintf(err, errn, "line %d: %s", line, msg);
    return -1;
}

static int copy_word(char *dst, size_t dn, const char *src) {
    size_t n = strlen(src);
    if (n == 0 || n >= dn) return -1;
    memcpy(dst, src, n + 1);
    return 0;
}

/* parse_dims parses "1x128x64" into t's group g. */
static int parse_dims(simtensor *t, int g, char *s) {
    int nd = 0;
    uint64_t elems = 1;
    char *save = NULL;
    for (char *p = strtok_r(s, "x", &save); p; p = strtok_r(NULL, "x", &save)) {
        if (nd >= SIM_MAX_DIMS) return -1;
        char *end;
        long v = strtol(p, &end, 10);
        if (*end || end == p || v < 1 || v > (1L << 30)) return -1;
        t->dims[g][nd++] = (int32_t)v;
        elems *= (uint64_t)v;
        if (elems > (1ull << 34)) return -1;
    }
    if (nd == 0) return -1;
    t->ndim[g] = nd;
    t->elems[g] = elems;
    t->bytes[g] = elems * (uint64_t)sim_dtype_size(t->dtype);
    return 0;
}

/* sim_parse_spec parses a model file: "KILNSIM1\n" then lines (see README "Model file format"). */
int sim_parse_spec(const char *buf, size_t n, simspec *s, char *err, size_t errn) {
    memset(s, 0, sizeof *s);
    if (n < 9 || memcmp(buf, "KILNSIM1\n", 9) != 0) return perr(err, errn, 1, "not a kilnsim model (magic KILNSIM1 missing)");
    size_t pos = 9;
    int line = 1, ended = 0;
    char l[4096];
    while (pos < n && !ended) {
        line++;
        size_t e = pos;
        while (e < n && buf[e] != '\n') e++;
        size_t len = e - pos;
        if (len >= sizeof l) return perr(err, errn, line, "line too long");
        memcpy(l, buf + pos, len);
        l[len] = 0;
        pos = e + 1;
        if (memchr(l, 0, len)) return perr(err, errn, line, "NUL byte");
        char *save = NULL;
        char *w = strtok_r(l, " \t\r", &save);
        if (!w || w[0] == '#') continue;
        if (!strcmp(w, "end")) {
            ended = 1;
        } else if (!strcmp(w, "kind")) {
            char *k = strtok_r(NULL, " \t\r", &save);
            if (!k || copy_word(s->kind_name, sizeof s->kind_name, k)) return perr(err, errn, line, "bad kind");
            for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
                if (!strcmp(k, kinds[i].name)) s->kind = kinds[i].kind;
            if (!s->kind) return perr(err, errn, line, "unknown kind");
        } else if (!strcmp(w, "name") || !strcmp(w, "compiler")) {
            char *v = strtok_r(NULL, " \t\r", &save);
            char *dst = w[0] == 'n' ? s->name : s->compiler;
            if (!v || copy_word(dst, 64, v)) return perr(err, errn, line, "bad name/compiler");
        } else if (!strcmp(w, "weight_bytes")) {
            char *v = strtok_r(NULL, " \t\r", &save), *end;
            if (!v) return perr(err, errn, line, "bad weight_bytes");
            long long x = strtoll(v, &end, 10);
            if (*end || x < 0) return perr(err, errn, line, "bad weight_bytes");
            s->weight_bytes = (uint64_t)x;
        } else if (!strcmp(w, "groups")) {
            char *v = strtok_r(NULL, " \t\r", &save), *end;
            if (!v) return perr(err, errn, line, "bad groups");
            long x = strtol(v, &end, 10);
            if (*end || x < 1 || x > SIM_MAX_GROUPS || s->ngroups) return perr(err, errn, line, "bad groups");
            s->ngroups = (int)x;
        } else if (!strcmp(w, "param")) {
            char *k = strtok_r(NULL, " \t\r", &save), *v = strtok_r(NULL, " \t\r", &save), *end;
            if (!k || !v || s->nparam >= SIM_MAX_PARAMS) return perr(err, errn, line, "bad param");
            long long x = strtoll(v, &end, 0);
            if (*end || copy_word(s->pname[s->nparam], 32, k)) return perr(err, errn, line, "bad param");
            s->pval[s->nparam++] = x;
        } else if (!strcmp(w, "input") || !strcmp(w, "output")) {
            if (!s->ngroups) return perr(err, errn, line, "tensor before groups");
            int isin = w[0] == 'i';
            int *cnt = isin ? &s->nin : &s->nout;
            if (*cnt >= SIM_MAX_TENSORS) return perr(err, errn, line, "too many tensors");
            simtensor *t = isin ? &s->in[*cnt] : &s->out[*cnt];
            char *nm = strtok_r(NULL, " \t\r", &save), *dt = strtok_r(NULL, " \t\r", &save);
            if (!nm || !dt || copy_word(t->name, sizeof t->name, nm)) return perr(err, errn, line, "bad tensor");
            for (int i = 0; i < *cnt; i++)
                if (!strcmp((isin ? s->in : s->out)[i].name, nm)) return perr(err, errn, line, "duplicate tensor");
            for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
                if (!strcmp(dt, dtypes[i].name)) t->dtype = dtypes[i].dt;
            if (!t->dtype) return perr(err, errn, line, "unknown dtype");
            for (int g = 0; g < s->ngroups; g++) {
                char *d = strtok_r(NULL, " \t\r", &save);
                if (!d || parse_dims(t, g, d)) return perr(err, errn, line, "bad dims");
            }
            if (strtok_r(NULL, " \t\r", &save)) return perr(err, errn, line, "more dims than groups");
            (*cnt)++;
        } else {
            return perr(err, errn, line, "unknown keyword");
        }
    }
    if (!ended) return perr(err, errn, line, "missing end");
    if (!s->kind) return perr(err, errn, line, "missing kind");
    if (!s->nin || !s->nout) return perr(err, errn, line, "no inputs or outputs");
    if (!s->compiler[0]) strcpy(s->compiler, "kilnsim");
    return 0;
}

int64_t sim_param(const simspec *s, const char *name, int64_t def) {
    for (int i = 0; i < s->nparam; i++)
        if (!strcmp(s->pname[i], name)) return s->pval[i];
    return def;
}

int sim_find_in(const simspec *s, const char *name) {
    for (int i = 0; i < s->nin; i++)
        if (!strcmp(s->in[i].name, name)) return i;
    return -1;
}

int sim_find_out(const simspec *s, const char *name) {
    for (int i = 0; i < s->nout; i++)
        if (!strcmp(s->out[i].name, name)) return i;
    return -1;
}

/* kilnsim_parse_spec parses and validates a model spec without a device (fuzzing, tests).
 * Returns 0 or an engine error code; err gets a message. */
EXPORT int32_t kilnsim_parse_spec(const void *buf, uint64_t n, char *err, uint64_t errn) {
    simspec *s = malloc(sizeof *s);
    char tmp[256];
    if (!err || errn == 0) err = tmp, errn = sizeof tmp;
    if (!s) return E_ENGINE_NO_MEMORY;
    int32_t r = 0;
    if (sim_parse_spec(buf, (size_t)n, s, err, (size_t)errn)) r = E_ENGINE_ILLEGAL;
    else r = sim_validate(s, err, (size_t)errn);
    free(s);
    return r;
}

/* ---------------------------------------------------------------- model table */

static simmodel **g_models;
static int g_nmodels, g_capmodels;
static uint64_t g_next_model_id = 0x100;

static simmodel *find_model(uint64_t id) {
    for (int i = 0; i < g_nmodels; i++)
        if (g_models[i]->id == id && g_models[i]->loaded) return g_models[i];
    return NULL;
}

static void unload(simmodel *m) {
    if (!m->loaded) return;
    m->loaded = 0;
    uint64_t w = m->spec.weight_bytes;
    m->dev->cmm_used = m->dev->cmm_used >= w ? m->dev->cmm_used - w : 0;
    pthread_mutex_lock(&m->wmu);
    free(m->w);
    m->w = NULL;
    m->wn = 0;
    pthread_mutex_unlock(&m->wmu);
}

void sim_release_models(simdev *d) {
    for (int i = 0; i < g_nmodels; i++)
        if (g_models[i]->dev == d) unload(g_models[i]);
}

/* sim_engine_reset frees every model, IO info and IO (axclFinalize; caller holds g_mu). */
static void free_infos_and_ios(void);
void sim_engine_reset(void) {
    for (int i = 0; i < g_nmodels; i++) {
        simmodel *m = g_models[i];
        if (m->loaded) unload(m);
        pthread_mutex_destroy(&m->wmu);
        free(m);
        g_models[i] = NULL;
    }
    g_nmodels = 0;
    free_infos_and_ios();
}

/* ---------------------------------------------------------------- engine API */

static simdev *engine_dev(axclError *r) {
    simdev *d = sim_need_ctx(r);
    if (d && SIM_DEAD(d)) {
        *r = sim_fail(sim_lost_code(d, E_ENGINE_LOST), "device %d is lost", d->id);
        return NULL;
    }
    return d;
}

EXPORT axclError axclrtEngineInit(int32_t kind) {
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = engine_dev(&r);
    if (d) {
        if (kind < 0 || kind > 3) r = sim_fail(E_ENGINE_ILLEGAL, "vnpu kind %d", kind);
        else if (d->engine_init && d->vnpu != kind) r = sim_fail(E_ENGINE_ILLEGAL, "engine already initialised with vnpu kind %d", d->vnpu);
        else d->engine_init = 1, d->vnpu = kind;
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtEngineGetVNpuKind(int32_t *kind) {
    if (!kind) return sim_fail(E_ENGINE_NULL, "null out-param");
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = engine_dev(&r);
    if (d) {
        if (!d->engine_init) r = sim_fail(E_ENGINE_FAIL, "engine not initialised");
        else *kind = d->vnpu;
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtEngineFinalize(void) {
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = sim_need_ctx(&r);
    if (d) d->engine_init = 0;
    pthread_mutex_unlock(&g_mu);
    return r;
}

static axclError load(const char *buf, size_t n, const char *what, uint64_t *id) {
    simmodel *m = calloc(1, sizeof *m);
    if (!m) return sim_fail(E_ENGINE_NO_MEMORY, "host out of memory");
    char err[256];
    if (sim_parse_spec(buf, n, &m->spec, err, sizeof err)) {
        free(m);
        return sim_fail(E_ENGINE_ILLEGAL, "%s: %s", what, err);
    }
    /* A real card loads any compiled model whatever its tensor names; a spec the simulator
     * cannot compute (names or shapes that do not fit its kind) loads too and fails when run. */
    if (sim_validate(&m->spec, err, sizeof err)) snprintf(m->invalid, sizeof m->invalid, "%s", err);
    axclError r = 0;
    pthread_mutex_lock(&g_mu);
    simdev *d = engine_dev(&r);
    if (!d) goto fail;
    if (!d->engine_init) {
        r = sim_fail(E_ENGINE_FAIL, "%s: axclrtEngineInit has not been called on device %d", what, d->id);
        goto fail;
    }
    if ((r = sim_load_fault())) goto fail;
    if (m->spec.weight_bytes > sim_cmm_free(d)) {
        r = sim_fail(E_ENGINE_NO_MEMORY, "%s: needs %llu bytes of CMM, %llu free", what,
                     (unsigned long long)m->spec.weight_bytes, (unsigned long long)sim_cmm_free(d));
        goto fail;
    }
    if (g_nmodels >= g_capmodels) {
        int cap = g_capmodels ? 2 * g_capmodels : 64;
        simmodel **nm = realloc(g_models, (size_t)cap * sizeof *nm);
        if (!nm) {
            r = sim_fail(E_ENGINE_NO_MEMORY, "host out of memory");
            goto fail;
        }
        g_models = nm;
        g_capmodels = cap;
    }
    m->id = g_next_model_id++;
    m->dev = d;
    m->loaded = 1;
    pthread_mutex_init(&m->wmu, NULL);
    d->cmm_used += m->spec.weight_bytes;
    g_models[g_nmodels++] = m;
    sim_log_load(m, what);
    *id = m->id;
    pthread_mutex_unlock(&g_mu);
    return 0;
fail:
    pthread_mutex_unlock(&g_mu);
    free(m);
    return r;
}

EXPORT axclError axclrtEngineLoadFromFile(const char *path, uint64_t *id) {
    if (!path || !id) return sim_fail(E_ENGINE_NULL, "null argument");
    {
        axclError r = 0;
        pthread_mutex_lock(&g_mu);
        simdev *d = engine_dev(&r);
        pthread_mutex_unlock(&g_mu);
        if (!d) return r;
    }
    FILE *f = fopen(path, "rb");
    if (!f) return sim_fail(E_ENGINE_OPEN, "cannot open %s", path);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    char head[9];
    size_t hn = fread(head, 1, sizeof head, f);
    if (hn != sizeof head || memcmp(head, "KILNSIM1\n", 9) != 0) {
        fclose(f);
        free(buf);
        return sim_fail(E_ENGINE_ILLEGAL, "%s: not a kilnsim model (magic KILNSIM1 missing)", path);
    }
    if (buf) memcpy(buf, head, 9), n = 9;
    while (buf) {
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (n < cap) break;
        if (cap >= (64u << 20)) break; /* specs are small; a real .axmodel is rejected by its magic */
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb, cap *= 2;
    }
    fclose(f);
    if (!buf) return sim_fail(E_ENGINE_NO_MEMORY, "host out of memory");
    axclError r = load(buf, n, path, id);
    free(buf);
    return r;
}

EXPORT axclError axclrtEngineLoadFromMem(const void *model, uint64_t size, uint64_t *id) {
    if (!model || !id) return sim_fail(E_ENGINE_NULL, "null argument");
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    void *h = NULL;
    char *copy = NULL;
    if (engine_dev(&r)) {
        if (!sim_is_device_addr((uint64_t)(uintptr_t)model)) r = sim_fail(E_ENGINE_ILLEGAL, "model %p must be device memory", model);
        else if (!(r = sim_resolve((uint64_t)(uintptr_t)model, size, &h))) {
            copy = malloc(size ? size : 1);
            if (!copy) r = sim_fail(E_ENGINE_NO_MEMORY, "host out of memory");
            else memcpy(copy, h, size);
        }
    }
    pthread_mutex_unlock(&g_mu);
    if (r) return r;
    r = load(copy, size, "model in memory", id);
    free(copy);
    return r;
}

EXPORT axclError axclrtEngineUnload(uint64_t id) {
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    if (sim_need_ctx(&r)) {
        simmodel *m = find_model(id);
        if (!m) r = sim_fail(E_ENGINE_ILLEGAL, "model id %llu is not loaded", (unsigned long long)id);
        else unload(m);
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtEngineGetUsageFromModelId(uint64_t id, int64_t *sys, int64_t *cmm) {
    if (!sys || !cmm) return sim_fail(E_ENGINE_NULL, "null out-param");
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    if (engine_dev(&r)) {
        simmodel *m = find_model(id);
        if (!m) r = sim_fail(E_ENGINE_ILLEGAL, "model id %llu is not loaded", (unsigned long long)id);
        else *sys = 1 << 20, *cmm = (int64_t)m->spec.weight_bytes;
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT const char *axclrtEngineGetModelCompilerVersion(uint64_t id) {
    pthread_mutex_lock(&g_mu);
    simmodel *m = find_model(id);
    const char *s = m ? m->spec.compiler : NULL;
    pthread_mutex_unlock(&g_mu);
    return s;
}

EXPORT axclError axclrtEngineCreateContext(uint64_t id, uint64_t *ctx) {
    if (!ctx) return sim_fail(E_ENGINE_NULL, "null out-param");
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    if (engine_dev(&r)) {
        simmodel *m = find_model(id);
        if (!m) r = sim_fail(E_ENGINE_ILLEGAL, "model id %llu is not loaded", (unsigned long long)id);
        else if (m->nctx >= 0xffff) r = sim_fail(E_ENGINE_NO_MEMORY, "too many engine contexts");
        else *ctx = (m->id << 16) | ++m->nctx;
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

/* ---------------------------------------------------------------- IO info and IO */

#define INFO_MAGIC 0x494e464fu
#define IO_MAGIC 0x494f494fu

typedef struct ioinfo {
    uint32_t magic;
    simmodel *m;
    struct ioinfo *next;
} ioinfo;

typedef struct simio {
    uint32_t magic;
    simmodel *m;
    uint64_t in_addr[SIM_MAX_TENSORS], in_size[SIM_MAX_TENSORS];
    uint64_t out_addr[SIM_MAX_TENSORS], out_size[SIM_MAX_TENSORS];
    struct simio *next;
} simio;

static ioinfo *g_infos;
static simio *g_ios;

static void free_infos_and_ios(void) {
    while (g_infos) {
        ioinfo *i = g_infos;
        g_infos = i->next;
        i->magic = 0;
        free(i);
    }
    while (g_ios) {
        simio *o = g_ios;
        g_ios = o->next;
        o->magic = 0;
        free(o);
    }
}

static ioinfo *find_info(void *p) {
    for (ioinfo *i = g_infos; i; i = i->next)
        if (i == p && i->magic == INFO_MAGIC) return i;
    return NULL;
}

static simio *find_io(void *p) {
    for (simio *i = g_ios; i; i = i->next)
        if (i == p && i->magic == IO_MAGIC) return i;
    return NULL;
}

EXPORT axclError axclrtEngineGetIOInfo(uint64_t id, void **info) {
    if (!info) return sim_fail(E_ENGINE_NULL, "null out-param");
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    if (engine_dev(&r)) {
        simmodel *m = find_model(id);
        ioinfo *i = m ? calloc(1, sizeof *i) : NULL;
        if (!m) r = sim_fail(E_ENGINE_ILLEGAL, "model id %llu is not loaded", (unsigned long long)id);
        else if (!i) r = sim_fail(E_ENGINE_NO_MEMORY, "host out of memory");
        else {
            i->magic = INFO_MAGIC;
            i->m = m;
            i->next = g_infos;
            g_infos = i;
            *info = i;
        }
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtEngineDestroyIOInfo(void *info) {
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    ioinfo **pp = &g_infos;
    while (*pp && *pp != info) pp = &(*pp)->next;
    if (!*pp) r = sim_fail(E_ENGINE_ILLEGAL, "%p is not an IO info", info);
    else {
        ioinfo *i = *pp;
        *pp = i->next;
        i->magic = 0;
        free(i);
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

/* Lookups on an IO info do not need a context (they read host-side metadata). The model struct
 * is never freed, so names stay valid as long as the info. */
static simspec *info_spec(void *info) {
    pthread_mutex_lock(&g_mu);
    ioinfo *i = find_info(info);
    simspec *s = i ? &i->m->spec : NULL;
    pthread_mutex_unlock(&g_mu);
    return s;
}

EXPORT axclError axclrtEngineGetShapeGroupsCount(void *info, int32_t *count) {
    if (!count) return sim_fail(E_ENGINE_NULL, "null out-param");
    simspec *s = info_spec(info);
    if (!s) return sim_fail(E_ENGINE_ILLEGAL, "%p is not an IO info", info);
    *count = s->ngroups;
    return 0;
}

EXPORT uint32_t axclrtEngineGetNumInputs(void *info) {
    simspec *s = info_spec(info);
    return s ? (uint32_t)s->nin : 0;
}

EXPORT uint32_t axclrtEngineGetNumOutputs(void *info) {
    simspec *s = info_spec(info);
    return s ? (uint32_t)s->nout : 0;
}

static simtensor *tensor(void *info, int isin, uint32_t index) {
    simspec *s = info_spec(info);
    if (!s) return NULL;
    if (isin) return index < (uint32_t)s->nin ? &s->in[index] : NULL;
    return index < (uint32_t)s->nout ? &s->out[index] : NULL;
}

static uint64_t size_by_index(void *info, int isin, uint32_t group, uint32_t index) {
    simspec *s = info_spec(info);
    simtensor *t = tensor(info, isin, index);
    if (!s || !t || group >= (uint32_t)s->ngroups) return 0;
    return t->bytes[group];
}

EXPORT uint64_t axclrtEngineGetInputSizeByIndex(void *info, uint32_t group, uint32_t index) { return size_by_index(info, 1, group, index); }
EXPORT uint64_t axclrtEngineGetOutputSizeByIndex(void *info, uint32_t group, uint32_t index) { return size_by_index(info, 0, group, index); }

EXPORT const char *axclrtEngineGetInputNameByIndex(void *info, uint32_t index) {
    simtensor *t = tensor(info, 1, index);
    return t ? t->name : NULL;
}

EXPORT const char *axclrtEngineGetOutputNameByIndex(void *info, uint32_t index) {
    simtensor *t = tensor(info, 0, index);
    return t ? t->name : NULL;
}

EXPORT int32_t axclrtEngineGetInputIndexByName(void *info, const char *name) {
    simspec *s = info_spec(info);
    return s && name ? sim_find_in(s, name) : -1;
}

EXPORT int32_t axclrtEngineGetOutputIndexByName(void *info, const char *name) {
    simspec *s = info_spec(info);
    return s && name ? sim_find_out(s, name) : -1;
}

static axclError dims_by_index(void *info, int isin, uint32_t group, uint32_t index, axclrtEngineIODims *dims) {
    if (!dims) return sim_fail(E_ENGINE_NULL, "null dims");
    simspec *s = info_spec(info);
    if (!s) return sim_fail(E_ENGINE_ILLEGAL, "%p is not an IO info", info);
    if (group >= (uint32_t)s->ngroups) return sim_fail(E_ENGINE_INVALID_INDEX, "group %u of %d", group, s->ngroups);
    simtensor *t = tensor(info, isin, index);
    if (!t) return sim_fail(E_ENGINE_INVALID_INDEX, "%s index %u", isin ? "input" : "output", index);
    memset(dims, 0, sizeof *dims);
    dims->dimCount = t->ndim[group];
    for (int i = 0; i < t->ndim[group]; i++) dims->dims[i] = t->dims[group][i];
    return 0;
}

EXPORT axclError axclrtEngineGetInputDims(void *info, uint32_t group, uint32_t index, axclrtEngineIODims *dims) { return dims_by_index(info, 1, group, index, dims); }
EXPORT axclError axclrtEngineGetOutputDims(void *info, uint32_t group, uint32_t index, axclrtEngineIODims *dims) { return dims_by_index(info, 0, group, index, dims); }

static axclError dtype_by_index(void *info, int isin, uint32_t index, int32_t *type) {
    if (!type) return sim_fail(E_ENGINE_NULL, "null out-param");
    if (!info_spec(info)) return sim_fail(E_ENGINE_ILLEGAL, "%p is not an IO info", info);
    simtensor *t = tensor(info, isin, index);
    if (!t) return sim_fail(E_ENGINE_INVALID_INDEX, "%s index %u", isin ? "input" : "output", index);
    *type = t->dtype;
    return 0;
}

EXPORT axclError axclrtEngineGetInputDataType(void *info, uint32_t index, int32_t *type) { return dtype_by_index(info, 1, index, type); }
EXPORT axclError axclrtEngineGetOutputDataType(void *info, uint32_t index, int32_t *type) { return dtype_by_index(info, 0, index, type); }

static axclError layout_by_index(void *info, int isin, uint32_t index, int32_t *layout) {
    if (!layout) return sim_fail(E_ENGINE_NULL, "null out-param");
    simspec *s = info_spec(info);
    if (!s) return sim_fail(E_ENGINE_ILLEGAL, "%p is not an IO info", info);
    simtensor *t = tensor(info, isin, index);
    if (!t) return sim_fail(E_ENGINE_INVALID_INDEX, "%s index %u", isin ? "input" : "output", index);
    *layout = 0;
    if (t->ndim[0] == 4) *layout = (s->kind == KIND_VISION && isin) ? 1 : 2; /* NHWC image / NCHW */
    return 0;
}

EXPORT axclError axclrtEngineGetInputDataLayout(void *info, uint32_t index, int32_t *layout) { return layout_by_index(info, 1, index, layout); }
EXPORT axclError axclrtEngineGetOutputDataLayout(void *info, uint32_t index, int32_t *layout) { return layout_by_index(info, 0, index, layout); }

EXPORT axclError axclrtEngineCreateIO(void *info, void **io) {
    if (!io) return sim_fail(E_ENGINE_NULL, "null out-param");
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    ioinfo *i = find_info(info);
    simio *o = i ? calloc(1, sizeof *o) : NULL;
    if (!i) r = sim_fail(E_ENGINE_ILLEGAL, "%p is not an IO info", info);
    else if (!o) r = sim_fail(E_ENGINE_NO_MEMORY, "host out of memory");
    else {
        o->magic = IO_MAGIC;
        o->m = i->m;
        o->next = g_ios;
        g_ios = o;
        *io = o;
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtEngineDestroyIO(void *io) {
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simio **pp = &g_ios;
    while (*pp && *pp != io) pp = &(*pp)->next;
    if (!*pp) r = sim_fail(E_ENGINE_ILLEGAL, "%p is not an IO", io);
    else {
        simio *o = *pp;
        *pp = o->next;
        o->magic = 0;
        free(o);
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

static axclError set_buf(void *io, int isin, uint32_t index, const void *buf, uint64_t size) {
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simio *o = find_io(io);
    if (!o) r = sim_fail(E_ENGINE_ILLEGAL, "%p is not an IO", io);
    else if (index >= (uint32_t)(isin ? o->m->spec.nin : o->m->spec.nout))
        r = sim_fail(E_ENGINE_INVALID_INDEX, "%s index %u", isin ? "input" : "output", index);
    else if (!sim_is_device_addr((uint64_t)(uintptr_t)buf))
        r = sim_fail(E_ENGINE_ILLEGAL, "%s %u: buffer %p is not device memory", isin ? "input" : "output", index, buf);
    else {
        void *h;
        sim_count_bind();
        if (sim_resolve((uint64_t)(uintptr_t)buf, size, &h))
            r = sim_fail(E_ENGINE_ILLEGAL, "%s %u: buffer %p size %llu is not device memory", isin ? "input" : "output", index, buf,
                         (unsigned long long)size);
        /* the offset into the allocation: the low 34 bits of a device address (runtime.c) */
        else if (!(r = sim_check_bind((uint64_t)(uintptr_t)buf & ((1ull << 34) - 1), isin, index))) {
            (isin ? o->in_addr : o->out_addr)[index] = (uint64_t)(uintptr_t)buf;
            (isin ? o->in_size : o->out_size)[index] = size;
        }
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtEngineSetInputBufferByIndex(void *io, uint32_t index, const void *buf, uint64_t size) { return set_buf(io, 1, index, buf, size); }
EXPORT axclError axclrtEngineSetOutputBufferByIndex(void *io, uint32_t index, const void *buf, uint64_t size) { return set_buf(io, 0, index, buf, size); }

static int io_index(void *io, int isin, const char *name) {
    pthread_mutex_lock(&g_mu);
    simio *o = find_io(io);
    int i = (o && name) ? (isin ? sim_find_in(&o->m->spec, name) : sim_find_out(&o->m->spec, name)) : -1;
    pthread_mutex_unlock(&g_mu);
    return i;
}

EXPORT axclError axclrtEngineSetInputBufferByName(void *io, const char *name, const void *buf, uint64_t size) {
    int i = io_index(io, 1, name);
    if (i < 0) return sim_fail(E_ENGINE_INVALID_INDEX, "no input named %s", name ? name : "(null)");
    return set_buf(io, 1, (uint32_t)i, buf, size);
}

EXPORT axclError axclrtEngineSetOutputBufferByName(void *io, const char *name, const void *buf, uint64_t size) {
    int i = io_index(io, 0, name);
    if (i < 0) return sim_fail(E_ENGINE_INVALID_INDEX, "no output named %s", name ? name : "(null)");
    return set_buf(io, 0, (uint32_t)i, buf, size);
}

static axclError get_buf(void *io, int isin, uint32_t index, void **buf, uint64_t *size) {
    if (!buf || !size) return sim_fail(E_ENGINE_NULL, "null out-param");
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simio *o = find_io(io);
    if (!o) r = sim_fail(E_ENGINE_ILLEGAL, "%p is not an IO", io);
    else if (index >= (uint32_t)(isin ? o->m->spec.nin : o->m->spec.nout))
        r = sim_fail(E_ENGINE_INVALID_INDEX, "%s index %u", isin ? "input" : "output", index);
    else {
        *buf = (void *)(uintptr_t)(isin ? o->in_addr : o->out_addr)[index];
        *size = (isin ? o->in_size : o->out_size)[index];
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

EXPORT axclError axclrtEngineGetInputBufferByIndex(void *io, uint32_t index, void **buf, uint64_t *size) { return get_buf(io, 1, index, buf, size); }
EXPORT axclError axclrtEngineGetOutputBufferByIndex(void *io, uint32_t index, void **buf, uint64_t *size) { return get_buf(io, 0, index, buf, size); }

EXPORT axclError axclrtEngineSetDynamicBatchSize(void *io, uint32_t batch) {
    if (batch != 1) return sim_fail(E_ENGINE_ILLEGAL, "batch size %u (only 1 is simulated)", batch);
    pthread_mutex_lock(&g_mu);
    axclError r = find_io(io) ? 0 : sim_fail(E_ENGINE_ILLEGAL, "%p is not an IO", io);
    pthread_mutex_unlock(&g_mu);
    return r;
}

/* ---------------------------------------------------------------- execute */

EXPORT axclError axclrtEngineExecute(uint64_t id, uint64_t ctx, uint32_t group, void *io) {
    sim_round_trip('x');
    return sim_execute(id, ctx, group, io);
}

/* sim_execute is axclrtEngineExecute without the round trip (also what a stream runs). */
axclError sim_execute(uint64_t id, uint64_t ctx, uint32_t group, void *io) {
    void *in[SIM_MAX_TENSORS], *out[SIM_MAX_TENSORS];
    pthread_mutex_lock(&g_mu);
    axclError r = 0;
    simdev *d = engine_dev(&r);
    simmodel *m = NULL;
    if (!d) goto fail;
    m = find_model(id);
    if (!m) {
        r = sim_fail(E_ENGINE_ILLEGAL, "model id %llu is not loaded", (unsigned long long)id);
        goto fail;
    }
    if (m->dev != d) {
        r = sim_fail(E_ENGINE_ILLEGAL, "model %llu lives on device %d, thread is bound to device %d", (unsigned long long)id, m->dev->id, d->id);
        goto fail;
    }
    if ((ctx >> 16) != m->id || (ctx & 0xffff) == 0 || (ctx & 0xffff) > m->nctx) {
        r = sim_fail(E_ENGINE_ILLEGAL, "engine context %llu does not belong to model %llu", (unsigned long long)ctx, (unsigned long long)id);
        goto fail;
    }
    if (group >= (uint32_t)m->spec.ngroups) {
        r = sim_fail(E_ENGINE_INVALID_INDEX, "group %u of %d", group, m->spec.ngroups);
        goto fail;
    }
    simio *o = find_io(io);
    if (!o || o->m != m) {
        r = sim_fail(E_ENGINE_ILLEGAL, "%p is not an IO of model %llu", io, (unsigned long long)id);
        goto fail;
    }
    if ((r = sim_exec_fault(d))) goto fail;
    if (m->invalid[0]) {
        r = sim_fail(E_ENGINE_ILLEGAL, "the simulator cannot run model %s: %s", m->spec.name, m->invalid);
        goto fail;
    }
    for (int k = 0; k < 2; k++) {
        int n = k == 0 ? m->spec.nin : m->spec.nout;
        for (int i = 0; i < n; i++) {
            simtensor *t = k == 0 ? &m->spec.in[i] : &m->spec.out[i];
            uint64_t addr = (k == 0 ? o->in_addr : o->out_addr)[i];
            uint64_t size = (k == 0 ? o->in_size : o->out_size)[i];
            uint64_t need = t->bytes[group];
            if (!addr) {
                r = sim_fail(E_ENGINE_ILLEGAL, "%s %d (%s) has no buffer", k == 0 ? "input" : "output", i, t->name);
                goto fail;
            }
            if (size < need) {
                r = sim_fail(E_ENGINE_ILLEGAL, "%s %d (%s): buffer of %llu bytes, group %u needs %llu", k == 0 ? "input" : "output", i,
                             t->name, (unsigned long long)size, group, (unsigned long long)need);
                goto fail;
            }
            if ((r = sim_resolve(addr, need, k == 0 ? &in[i] : &out[i]))) goto fail;
        }
    }
    long exec_us = g_cfg.exec_us;
    if (m->spec.kind == KIND_LLM_LAYER && g_cfg.prefill_exec_us > 0) {
        /* a group with more input rows than the smallest (the decode group) is a prefill chunk */
        int x = sim_find_in(&m->spec, "input");
        if (x >= 0) {
            uint64_t lo = m->spec.in[x].bytes[group];
            for (int g = 0; g < m->spec.ngroups; g++)
                if (m->spec.in[x].bytes[g] < lo) lo = m->spec.in[x].bytes[g];
            if (m->spec.in[x].bytes[group] > lo) exec_us = g_cfg.prefill_exec_us;
        }
    }
    long sd_us = m->spec.kind == KIND_SD_TEXT ? g_cfg.text_exec_us
               : m->spec.kind == KIND_SD_UNET ? g_cfg.unet_exec_us
               : m->spec.kind == KIND_SD_VAE_DEC || m->spec.kind == KIND_SD_VAE_ENC ? g_cfg.vae_exec_us : 0;
    if (sd_us > 0) exec_us = sd_us;
    int nocompute = g_cfg.nocompute;
    pthread_mutex_unlock(&g_mu);

    double t0 = sim_now();
    if (nocompute) sim_nocompute(m, (int)group, in, out);
    else r = sim_run(m, (int)group, in, out);
    if (exec_us > 0) {
        double until = t0 + (double)exec_us * 1e-6;
        struct timespec ts;
        for (double now = sim_now(); now < until; now = sim_now()) {
            double left = until - now;
            ts.tv_sec = (time_t)left;
            ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
            nanosleep(&ts, NULL);
        }
    }
    double busy = sim_now() - t0;
    pthread_mutex_lock(&g_mu);
    sim_add_busy(d, busy);
    sim_exec_done(d);
    pthread_mutex_unlock(&g_mu);
    return r;
fail:
    pthread_mutex_unlock(&g_mu);
    return r;
}

/* sim_llm_loaded_on reports whether an llm_build engine (an LLM layer or post) other than except is
 * loaded on d (card.c: the load-order drop). Caller holds g_mu. */
int sim_llm_loaded_on(const simdev *d, const simmodel *except) {
    for (int i = 0; i < g_nmodels; i++) {
        const simmodel *o = g_models[i];
        if (o && o != except && o->loaded && o->dev == d && (o->spec.kind == KIND_LLM_LAYER || o->spec.kind == KIND_LLM_POST))
            return 1;
    }
    return 0;
}
