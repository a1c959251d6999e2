package schema

import "time"

// Job kinds: the stable identity of a job type on the wire and in subjects.
const (
	KindChat  = "chat"
	KindImage = "image"
)

// Lanes: a worker takes every queued high job before any normal one.
const (
	LaneHigh   = "high"
	LaneNormal = "normal"
)

// Job is what ChatJob and ImageJob have in common: the fields the queue,
// the worker loop and the client need without knowing the kind.
type Job interface {
	// Kind is the versioned wire identity, e.g. "chat.v1".
	Kind() string
	// Header returns the fields shared by every job kind.
	Header() *JobHeader
}

// JobHeader holds the fields every job carries. It is embedded (inlined on
// the wire) in every job type.
type JobHeader struct {
	// ID is unique per job and sortable by submit time (see NewID). It is the
	// Nats-Msg-Id, so a republish of the same id inside the duplicate window
	// is a no-op.
	ID string `msgpack:"id" json:"id"`
	// Model is the resident model package that runs the job, e.g. "qwen3-4b".
	// It must equal the model token of the subject the job was published on.
	Model string `msgpack:"model" json:"model"`
	// Lane is LaneHigh or LaneNormal (the default).
	Lane string `msgpack:"lane,omitempty" json:"lane,omitempty"`
	// Deadline, when set, is the time after which the job is not worth
	// running: a queued job past it ends "expired", a running one stops.
	Deadline *time.Time `msgpack:"deadline,omitempty" json:"deadline,omitempty"`
	// ReplyTo is the core NATS subject that receives the job's events.
	ReplyTo string `msgpack:"reply_to,omitempty" json:"reply_to,omitempty"`
	// Metadata is carried through untouched into the worker's handler and
	// logs; kiln itself reads nothing from it.
	Metadata map[string]string `msgpack:"metadata,omitempty" json:"metadata,omitempty"`
}

// Header implements Job.
func (h *JobHeader) Header() *JobHeader { return h }

// Message is one turn of a chat.
type Message struct {
	Role    string   `msgpack:"role" json:"role"`
	Content string   `msgpack:"content" json:"content"`
	Images  [][]byte `msgpack:"images,omitempty" json:"images,omitempty"`
}

// ChatJob asks a chat (LLM or vision-LLM) model for a streamed answer.
// Zero sampling fields mean "the model package's default".
type ChatJob struct {
	JobHeader         `msgpack:",inline"`
	Messages          []Message `msgpack:"messages" json:"messages"`
	MaxTokens         int       `msgpack:"max_tokens,omitempty" json:"max_tokens,omitempty"`
	Temperature       *float64  `msgpack:"temperature,omitempty" json:"temperature,omitempty"`
	TopP              *float64  `msgpack:"top_p,omitempty" json:"top_p,omitempty"`
	TopK              int       `msgpack:"top_k,omitempty" json:"top_k,omitempty"`
	RepetitionPenalty *float64  `msgpack:"repetition_penalty,omitempty" json:"repetition_penalty,omitempty"`
	Seed              *uint64   `msgpack:"seed,omitempty" json:"seed,omitempty"`
	Stop              []string  `msgpack:"stop,omitempty" json:"stop,omitempty"`
	Think             bool      `msgpack:"think,omitempty" json:"think,omitempty"`
}

// Kind implements Job.
func (*ChatJob) Kind() string { return KindChat + ".v1" }

// ImageJob asks an image model (Stable Diffusion 1.5 LCM) for one picture.
type ImageJob struct {
	JobHeader `msgpack:",inline"`
	Prompt    string  `msgpack:"prompt" json:"prompt"`
	Seed      *uint64 `msgpack:"seed,omitempty" json:"seed,omitempty"`
	Steps     int     `msgpack:"steps,omitempty" json:"steps,omitempty"`
	InitImage []byte  `msgpack:"init_image,omitempty" json:"init_image,omitempty"`
	Strength  float64 `msgpack:"strength,omitempty" json:"strength,omitempty"`
	// Width and Height, when set, are the image size asked for; a model
	// makes one size (512×512, or 768 wide × 1024 high for the vendor's
	// 1024x768 package) and refuses any other, naming the field. 0 takes
	// the model's size.
	Width  int    `msgpack:"width,omitempty" json:"width,omitempty"`
	Height int    `msgpack:"height,omitempty" json:"height,omitempty"`
	Format string `msgpack:"format,omitempty" json:"format,omitempty"`
	// Progress asks for a progress event after every step.
	Progress bool `msgpack:"progress,omitempty" json:"progress,omitempty"`
}

