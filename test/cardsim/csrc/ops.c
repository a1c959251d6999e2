/* kilnsim ops: the arithmetic of every simulated model kind. Everything here is specified in
 * test/cardsim/README.md ("Ops") and, for the LLM kinds, mirrored bit for bit by the Go
 * reference in package cardsim (reference.go). Rules that make that possible:
 *   - float32 arithmetic only, one rounding per operation (built with -ffp-contract=off);
 *   - fixed summation order (ascending index), accumulators start at 0;
 *   - no libm transcendental calls: exp is sim_exp below (a fixed polynomial);
 *   - bf16 <- float32 is round-to-nearest-even; bf16 -> float32 is exact. */
#include "sim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define PE_SALT 0x50455045ull
#define POS_SALT 0x504f5321ull
#define MROPE_SALT 0x4d524f50ull

float sim_bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t sim_f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* sim_unit: the (idx+1)-th output of splitmix64 seeded with seed, mapped to [-1, 1). */
float sim_unit(uint64_t seed, uint64_t idx) {
    uint64_t u = mix64(seed + (idx + 1) * 0x9e3779b97f4a7c15ull);
    return (float)((int32_t)(u >> 40) - 8388608) * (1.0f / 8388608.0f);
}

/* sim_exp: e^x for the softmax, 0 below -80. */
float sim_exp(float x) {
    if (!(x >= -80.0f)) return 0.0f;
    if (x > 80.0f) x = 80.0f;
    float t = x * 1.44269504f;
    int n = (int)t;
    if ((float)n > t) n -= 1;
    float f = t - (float)n;
    float p = 0.0001540353f;
    p = p * f + 0.001333356f;
    p = p * f + 0.009618129f;
    p = p * f + 0.05550411f;
    p = p * f + 0.2402265f;
    p = p * f + 0.6931472f;
    p = p * f + 1.0f;
    uint32_t bits = (uint32_t)(n + 127) << 23;
    float s;
    memcpy(&s, &bits, 4);
    return p * s;
}

static inline float amp_of(int64_t n) { return (float)(1.0 / sqrt((double)n)); }
static inline float softsign4(float h) { return h / (1.0f + 0.25f * fabsf(h)); }
static inline float softsign1(float h) { return h / (1.0f + fabsf(h)); }
static inline float tri(float u) { return 4.0f * fabsf(u - floorf(u) - 0.5f) - 1.0f; }

/* ---------------------------------------------------------------- validation */

#include <stdarg.h>
static int verr(char *err, size_t errn, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errn, fmt, ap);
    va_end(ap);
    return -1;
}

typedef struct { const char *name; int32_t dt; } want;

/* The UNet's inputs by the vendor's names (sd1.5-lcm.axera model_convert/sd15_export_onnx.py: sample,
 * encoder_hidden_states, then the time row appended last), else by shape as kiln's fallback does:
 * the 4-dim input is the sample, the 3-dim one the text, the other the time row. */
#define UNET_TIME "/down_blocks.0/resnets.0/act_1/Mul_output_0"
static int unet_roles(const simspec *s, int g, int *xi, int *ti, int *ei) {
    *xi = sim_find_in(s, "sample");
    *ti = sim_find_in(s, UNET_TIME);
    *ei = sim_find_in(s, "encoder_hidden_states");
    if (*xi >= 0 && *ti >= 0 && *ei >= 0) return 0;
    *xi = *ti = *ei = -1;
    for (int i = 0; i < s->nin; i++) {
        int *r = s->in[i].ndim[g] == 4 ? xi : s->in[i].ndim[g] == 3 ? ei : ti;
        if (*r >= 0) return -1;
        *r = i;
    }
    return *xi < 0 || *ti < 0 || *ei < 0 ? -1 : 0;
}

static int need_tensors(simspec *s, const want *in, int nin, const want *out, int nout, char *err, size_t errn) {
    for (int i = 0; i < nin; i++) {
        int k = sim_find_in(s, in[i].name);
        if (k < 0) return verr(err, errn, "%s: missing input %s", s->kind_name, in[i].name);
        if (in[i].dt && s->in[k].dtype != in[i].dt) return verr(err, errn, "input %s has dtype %d, want %d", in[i].name, s->in[k].dtype, in[i].dt);
    }
    for (int i = 0; i < nout; i++) {
        int k = sim_find_out(s, out[i].name);
        if (k < 0) return verr(err, errn, "%s: missing output %s", s->kind_name, out[i].name);
        if (out[i].dt && s->out[k].dtype != out[i].dt) return verr(err, errn, "output %s has dtype %d, want %d", out[i].name, s->out[k].dtype, out[i].dt);
    }
    return 0;
}

