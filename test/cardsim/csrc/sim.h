/* kilnsim: a simulator of the subset of libaxcl_rt.so (AXCL V3.10.2) that kiln uses.
 * Shared declarations of the runtime (runtime.c), the engine (engine.c) and the ops (ops.c).
 * See test/cardsim/README.md for the contract. */
#ifndef KILNSIM_H
#define KILNSIM_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

typedef int32_t axclError;

/* ---- error codes: 0x80000000 | 0x30<<16 | sub<<8 | id (axcl_base.h) ---- */
#define SIM_ERR(sub, id) ((axclError)(0x80000000u | (0x30u << 16) | ((uint32_t)(sub) << 8) | (uint32_t)(id)))
#define SUB_DEVICE 0x01
#define SUB_CONTEXT 0x02
#define SUB_MEMORY 0x05
#define SUB_CONFIG 0x06
#define SUB_ENGINE 0x07
#define ID_FAIL 0x01
#define ID_NULL_POINTER 0x02
#define ID_ILLEGAL_PARAM 0x03
#define ID_UNSUPPORT 0x04
#define ID_TIMEOUT 0x05
#define ID_NO_MEMORY 0x07
#define ID_UNEXPECT_RESPONSE 0x0A
#define ID_OPEN 0x0B
#define ID_EXECUTE_FAIL 0x0C

#define E_DEVICE_FAIL SIM_ERR(SUB_DEVICE, ID_FAIL)                    /* 0x80300101 */
#define E_DEVICE_NULL SIM_ERR(SUB_DEVICE, ID_NULL_POINTER)            /* 0x80300102 */
#define E_DEVICE_LOST SIM_ERR(SUB_DEVICE, ID_UNEXPECT_RESPONSE)       /* 0x8030010A */
#define E_DEVICE_NOT_ACTIVE SIM_ERR(SUB_DEVICE, 0x83)                 /* 0x80300183 */
#define E_DEVICE_INVALID_ID SIM_ERR(SUB_DEVICE, 0x84)                 /* 0x80300184 */
#define E_DEVICE_NO_ACTIVE_DEVICE SIM_ERR(SUB_DEVICE, 0x85)           /* 0x80300185 */
#define E_CONTEXT_NULL SIM_ERR(SUB_CONTEXT, ID_NULL_POINTER)          /* 0x80300202 */
#define E_CONTEXT_ILLEGAL SIM_ERR(SUB_CONTEXT, ID_ILLEGAL_PARAM)      /* 0x80300203 */
#define E_CONTEXT_LOST SIM_ERR(SUB_CONTEXT, ID_UNEXPECT_RESPONSE)     /* 0x8030020A */
#define E_CONTEXT_NO_BIND SIM_ERR(SUB_CONTEXT, 0x84)                  /* 0x80300284 */
#define E_MEM_NULL SIM_ERR(SUB_MEMORY, ID_NULL_POINTER)               /* 0x80300502 */
#define E_MEM_ILLEGAL SIM_ERR(SUB_MEMORY, ID_ILLEGAL_PARAM)           /* 0x80300503 */
#define E_MEM_UNSUPPORT SIM_ERR(SUB_MEMORY, ID_UNSUPPORT)             /* 0x80300504 */
#define E_MEM_NO_MEMORY SIM_ERR(SUB_MEMORY, ID_NO_MEMORY)             /* 0x80300507 */
#define E_MEM_LOST SIM_ERR(SUB_MEMORY, ID_UNEXPECT_RESPONSE)          /* 0x8030050A */
#define E_MEM_NOT_DEVICE SIM_ERR(SUB_MEMORY, 0x81)                    /* 0x80300581 */
#define E_CONFIG_ILLEGAL SIM_ERR(SUB_CONFIG, ID_ILLEGAL_PARAM)        /* 0x80300603 */
#define E_ENGINE_FAIL SIM_ERR(SUB_ENGINE, ID_FAIL)                    /* 0x80300701 */
#define E_ENGINE_NULL SIM_ERR(SUB_ENGINE, ID_NULL_POINTER)            /* 0x80300702 */
#define E_ENGINE_ILLEGAL SIM_ERR(SUB_ENGINE, ID_ILLEGAL_PARAM)        /* 0x80300703 */
#define E_ENGINE_TIMEOUT SIM_ERR(SUB_ENGINE, ID_TIMEOUT)              /* 0x80300705 */
#define E_ENGINE_NO_MEMORY SIM_ERR(SUB_ENGINE, ID_NO_MEMORY)          /* 0x80300707 */
#define E_ENGINE_LOST SIM_ERR(SUB_ENGINE, ID_UNEXPECT_RESPONSE)       /* 0x8030070A */
#define E_ENGINE_OPEN SIM_ERR(SUB_ENGINE, ID_OPEN)                    /* 0x8030070B */
#define E_ENGINE_EXECUTE_FAIL SIM_ERR(SUB_ENGINE, ID_EXECUTE_FAIL)    /* 0x8030070C */
#define E_ENGINE_INVALID_INDEX SIM_ERR(SUB_ENGINE, 0x81)              /* 0x80300781 */