// Kind implements Job.
func (*ImageJob) Kind() string { return KindImage + ".v1" }

// Event types, in the order a job emits them.
const (
	EventStarted  = "started"
	EventToken    = "token"
	EventProgress = "progress"
	EventResult   = "result"
)

// Event is one message on a job's reply subject. Run names the delivery of
// the job to a worker that sent it: a job that restarts (its worker died, a
// fault, a broker crash) starts a new run, with a "started" event, and a
// client discards what it had of any other run. Seq counts the events of one
// run from 1 ("started"), so a client can tell it missed one.
type Event struct {
	JobID string `msgpack:"job_id" json:"job_id"`
	// Run is unique per delivery of the job to a worker (schema.NewID, made
	// by the worker when it takes the delivery): runs are told apart by it,
	// never by Attempt, which a broker crash can repeat.
	Run string `msgpack:"run" json:"run"`
	// Attempt is the delivery count as JetStream reported it, from 1;
	// informational.
	Attempt int    `msgpack:"attempt" json:"attempt"`
	Seq     int    `msgpack:"seq" json:"seq"`
	Type    string `msgpack:"type" json:"type"`
	// Text is a token delta: whole UTF-8 characters only.
	Text string `msgpack:"text,omitempty" json:"text,omitempty"`
	// Step and Steps report image progress.
	Step  int `msgpack:"step,omitempty" json:"step,omitempty"`
	Steps int `msgpack:"steps,omitempty" json:"steps,omitempty"`
	// Worker and QueueMS are set on "started".
	Worker  string `msgpack:"worker,omitempty" json:"worker,omitempty"`
	QueueMS int64  `msgpack:"queue_ms,omitempty" json:"queue_ms,omitempty"`
	// Result is set on the last event.
	Result *Result `msgpack:"result,omitempty" json:"result,omitempty"`
}

// Result statuses.
const (
	StatusOK        = "ok"
	StatusError     = "error"
	StatusCancelled = "cancelled"
	StatusExpired   = "expired"
)

// Finish reasons of a chat.
const (
	FinishStop      = "stop"
	FinishLength    = "length"
	FinishCancelled = "cancelled"
)

// Result is the one final outcome of a job. It is published on the reply
// subject and kept in KILN_RESULTS for late readers.
type Result struct {
	JobID        string `msgpack:"job_id" json:"job_id"`
	Status       string `msgpack:"status" json:"status"`
	Text         string `msgpack:"text,omitempty" json:"text,omitempty"`
	FinishReason string `msgpack:"finish_reason,omitempty" json:"finish_reason,omitempty"`
	Image        []byte `msgpack:"image,omitempty" json:"image,omitempty"`
	Mime         string `msgpack:"mime,omitempty" json:"mime,omitempty"`
	Error        *Error `msgpack:"error,omitempty" json:"error,omitempty"`
	Usage        Usage  `msgpack:"usage" json:"usage"`
	Worker       string `msgpack:"worker,omitempty" json:"worker,omitempty"`
	// Run is the run (see Event.Run) that made the result. A result re-sent
	// by a later delivery (the first one's ack was lost) keeps its own run.
	Run     string `msgpack:"run,omitempty" json:"run,omitempty"`
	Attempt int    `msgpack:"attempt,omitempty" json:"attempt,omitempty"`
	// Seed is the seed the job ran with: its own, or the one the worker
	// drew for it. Sent back in the job, with the same settings, it makes
	// the same text or image. Set when the model ran.
	Seed *uint64 `msgpack:"seed,omitempty" json:"seed,omitempty"`
	// Sampling is how a chat picked its tokens, as applied; set on chat
	// results when the model ran.
	Sampling *Sampling `msgpack:"sampling,omitempty" json:"sampling,omitempty"`
	// Diffusion is how an image was made, as applied; set on image results
	// when the model ran.
	Diffusion *Diffusion `msgpack:"diffusion,omitempty" json:"diffusion,omitempty"`
}