#define IN(s, n) (&(s)->in[sim_find_in((s), (n))])
#define OUT(s, n) (&(s)->out[sim_find_out((s), (n))])

/* Qwen3-VL's vision encoder (Qwen3-VL.AXERA python/infer_image.py, model_convert/export.py):
 * input hidden_states uint8 [1, N, P, 3] — N patches in merge-window order, P = temporal ×
 * patch × patch values per channel — and 1 or 4 outputs (hidden_states_out,
 * deepstack_feature_0..2) of N/merge² rows of hidden values, bf16 or fp32. */
static int validate_vision_patches(simspec *s, char *err, size_t errn) {
    int64_t D = sim_param(s, "hidden", 0), M = sim_param(s, "merge", 0);
    if (s->nin != 1 || (s->nout != 1 && s->nout != 4) || s->in[0].dtype != DT_UINT8)
        return verr(err, errn, "vision (patches): want one uint8 input and 1 or 4 outputs", 0), E_ENGINE_ILLEGAL;
    if (D < 1 || D > 65536 || M < 1 || M > 8) return verr(err, errn, "vision (patches): bad hidden/merge", 0), E_ENGINE_ILLEGAL;
    for (int g = 0; g < s->ngroups; g++) {
        simtensor *t = &s->in[0];
        if (t->ndim[g] != 4 || t->dims[g][0] != 1 || t->dims[g][3] != 3 || t->dims[g][1] % (M * M) || t->dims[g][2] < 2 ||
            t->dims[g][1] > 65536 || t->dims[g][2] > 65536)
            return verr(err, errn, "group %lld: input must be [1,N,P,3] uint8 with N divisible by merge^2", (long long)g), E_ENGINE_ILLEGAL;
        for (int o = 0; o < s->nout; o++)
            if ((s->out[o].dtype != DT_BF16 && s->out[o].dtype != DT_FP32) ||
                s->out[o].elems[g] != (uint64_t)(t->dims[g][1] / (M * M)) * (uint64_t)D)
                return verr(err, errn, "group %lld: output %lld must be bf16/fp32 N/merge^2 x hidden", (long long)g, (long long)o), E_ENGINE_ILLEGAL;
    }
    return 0;
}