/* ---- public structs (axcl_rt_type.h, axcl_rt_engine_type.h) ---- */
#define AXCL_MAX_DEVICE_COUNT 256
#define AXCLRT_ENGINE_MAX_DIM_CNT 32

typedef struct {
    uint32_t num;
    int32_t devices[AXCL_MAX_DEVICE_COUNT];
} axclrtDeviceList;

typedef struct {
    char swVersion[64];
    uint64_t uid;
    uint32_t pciDomain;
    uint32_t pciBusID;
    uint32_t pciDeviceID;
    int32_t temperature;
    uint32_t totalMemSize;
    uint32_t freeMemSize;
    uint32_t totalCmmSize;
    uint32_t freeCmmSize;
    uint32_t cpuLoading;
    uint32_t npuLoading;
    uint32_t reserved[32];
} axclrtDeviceProperties;

typedef struct {
    int32_t dimCount;
    int32_t dims[AXCLRT_ENGINE_MAX_DIM_CNT];
} axclrtEngineIODims;

/* axclrtEngineDataType */
enum {
    DT_NONE = 0, DT_INT4 = 1, DT_UINT4 = 2, DT_INT8 = 3, DT_UINT8 = 4, DT_INT16 = 5, DT_UINT16 = 6,
    DT_INT32 = 7, DT_UINT32 = 8, DT_INT64 = 9, DT_UINT64 = 10, DT_FP4 = 11, DT_FP8 = 12, DT_FP16 = 13,
    DT_BF16 = 14, DT_FP32 = 15, DT_FP64 = 16
};

/* ---- simulator state ---- */
#define SIM_MAX_DEVICES 16
#define SIM_MAX_GROUPS 16
#define SIM_MAX_TENSORS 8
#define SIM_MAX_DIMS 6
#define SIM_MAX_PARAMS 16

typedef struct simdev {
    int32_t id;
    int refcnt;
    int lost;
    int engine_init;
    int32_t vnpu;
    uint64_t cmm_used; /* bytes */
    /* thermal model */
    double temp_c;
    double last_update;      /* monotonic seconds */
    double busy_pending;     /* busy seconds not yet applied to temp_c */
    double sample_t;         /* time of the previous properties sample */
    double busy_since_sample;
    int have_sample;
    int offline; /* fault offline: every call fails with not-connected until axclrtRebootDevice (card.c) */
    int wedged;  /* wedged by a process that died mid-execute: executes fail, loads pass, until reboot */
} simdev;

typedef struct simtensor {
    char name[64];
    int32_t dtype;
    int ndim[SIM_MAX_GROUPS];
    int32_t dims[SIM_MAX_GROUPS][SIM_MAX_DIMS];
    uint64_t elems[SIM_MAX_GROUPS];
    uint64_t bytes[SIM_MAX_GROUPS];
} simtensor;

enum {
    KIND_LLM_LAYER = 1, KIND_LLM_POST, KIND_VISION, KIND_SD_TEXT, KIND_SD_UNET, KIND_SD_VAE_DEC, KIND_SD_VAE_ENC
};

typedef struct simspec {
    int kind;
    char kind_name[32];
    char name[64];
    char compiler[64];
    uint64_t weight_bytes;
    int ngroups;
    int nin, nout;
    simtensor in[SIM_MAX_TENSORS];
    simtensor out[SIM_MAX_TENSORS];
    int nparam;
    char pname[SIM_MAX_PARAMS][32];
    int64_t pval[SIM_MAX_PARAMS];
} simspec;

typedef struct simmodel {
    uint64_t id;
    simdev *dev;
    int loaded;
    simspec spec;
    uint32_t nctx;
    pthread_mutex_t wmu; /* guards the weight cache */
    float *w;            /* cached weights or NULL */
    size_t wn;
    char invalid[256];   /* why the simulator cannot compute it ("" when it can): it loads, executes fail */
} simmodel;