// Sampling is the sampling a chat ran with: the job's settings over the
// model package's defaults. Greedy means every token was the most likely
// one (temperature 0 or top_k 1) and the seed did not matter.
type Sampling struct {
	Greedy      bool    `msgpack:"greedy" json:"greedy"`
	Temperature float64 `msgpack:"temperature" json:"temperature"`
	// TopP 1 keeps every token; TopK 0 keeps every token.
	TopP float64 `msgpack:"top_p" json:"top_p"`
	TopK int     `msgpack:"top_k" json:"top_k"`
	// RepetitionPenalty 0 or 1 is none; it looks at the reply's last
	// PenaltyWindow tokens.
	RepetitionPenalty float64 `msgpack:"repetition_penalty" json:"repetition_penalty"`
	PenaltyWindow     int     `msgpack:"penalty_window,omitempty" json:"penalty_window,omitempty"`
}

// Diffusion is what an image job ran with: the schedule's steps (an
// img2img job runs int(steps×strength) of them, from the schedule's tail),
// the img2img strength (0 for txt2img) and the image's size in pixels.
type Diffusion struct {
	Steps    int     `msgpack:"steps" json:"steps"`
	Strength float64 `msgpack:"strength,omitempty" json:"strength,omitempty"`
	Width    int     `msgpack:"width" json:"width"`
	Height   int     `msgpack:"height" json:"height"`
}

// Usage counts what a job cost.
type Usage struct {
	PromptTokens     int     `msgpack:"prompt_tokens,omitempty" json:"prompt_tokens,omitempty"`
	CompletionTokens int     `msgpack:"completion_tokens,omitempty" json:"completion_tokens,omitempty"`
	QueueMS          int64   `msgpack:"queue_ms" json:"queue_ms"`
	TTFTMS           int64   `msgpack:"ttft_ms,omitempty" json:"ttft_ms,omitempty"`
	TotalMS          int64   `msgpack:"total_ms" json:"total_ms"`
	TokensPerS       float64 `msgpack:"tokens_per_s,omitempty" json:"tokens_per_s,omitempty"`
}

// Worker states reported in heartbeats.
const (
	StateLoading   = "loading"
	StateReady     = "ready"
	StateBusy      = "busy"
	StatePaused    = "paused"
	StateUnhealthy = "unhealthy"
	StateStopping  = "stopping"
)

// Model states in heartbeats (ModelInfo.State).
const (
	ModelLoading = "loading" // the package is being loaded onto the card
	ModelReady   = "ready"   // loaded: the worker takes its jobs
	ModelFailed  = "failed"  // the package did not load (Error says why): the worker takes none of its jobs
)

// ModelInfo describes one model of a worker. A model whose State is
// ModelFailed is listed so that operators see it, but is not served: its
// jobs wait for (or are answered no_worker when there is no) other worker.
type ModelInfo struct {
	Name   string `msgpack:"name" json:"name"`
	Kind   string `msgpack:"kind" json:"kind"`
	CMMMiB int    `msgpack:"cmm_mib,omitempty" json:"cmm_mib,omitempty"`
	// State is ModelLoading, ModelReady or ModelFailed ("" from a worker
	// without a card, or older than the field: served).
	State string `msgpack:"state,omitempty" json:"state,omitempty"`
	// Error says why a failed package did not load.
	Error string `msgpack:"error,omitempty" json:"error,omitempty"`
	// SlotsUsed of SlotsTotal jobs of the model run now: a chat model's
	// K/V slots, 1 for a model that runs one job at a time (0 from a
	// worker older than the fields).
	SlotsUsed  int `msgpack:"slots_used,omitempty" json:"slots_used,omitempty"`
	SlotsTotal int `msgpack:"slots_total,omitempty" json:"slots_total,omitempty"`
}

// Serving reports whether the model takes jobs (or will once loaded): it
// is not a package that failed to load.
func (m *ModelInfo) Serving() bool { return m.State != ModelFailed }

// GovernorStatus is the thermal governor's state as heartbeats report it.
type GovernorStatus struct {
	State   string  `msgpack:"state" json:"state"`
	PauseC  float64 `msgpack:"pause_c,omitempty" json:"pause_c,omitempty"`
	ResumeC float64 `msgpack:"resume_c,omitempty" json:"resume_c,omitempty"`
}