axclError sim_validate(simspec *s, char *err, size_t errn) {
    int64_t D = sim_param(s, "hidden", 0), K = sim_param(s, "kv_dim", 0);
    switch (s->kind) {
    case KIND_LLM_LAYER: {
        want in[] = {{"input", DT_BF16}, {"indices", DT_UINT32}, {"mask", DT_BF16}, {"K_cache", DT_BF16}, {"V_cache", DT_BF16}};
        want out[] = {{"K_cache_out", DT_BF16}, {"V_cache_out", DT_BF16}, {"output", DT_BF16}};
        if (need_tensors(s, in, 5, out, 3, err, errn)) return E_ENGINE_ILLEGAL;
        if (D < 1 || K < 1 || D > 65536 || K > 65536) return verr(err, errn, "bad hidden/kv_dim %lld", (long long)D), E_ENGINE_ILLEGAL;
        for (int g = 0; g < s->ngroups; g++) {
            /* T tokens; indices hold T positions, or 3 rows of T (mRoPE t/h/w, Qwen3-VL) */
            uint64_t T = IN(s, "input")->elems[g] / (uint64_t)D, I = IN(s, "indices")->elems[g];
            if (T < 1 || (I != T && I != 3 * T))
                return verr(err, errn, "group %lld: indices must hold T or 3*T positions", (long long)g), E_ENGINE_ILLEGAL;
            uint64_t C = IN(s, "mask")->elems[g] / T;
            if (T > 4096 || IN(s, "mask")->elems[g] % T || C < T || C > (1u << 20))
                return verr(err, errn, "group %lld: mask must be [T, H+T]", (long long)g), E_ENGINE_ILLEGAL;
            uint64_t H = C - T;
            if (IN(s, "input")->elems[g] != T * (uint64_t)D || OUT(s, "output")->elems[g] != T * (uint64_t)D ||
                OUT(s, "K_cache_out")->elems[g] != T * (uint64_t)K || OUT(s, "V_cache_out")->elems[g] != T * (uint64_t)K)
                return verr(err, errn, "group %lld: input/output/K_cache_out/V_cache_out sizes do not match T, hidden, kv_dim", (long long)g), E_ENGINE_ILLEGAL;
            if (H > 0 && (IN(s, "K_cache")->elems[g] != H * (uint64_t)K || IN(s, "V_cache")->elems[g] != H * (uint64_t)K))
                return verr(err, errn, "group %lld: K_cache/V_cache must hold H*kv_dim", (long long)g), E_ENGINE_ILLEGAL;
        }
        return 0;
    }
    case KIND_LLM_POST: {
        want in[] = {{"input", DT_BF16}};
        want out[] = {{"output", 0}};
        if (need_tensors(s, in, 1, out, 1, err, errn)) return E_ENGINE_ILLEGAL;
        int64_t V = sim_param(s, "vocab", 0), R = sim_param(s, "rank", 16);
        int32_t odt = OUT(s, "output")->dtype;
        if (D < 1 || D > 65536 || V < 1 || V > (1 << 22) || R < 1 || R > 256 || (odt != DT_BF16 && odt != DT_FP32))
            return verr(err, errn, "bad hidden/vocab/rank or output dtype %lld", (long long)odt), E_ENGINE_ILLEGAL;
        for (int g = 0; g < s->ngroups; g++)
            if (IN(s, "input")->elems[g] != (uint64_t)D || OUT(s, "output")->elems[g] != (uint64_t)V)
                return verr(err, errn, "group %lld: input must hold hidden, output vocab elements", (long long)g), E_ENGINE_ILLEGAL;
        return 0;
    }
    case KIND_VISION: {
        /* One image in, one embedding out, whatever their names: the vendor's
         * encoders call them pixel_values/last_hidden_state (SmolVLM) or
         * input/output. With param merge: Qwen3-VL's patch input and its
         * embeddings plus 3 deepstack outputs (vision_patches). */
        if (sim_param(s, "merge", 0) > 0) return validate_vision_patches(s, err, errn);
        if (s->nin != 1 || s->nout != 1 || s->in[0].dtype != DT_UINT8)
            return verr(err, errn, "vision: want one uint8 input and one output", 0), E_ENGINE_ILLEGAL;
        int64_t G = sim_param(s, "grid", 0);
        int32_t odt = s->out[0].dtype;
        if (D < 1 || D > 65536 || G < 1 || G > 256 || (odt != DT_BF16 && odt != DT_FP32))
            return verr(err, errn, "bad hidden/grid or output dtype %lld", (long long)odt), E_ENGINE_ILLEGAL;
        for (int g = 0; g < s->ngroups; g++) {
            simtensor *t = &s->in[0];
            if (t->ndim[g] != 4 || t->dims[g][0] != 1 || t->dims[g][3] != 3 || t->dims[g][1] % G || t->dims[g][2] % G ||
                (uint64_t)t->dims[g][1] * (uint64_t)t->dims[g][2] / (uint64_t)(G * G) > 65536 ||
                s->out[0].elems[g] != (uint64_t)(G * G * D))
                return verr(err, errn, "group %lld: input must be [1,H,W,3] uint8 with H,W divisible by grid; output grid*grid*hidden", (long long)g),
                       E_ENGINE_ILLEGAL;
        }
        return 0;
    }
    case KIND_SD_TEXT: {
        want in[] = {{"input_ids", DT_INT32}};
        want out[] = {{"last_hidden_state", DT_FP32}};
        if (need_tensors(s, in, 1, out, 1, err, errn)) return E_ENGINE_ILLEGAL;
        int64_t V = sim_param(s, "vocab", 0);
        if (D < 1 || D > 65536 || V < 1 || V > (1 << 24)) return verr(err, errn, "bad hidden/vocab %lld", (long long)D), E_ENGINE_ILLEGAL;
        for (int g = 0; g < s->ngroups; g++)
            if (OUT(s, "last_hidden_state")->elems[g] != IN(s, "input_ids")->elems[g] * (uint64_t)D)
                return verr(err, errn, "group %lld: last_hidden_state must be [tokens, hidden]", (long long)g), E_ENGINE_ILLEGAL;
        return 0;
    }
    case KIND_SD_UNET: {
        if (s->nin != 3 || s->nout != 1) return verr(err, errn, "unet needs 3 inputs (sample, time embedding, encoder_hidden_states) and 1 output", 0), E_ENGINE_ILLEGAL;
        for (int i = 0; i < 3; i++)
            if (s->in[i].dtype != DT_FP32) return verr(err, errn, "unet input %lld must be fp32", (long long)i), E_ENGINE_ILLEGAL;
        if (s->out[0].dtype != DT_FP32) return verr(err, errn, "unet output must be fp32", 0), E_ENGINE_ILLEGAL;
        for (int g = 0; g < s->ngroups; g++) {
            int xi, ti, ei;
            if (unet_roles(s, g, &xi, &ti, &ei))
                return verr(err, errn, "group %lld: unet inputs are neither named sample, " UNET_TIME ", encoder_hidden_states nor shaped [1,4,h,w], [1,N], [1,S,F]", (long long)g), E_ENGINE_ILLEGAL;
            simtensor *x = &s->in[xi], *e = &s->in[ei];
            if (x->ndim[g] != 4 || x->dims[g][1] != 4 || s->out[0].elems[g] != x->elems[g] || e->ndim[g] != 3 || e->dims[g][2] < 8)
                return verr(err, errn, "group %lld: sample [1,4,h,w], encoder_hidden_states [1,S,F>=8], output like sample", (long long)g), E_ENGINE_ILLEGAL;
        }
        return 0;
    }
    case KIND_SD_VAE_DEC:
    case KIND_SD_VAE_ENC: {
        if (s->nin != 1 || s->nout != 1 || s->in[0].dtype != DT_FP32 || s->out[0].dtype != DT_FP32)
            return verr(err, errn, "vae needs one fp32 input and one fp32 output", 0), E_ENGINE_ILLEGAL;
        for (int g = 0; g < s->ngroups; g++) {
            simtensor *x = &s->in[0], *y = &s->out[0];
            int ok = x->ndim[g] == 4 && y->ndim[g] == 4 && x->dims[g][0] == 1 && y->dims[g][0] == 1;
            if (ok && s->kind == KIND_SD_VAE_DEC)
                ok = x->dims[g][1] == 4 && y->dims[g][1] == 3 && y->dims[g][2] == 8 * x->dims[g][2] && y->dims[g][3] == 8 * x->dims[g][3];
            if (ok && s->kind == KIND_SD_VAE_ENC)
                ok = x->dims[g][1] == 3 && y->dims[g][1] == 8 && x->dims[g][2] == 8 * y->dims[g][2] && x->dims[g][3] == 8 * y->dims[g][3];
            if (!ok) return verr(err, errn, "group %lld: vae shapes must be [1,4,h,w] <-> [1,3,8h,8w] (encoder: [1,8,h,w] out)", (long long)g), E_ENGINE_ILLEGAL;
        }
        return 0;
    }
    }
    return verr(err, errn, "unknown kind %lld", (long long)s->kind), E_ENGINE_ILLEGAL;
}