/* config (env at axclInit, kilnsim_config at any time) */
typedef struct simcfg {
    long exec_us;
    long prefill_exec_us; /* an LLM layer's prefill-group execute takes this instead (0: exec_us) */
    int nocompute;
    double ambient_c, heat_c_per_s, cool_per_s;
    char temp_file[512];
    int log;
    long hang_cap_ms;
    uint64_t cmm_bytes;
    long props_us;
    long reboot_ms;      /* how long a rebooted card stays off the bus (card.c) */
    long enum_delay_ms;  /* the card enumerates this long after the first axclInit */
    char state_dir[512]; /* where the card state survives the process ("" = nowhere) */
    char load_log[512];  /* file that gets one line per engine load and per reboot */
    int load_order_drop; /* 1: an ONNX-built engine loaded after an llm_build one drops the card */
    long text_exec_us, unet_exec_us, vae_exec_us; /* an SD text encoder / UNet / VAE execute takes this (0: exec_us) */
} simcfg;

extern simcfg g_cfg;

/* runtime.c */
void sim_log(const char *fmt, ...);
axclError sim_fail(axclError code, const char *fmt, ...);
int sim_is_device_addr(uint64_t a);
axclError sim_resolve(uint64_t addr, uint64_t len, void **host);
double sim_now(void);

/* card.c: the card's life beyond one process: reboot, OFFLINE, wedge, enumeration, load log */
#define E_DEVICE_NO_CONNECT SIM_ERR(SUB_DEVICE, 0x81) /* 0x80300181: not connected */
#define SIM_DEAD(d) ((d)->lost || (d)->offline)
axclError sim_lost_code(simdev *d, axclError lost);
int sim_enumerated(const simdev *d);
axclError sim_go_offline(simdev *d, int64_t n);
axclError sim_wedge_exec(simdev *d);
void sim_exec_done(simdev *d);
void sim_log_load(const simmodel *m, const char *what);
int sim_set_path(const char *key, const char *v);
void sim_boot_init(void);
uint64_t sim_uid(const simdev *d);

/* engine.c: spec parser, also used by the fuzz test through kilnsim_parse_spec */
int sim_parse_spec(const char *buf, size_t n, simspec *s, char *err, size_t errn);
int64_t sim_param(const simspec *s, const char *name, int64_t def);
int sim_find_in(const simspec *s, const char *name);
int sim_find_out(const simspec *s, const char *name);
int sim_dtype_size(int32_t dt);

/* ops.c */
uint16_t sim_f2bf(float f);
float sim_bf2f(uint16_t h);
float sim_exp(float x);
float sim_unit(uint64_t seed, uint64_t idx);
axclError sim_validate(simspec *s, char *err, size_t errn);
axclError sim_run(simmodel *m, int group, void **in, void **out);
void sim_nocompute(simmodel *m, int group, void **in, void **out);

/* stream.c: streams, the latency model (sync round trips, unpinned transfers), the alignment of
 * offset binds, call counters */
typedef struct simlat {
    long sync_us;        /* cost of one synchronous call that waits for the card */
    long unpinned_us;    /* extra cost of a transfer from/to host memory not from axclrtMallocHost */
    uint64_t bind_align; /* an IO buffer bound at an offset into its allocation must be a multiple */
} simlat;
typedef struct simstats {
    uint64_t sync_calls, sync_executes, sync_copies, stream_syncs, async_executes, async_copies, binds, unpinned, pinned;
} simstats;
extern simlat g_lat;
void sim_lat_defaults(void);
int sim_lat_opt(const char *k, double d);
void sim_round_trip(char what);
void sim_count_bind(void);
void sim_pin_add(void *p, size_t n);
int sim_pin_del(void *p);
long sim_host_transfer(const void *p, size_t n);
axclError sim_check_bind(uint64_t off, int isin, uint32_t index);
void sim_streams_reset(void);
axclError sim_memcpy(void *dst, const void *src, size_t n, int32_t kind);   /* runtime.c: axclrtMemcpy, no round trip */
axclError sim_execute(uint64_t id, uint64_t ctx, uint32_t group, void *io); /* engine.c: axclrtEngineExecute, no round trip */
extern __thread long t_hang_deadline_ms; /* runtime.c: a hung execute gives up after this many ms (0: the cap) */

#endif