// Heartbeat is a worker's full status, published every few seconds on
// kiln.events.heartbeat.<worker> and kept in the kiln_workers registry.
type Heartbeat struct {
	Worker      string         `msgpack:"worker" json:"worker"`
	Host        string         `msgpack:"host" json:"host"`
	Card        int            `msgpack:"card" json:"card"`
	Version     string         `msgpack:"version" json:"version"`
	State       string         `msgpack:"state" json:"state"`
	Models      []ModelInfo    `msgpack:"models" json:"models"`
	CardTempC   float64        `msgpack:"card_temp_c,omitempty" json:"card_temp_c,omitempty"`
	SoCTempC    float64        `msgpack:"soc_temp_c,omitempty" json:"soc_temp_c,omitempty"`
	NPUUtil     float64        `msgpack:"npu_util,omitempty" json:"npu_util,omitempty"`
	CMMUsedMiB  int            `msgpack:"cmm_used_mib,omitempty" json:"cmm_used_mib,omitempty"`
	CMMTotalMiB int            `msgpack:"cmm_total_mib,omitempty" json:"cmm_total_mib,omitempty"`
	CurrentJob  string         `msgpack:"current_job,omitempty" json:"current_job,omitempty"`
	JobsOK      int64          `msgpack:"jobs_ok" json:"jobs_ok"`
	JobsFailed  int64          `msgpack:"jobs_failed" json:"jobs_failed"`
	JobsRefused int64          `msgpack:"jobs_refused" json:"jobs_refused"` // invalid jobs (the sender's fault); JobsFailed counts the others
	TokensPerS  float64        `msgpack:"tokens_per_s,omitempty" json:"tokens_per_s,omitempty"`
	UptimeS     int64          `msgpack:"uptime_s" json:"uptime_s"`
	Governor    GovernorStatus `msgpack:"governor" json:"governor"`
	// IntervalMS is the heartbeat period; a worker not heard from for three
	// periods is taken as gone.
	IntervalMS int64     `msgpack:"interval_ms" json:"interval_ms"`
	Time       time.Time `msgpack:"time" json:"time"`

	// RunningJobs are the ids of every job running on the card, oldest
	// first (CurrentJob is the first); MaxJobs is the most that run at
	// once (issue 15: a chat model's K/V slots).
	RunningJobs []string `msgpack:"running_jobs,omitempty" json:"running_jobs,omitempty"`
	MaxJobs     int      `msgpack:"max_jobs,omitempty" json:"max_jobs,omitempty"`
}

// Serves reports whether the worker has the model of the given kind resident.
// TakesJobs reports whether the worker is one that fetches jobs, now or
// once it has loaded or cooled: not unhealthy, not stopping.
func (h *Heartbeat) TakesJobs() bool {
	return h.State != StateUnhealthy && h.State != StateStopping
}

func (h *Heartbeat) Serves(kind, model string) bool {
	for _, m := range h.Models {
		if m.Name == model && m.Kind == kind && m.Serving() {
			return true
		}
	}
	return false
}

// ThermalEvent is published on every governor transition.
type ThermalEvent struct {
	Worker    string    `msgpack:"worker" json:"worker"`
	From      string    `msgpack:"from" json:"from"`
	To        string    `msgpack:"to" json:"to"`
	CardTempC float64   `msgpack:"card_temp_c" json:"card_temp_c"`
	SoCTempC  float64   `msgpack:"soc_temp_c,omitempty" json:"soc_temp_c,omitempty"`
	Reason    string    `msgpack:"reason,omitempty" json:"reason,omitempty"`
	Time      time.Time `msgpack:"time" json:"time"`
}

// DeviceEvent reports a device fault, reset or model load.
type DeviceEvent struct {
	Worker  string    `msgpack:"worker" json:"worker"`
	Type    string    `msgpack:"type" json:"type"`
	Model   string    `msgpack:"model,omitempty" json:"model,omitempty"`
	Message string    `msgpack:"message,omitempty" json:"message,omitempty"`
	Time    time.Time `msgpack:"time" json:"time"`
}