/* ---------------------------------------------------------------- weights */

/* weights returns the model's cached weight array of n entries, where entry idx is
 * sim_unit(seed, idx) * amp(idx), building it at first use; NULL if n is too large to cache. */
typedef float (*ampfn)(simmodel *m, uint64_t idx);

static float *weights(simmodel *m, size_t n, ampfn amp, uint64_t seed) {
    if (n > (size_t)1 << 22) return NULL; /* > 16 MiB: weights are recomputed from Unit() on the fly */
    pthread_mutex_lock(&m->wmu);
    if (!m->w && n) {
        float *w = malloc(n * sizeof *w);
        if (w) {
            for (size_t i = 0; i < n; i++) w[i] = sim_unit(seed, i) * amp(m, i);
            m->w = w;
            m->wn = n;
        }
    }
    float *w = m->w;
    pthread_mutex_unlock(&m->wmu);
    return w;
}

static float layer_amp(simmodel *m, uint64_t idx) {
    int64_t D = sim_param(&m->spec, "hidden", 0), K = sim_param(&m->spec, "kv_dim", 0);
    return idx < 3ull * (uint64_t)(K * D) ? amp_of(D) : amp_of(K);
}

static float post_amp(simmodel *m, uint64_t idx) {
    int64_t D = sim_param(&m->spec, "hidden", 0), R = sim_param(&m->spec, "rank", 16);
    return idx < (uint64_t)(R * D) ? amp_of(D) : (float)(4.0 / sqrt((double)R));
}

#define WGT(w, m, seed, idx, ampf) ((w) ? (w)[idx] : sim_unit((seed), (idx)) * ampf((m), (idx)))

/* ---------------------------------------------------------------- LLM layer */

static axclError run_llm_layer(simmodel *m, int g, void **in, void **out) {
    simspec *s = &m->spec;
    const int64_t D = sim_param(s, "hidden", 0), K = sim_param(s, "kv_dim", 0);
    const uint64_t seed = (uint64_t)sim_param(s, "seed", 0);
    const uint16_t *x_in = in[sim_find_in(s, "input")];
    const uint32_t *idx = in[sim_find_in(s, "indices")];
    const uint16_t *mask = in[sim_find_in(s, "mask")];
    const uint16_t *kc = in[sim_find_in(s, "K_cache")];
    const uint16_t *vc = in[sim_find_in(s, "V_cache")];
    uint16_t *ko = out[sim_find_out(s, "K_cache_out")];
    uint16_t *vo = out[sim_find_out(s, "V_cache_out")];
    uint16_t *y = out[sim_find_out(s, "output")];
    const int64_t T = (int64_t)s->in[sim_find_in(s, "input")].elems[g] / D;
    /* R = 3: mRoPE, row (i % 3) of indices places dimension i (t, h, w interleaved) */
    const int64_t R = (int64_t)s->in[sim_find_in(s, "indices")].elems[g] / T;
    const int64_t C = (int64_t)s->in[sim_find_in(s, "mask")].elems[g] / T;
    const int64_t H = C - T;
    const int64_t MR = sim_param(s, "mrope", 0);
    const float *w = weights(m, (size_t)(4 * K * D), layer_amp, seed);
    const float scale = amp_of(K);

    float *x = malloc(sizeof(float) * (size_t)(T * D));
    float *q = malloc(sizeof(float) * (size_t)(T * K));
    uint16_t *kn = malloc(sizeof(uint16_t) * (size_t)(T * K)); /* new K rows (bf16) */
    uint16_t *vn = malloc(sizeof(uint16_t) * (size_t)(T * K));
    float *sc = malloc(sizeof(float) * (size_t)C);
    char *vis = malloc((size_t)C);
    float *a = malloc(sizeof(float) * (size_t)K);
    if (!x || !q || !kn || !vn || !sc || !vis || !a) {
        free(x), free(q), free(kn), free(vn), free(sc), free(vis), free(a);
        return sim_fail(E_ENGINE_NO_MEMORY, "host out of memory");
    }
    for (int64_t i = 0; i < T * D; i++) x[i] = sim_bf2f(x_in[i]);
    /* projections */
    for (int64_t r = 0; r < T; r++) {
        const float *xr = x + r * D;
        for (int64_t i = 0; i < K; i++) {
            uint64_t pos = idx[(i % R) * T + r];
            float aq = 0.0f, ak = 0.0f, av = 0.0f;
            for (int64_t j = 0; j < D; j++) {
                uint64_t o = (uint64_t)(i * D + j);
                aq = aq + WGT(w, m, seed, o, layer_amp) * xr[j];
                ak = ak + WGT(w, m, seed, (uint64_t)(K * D) + o, layer_amp) * xr[j];
                av = av + WGT(w, m, seed, (uint64_t)(2 * K * D) + o, layer_amp) * xr[j];
            }
            float pe = sim_unit(seed ^ PE_SALT, pos * (uint64_t)K + (uint64_t)i) * 0.5f;
            q[r * K + i] = aq + pe;
            kn[r * K + i] = sim_f2bf(ak + pe);
            vn[r * K + i] = sim_f2bf(av);
        }
    }
    /* attention */
    for (int64_t r = 0; r < T; r++) {
        const float *qr = q + r * K;
        const uint16_t *mr = mask + r * C;
        int have = 0;
        float mx = 0.0f;
        for (int64_t c = 0; c < C; c++) {
            float mv = sim_bf2f(mr[c]);
            vis[c] = 0;
            if (!(mv > -32768.0f)) continue; /* hidden: never read */
            const uint16_t *key = c < H ? kc + c * K : kn + (c - H) * K;
            float dot = 0.0f;
            for (int64_t i = 0; i < K; i++) dot = dot + qr[i] * sim_bf2f(key[i]);
            float sv = dot * scale + mv;
            sc[c] = sv;
            vis[c] = 1;
            if (!have || sv > mx) mx = sv;
            have = 1;
        }
        for (int64_t i = 0; i < K; i++) a[i] = 0.0f;
        if (have) {
            float z = 0.0f;
            for (int64_t c = 0; c < C; c++) {
                if (!vis[c]) continue;
                float e = sim_exp(sc[c] - mx);
                z = z + e;
                const uint16_t *val = c < H ? vc + c * K : vn + (c - H) * K;
                for (int64_t i = 0; i < K; i++) a[i] = a[i] + e * sim_bf2f(val[i]);
            }
            for (int64_t i = 0; i < K; i++) a[i] = a[i] / z;
        }
        for (int64_t i = 0; i < D; i++) {
            float o = 0.0f;
            for (int64_t j = 0; j < K; j++) o = o + WGT(w, m, seed, (uint64_t)(3 * K * D + i * K + j), layer_amp) * a[j];
            float h = x[r * D + i] + o;
            /* mRoPE layers (param mrope): the output also moves with the token's position of
             * row i % 3, so a wrong t/h/w position changes the answer. */
            if (MR) h = h + sim_unit(seed ^ MROPE_SALT, (uint64_t)idx[(i % R) * T + r] * (uint64_t)D + (uint64_t)i);
            y[r * D + i] = sim_f2bf(softsign4(h));
        }
    }
    memcpy(ko, kn, sizeof(uint16_t) * (size_t)(T * K));
    memcpy(vo, vn, sizeof(uint16_t) * (size_t)(T * K));
    free(x), free(q), free(kn), free(vn), free(sc), free(vis), free(a);
    return 0;
}

/* ---------------------------------------------------------------- LLM post */

static axclError run_llm_post(simmodel *m, int g, void **in, void **out) {
    (void)g;
    simspec *s = &m->spec;
    const int64_t D = sim_param(s, "hidden", 0), V = sim_param(s, "vocab", 0), R = sim_param(s, "rank", 16);
    const uint64_t seed = (uint64_t)sim_param(s, "seed", 0);
    const uint16_t *xin = in[0];
    int bf = s->out[0].dtype == DT_BF16;
    const float *w = weights(m, (size_t)(R * D + V * R), post_amp, seed);
    float z[256];
    for (int64_t r = 0; r < R; r++) {
        float acc = 0.0f;
        for (int64_t j = 0; j < D; j++) acc = acc + WGT(w, m, seed, (uint64_t)(r * D + j), post_amp) * sim_bf2f(xin[j]);
        z[r] = acc;
    }
    for (int64_t v = 0; v < V; v++) {
        float acc = 0.0f;
        if (w) {
            const float *u = w + R * D + v * R;
            for (int64_t r = 0; r < R; r++) acc = acc + u[r] * z[r];
        } else {
            for (int64_t r = 0; r < R; r++) acc = acc + sim_unit(seed, (uint64_t)(R * D + v * R + r)) * post_amp(m, (uint64_t)(R * D + v * R + r)) * z[r];
        }
        if (bf) ((uint16_t *)out[0])[v] = sim_f2bf(acc);
        else ((float *)out[0])[v] = acc;
    }
    return 0;
}

/* ---------------------------------------------------------------- vision encoder */

static axclError run_vision(simmodel *m, int g, void **in, void **out) {
    simspec *s = &m->spec;
    const int64_t D = sim_param(s, "hidden", 0), G = sim_param(s, "grid", 0);
    const uint64_t seed = (uint64_t)sim_param(s, "seed", 0);
    simtensor *t = &s->in[0];
    const int64_t Hh = t->dims[g][1], Ww = t->dims[g][2], ph = Hh / G, pw = Ww / G;
    const uint8_t *px = in[0];
    int bf = s->out[0].dtype == DT_BF16;
    for (int64_t ty = 0; ty < G; ty++)
        for (int64_t tx = 0; tx < G; tx++) {
            int64_t tok = ty * G + tx;
            uint32_t sum[3] = {0, 0, 0};
            for (int64_t yy = ty * ph; yy < (ty + 1) * ph; yy++)
                for (int64_t xx = tx * pw; xx < (tx + 1) * pw; xx++)
                    for (int c = 0; c < 3; c++) sum[c] += px[(yy * Ww + xx) * 3 + c];
            float f[3];
            for (int c = 0; c < 3; c++) f[c] = (float)sum[c] / (float)(ph * pw * 255);
            for (int64_t i = 0; i < D; i++) {
                float acc = sim_unit(seed, (uint64_t)(3 * D + tok * D + i)) * 0.5f;
                for (int c = 0; c < 3; c++) acc = acc + sim_unit(seed, (uint64_t)(i * 3 + c)) * f[c];
                float v = softsign4(acc);
                if (bf) ((uint16_t *)out[0])[tok * D + i] = sim_f2bf(v);
                else ((float *)out[0])[tok * D + i] = v;
            }
        }
    return 0;
}

/* Qwen3-VL's encoder on the patch layout (validate_vision_patches): merged token k takes
 * rows k*M²..k*M²+M²-1 (its merge window); for each sub-patch j and channel c two features,
 * the mean and a position-weighted mean over the P values, so any other patch order, window
 * order or a missing temporal copy changes the rows. Output o uses seed + o*0x1000. */
static axclError run_vision_patches(simmodel *m, int g, void **in, void **out) {
    simspec *s = &m->spec;
    const int64_t D = sim_param(s, "hidden", 0), M = sim_param(s, "merge", 0);
    const uint64_t seed = (uint64_t)sim_param(s, "seed", 0);
    const int64_t N = s->in[0].dims[g][1], P = s->in[0].dims[g][2], W = M * M, NF = 6 * W, NT = N / W;
    const uint8_t *px = in[0];
    float feat[6 * 64];
    for (int64_t k = 0; k < NT; k++) {
        for (int64_t j = 0; j < W; j++) {
            const uint8_t *row = px + (k * W + j) * P * 3;
            for (int c = 0; c < 3; c++) {
                uint32_t sum = 0;
                float wsum = 0.0f;
                for (int64_t p = 0; p < P; p++) {
                    sum += row[p * 3 + c];
                    wsum = wsum + sim_unit(seed ^ PE_SALT, (uint64_t)p) * (float)row[p * 3 + c];
                }
                feat[(j * 3 + c) * 2] = (float)sum / (float)(P * 255);
                feat[(j * 3 + c) * 2 + 1] = wsum / (float)(P * 255);
            }
        }
        for (int o = 0; o < s->nout; o++) {
            uint64_t so = seed + (uint64_t)o * 0x1000u;
            int bf = s->out[o].dtype == DT_BF16;
            for (int64_t i = 0; i < D; i++) {
                float acc = sim_unit(so, (uint64_t)(NF * D + k * D + i)) * 0.5f;
                for (int64_t f = 0; f < NF; f++) acc = acc + sim_unit(so, (uint64_t)(i * NF + f)) * feat[f];
                float v = softsign4(acc);
                if (bf) ((uint16_t *)out[o])[k * D + i] = sim_f2bf(v);
                else ((float *)out[o])[k * D + i] = v;
            }
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- SD 1.5 */

static axclError run_sd_text(simmodel *m, int g, void **in, void **out) {
    simspec *s = &m->spec;
    const int64_t F = sim_param(s, "hidden", 0), V = sim_param(s, "vocab", 0);
    const uint64_t seed = (uint64_t)sim_param(s, "seed", 0);
    const int64_t S = (int64_t)s->in[0].elems[g];
    const int32_t *ids = in[0];
    float *o = out[0];
    for (int64_t t = 0; t < S; t++)
        if (ids[t] < 0 || ids[t] >= V) return sim_fail(E_ENGINE_EXECUTE_FAIL, "input_ids[%lld] = %d is outside the vocabulary [0,%lld)", (long long)t, ids[t], (long long)V);
    float *acc = calloc((size_t)F, sizeof *acc);
    if (!acc) return sim_fail(E_ENGINE_NO_MEMORY, "host out of memory");
    for (int64_t t = 0; t < S; t++)
        for (int64_t i = 0; i < F; i++) {
            acc[i] = acc[i] + sim_unit(seed, (uint64_t)ids[t] * (uint64_t)F + (uint64_t)i);
            o[t * F + i] = acc[i] / (float)(t + 1) + 0.25f * sim_unit(seed ^ POS_SALT, (uint64_t)(t * F + i));
        }
    free(acc);
    return 0;
}

static axclError run_sd_unet(simmodel *m, int g, void **in, void **out) {
    simspec *s = &m->spec;
    int xi, ti, ei;
    if (unet_roles(s, g, &xi, &ti, &ei)) return sim_fail(E_ENGINE_EXECUTE_FAIL, "unet inputs not found");
    const float *x = in[xi], *temb = in[ti], *ehs = in[ei];
    float *eps = out[0];
    const int64_t h = s->in[xi].dims[g][2], w = s->in[xi].dims[g][3];
    const int64_t NT = (int64_t)s->in[ti].elems[g];
    const int64_t S = s->in[ei].dims[g][1], F = s->in[ei].dims[g][2];
    float sv[8];
    for (int k = 0; k < 8; k++) {
        float acc = 0.0f;
        for (int64_t t = 0; t < S; t++) acc = acc + ehs[t * F + k];
        sv[k] = acc / (float)S;
    }
    float tau = 0.0f;
    for (int64_t i = 0; i < NT; i++) tau = tau + temb[i];
    tau = tau / (float)NT;
    const float gain = 1.0f + 0.05f * tau;
    for (int c = 0; c < 4; c++) {
        int fx = 1 + (int)(fabsf(sv[c]) * 8.0f) % 7;
        int fy = 1 + (int)(fabsf(sv[c + 4]) * 8.0f) % 7;
        for (int64_t yy = 0; yy < h; yy++)
            for (int64_t xx = 0; xx < w; xx++) {
                int64_t o = (c * h + yy) * w + xx;
                float u = (float)(fx * xx) / (float)w + (float)(fy * yy) / (float)h + sv[c];
                eps[o] = x[o] - tri(u) * gain;
            }
    }
    return 0;
}

static axclError run_sd_vae_dec(simmodel *m, int g, void **in, void **out) {
    simspec *s = &m->spec;
    const uint64_t seed = (uint64_t)sim_param(s, "seed", 0);
    const float *z = in[0];
    float *img = out[0];
    const int64_t h = s->in[0].dims[g][2], w = s->in[0].dims[g][3], H = 8 * h, W = 8 * w;
    float M[12];
    for (int i = 0; i < 12; i++) M[i] = sim_unit(seed, (uint64_t)i);
    for (int c = 0; c < 3; c++)
        for (int64_t Y = 0; Y < H; Y++)
            for (int64_t X = 0; X < W; X++) {
                float v = 0.0f;
                for (int k = 0; k < 4; k++) v = v + M[c * 4 + k] * z[(k * h + Y / 8) * w + X / 8];
                img[(c * H + Y) * W + X] = 0.9f * softsign1(0.5f * v) + 0.1f * tri((float)(X + Y) / 32.0f);
            }
    return 0;
}

static axclError run_sd_vae_enc(simmodel *m, int g, void **in, void **out) {
    simspec *s = &m->spec;
    const uint64_t seed = (uint64_t)sim_param(s, "seed", 0);
    const float *img = in[0];
    float *lat = out[0];
    const int64_t h = s->out[0].dims[g][2], w = s->out[0].dims[g][3], H = 8 * h, W = 8 * w;
    float M[12];
    for (int i = 0; i < 12; i++) M[i] = sim_unit(seed, (uint64_t)i);
    for (int64_t by = 0; by < h; by++)
        for (int64_t bx = 0; bx < w; bx++) {
            float mc[3];
            for (int c = 0; c < 3; c++) {
                float acc = 0.0f;
                for (int dy = 0; dy < 8; dy++)
                    for (int dx = 0; dx < 8; dx++) acc = acc + img[(c * H + by * 8 + dy) * W + bx * 8 + dx];
                mc[c] = acc / 64.0f;
            }
            for (int k = 0; k < 4; k++) {
                float v = 0.0f;
                for (int c = 0; c < 3; c++) v = v + M[k * 3 + c] * mc[c];
                lat[(k * h + by) * w + bx] = v;
                lat[((4 + k) * h + by) * w + bx] = -6.0f + 0.1f * v;
            }
        }
    return 0;
}

axclError sim_run(simmodel *m, int group, void **in, void **out) {
    switch (m->spec.kind) {
    case KIND_LLM_LAYER: return run_llm_layer(m, group, in, out);
    case KIND_LLM_POST: return run_llm_post(m, group, in, out);
    case KIND_VISION: return sim_param(&m->spec, "merge", 0) > 0 ? run_vision_patches(m, group, in, out) : run_vision(m, group, in, out);
    case KIND_SD_TEXT: return run_sd_text(m, group, in, out);
    case KIND_SD_UNET: return run_sd_unet(m, group, in, out);
    case KIND_SD_VAE_DEC: return run_sd_vae_dec(m, group, in, out);
    case KIND_SD_VAE_ENC: return run_sd_vae_enc(m, group, in, out);
    }
    return sim_fail(E_ENGINE_EXECUTE_FAIL, "unknown kind");
}

/* sim_nocompute: shapes and copies only. An LLM layer copies input to output. */
void sim_nocompute(simmodel *m, int group, void **in, void **out) {
    simspec *s = &m->spec;
    if (s->kind == KIND_LLM_LAYER) {
        int i = sim_find_in(s, "input"), o = sim_find_out(s, "output");
        memcpy(out[o], in[i], s->in[i].bytes[group]);
    }
}
