// Package client is the Go library that installation controllers import to
// use kiln: submit chat and image jobs, stream their tokens and progress,
// cancel them, fetch stored results and watch the fleet's events.
//
//	nc, _ := nats.Connect(nats.DefaultURL)
//	c, _ := client.New(nc)
//	res, err := c.Chat(ctx, &schema.ChatJob{
//		JobHeader: schema.JobHeader{Model: "qwen3-4b"},
//		Messages:  []schema.Message{{Role: "user", Content: "hello"}},
//	}, func(ev schema.Event) error {
//		if ev.Type == schema.EventStarted {
//			// a run (re)starts: discard the text so far
//		}
//		fmt.Print(ev.Text)
//		return nil
//	})
//
// A job that runs again (its worker died, its card faulted, the broker
// crashed) shows up as another "started" event; on every "started" a caller
// discards what it had. The client passes one run's events at a time, from
// its "started" on, and none of an older run after a newer one began, so
// streamed text never interleaves (see Pending.Events). Cancelling ctx of
// Chat or Image cancels the job (the error is a *CancelledError, matching
// ErrCancelled). A job refused as invalid, before publishing or by a
// worker, is a *JobError matching ErrInvalid.
//
// The client imports schema (the wire contract), broker/topology (stream,
// bucket and subject names, the message builder; it links no nats-server)
// and nats.go: no broker, no worker.
package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// Sentinel errors; errors.Is works on what the client returns.
var (
	// ErrQueueFull: the queue is at its limit; the job was not accepted.
	ErrQueueFull = errors.New("kiln: queue full, job not accepted")
	// ErrNoWorker: no live worker serves the model. The job was not
	// published, or (a *JobError with code no_worker) it waited in the
	// queue and no worker came for it within the grace.
	ErrNoWorker = errors.New("kiln: no live worker")
	// ErrInvalid: the job was refused as invalid (see the *JobError for the field).
	ErrInvalid = errors.New("kiln: invalid job")
	// ErrCancelled: the job was cancelled.
	ErrCancelled = errors.New("kiln: job cancelled")
	// ErrExpired: the job's deadline passed.
	ErrExpired = errors.New("kiln: job expired")
	// ErrFailed: the job failed on the card.
	ErrFailed = errors.New("kiln: job failed")
	// ErrNotFound: no stored result for that id (unknown, running, or older than the results' max age).
	ErrNotFound = errors.New("kiln: no such result")
)

// JobError is a job that ended without status ok, or that Submit refused
// as invalid before publishing it (its Result then has status error and
// the error naming the field and the limit, and no worker). It matches
// ErrInvalid, ErrCancelled, ErrExpired, ErrNoWorker or ErrFailed with errors.Is.
type JobError struct {
	Result *schema.Result
}

// Error says what became of the job in one sentence, e.g. "kiln: job 01J…
// cancelled while running" or "kiln: job 01J… refused: over_limit on
// messages: …".
func (e *JobError) Error() string {
	r := e.Result
	word := r.Status
	switch {
	case r.Status == schema.StatusError && r.Error != nil && r.Error.Code.Invalid():
		word = "refused"
	case r.Status == schema.StatusError:
		word = "failed"
	}
	if r.Error == nil {
		return fmt.Sprintf("kiln: job %s %s", r.JobID, word)
	}
	detail := r.Error.Message
	if r.Error.Code.Invalid() {
		where := ""
		if r.Error.Field != "" {
			where = " on " + r.Error.Field
		}
		detail = fmt.Sprintf("%s%s: %s", r.Error.Code, where, r.Error.Message)
	}
	// "cancelled" + "cancelled while running" reads once, not twice.
	if rest, ok := strings.CutPrefix(detail, word+" "); ok {
		return fmt.Sprintf("kiln: job %s %s %s", r.JobID, word, rest)
	}
	return fmt.Sprintf("kiln: job %s %s: %s", r.JobID, word, detail)
}

// Is maps the result's status and code to the sentinels.
// Unwrap is the job's coded error (a *schema.Error: code, field, message),
// nil when the result has none: errors.As finds the field a refusal names.
func (e *JobError) Unwrap() error {
	if e.Result.Error == nil {
		return nil
	}
	return e.Result.Error
}

func (e *JobError) Is(target error) bool {
	switch e.Result.Status {
	case schema.StatusCancelled:
		return target == ErrCancelled
	case schema.StatusExpired:
		return target == ErrExpired
	}
	if e.Result.Error != nil && e.Result.Error.Code.Invalid() {
		return target == ErrInvalid
	}
	if e.Result.Error != nil && e.Result.Error.Code == schema.CodeNoWorker {
		return target == ErrNoWorker
	}
	return target == ErrFailed
}

// CancelledError is what Chat and Image return when their ctx ends before
// the job's result: they cancelled the job. It matches ErrCancelled with
// errors.Is, and unwraps to the context's cause (context.Canceled,
// context.DeadlineExceeded or the cause given to the context).
type CancelledError struct {
	JobID string
	Cause error
}

func (e *CancelledError) Error() string {
	return fmt.Sprintf("kiln: job %s cancelled: %v", e.JobID, e.Cause)
}

// Is reports whether target is ErrCancelled.
func (e *CancelledError) Is(target error) bool { return target == ErrCancelled }

// Unwrap returns the context's cause.
func (e *CancelledError) Unwrap() error { return e.Cause }

// resultError returns nil for an ok result, else a *JobError.
func resultError(res *schema.Result) error {
	if res.Status == schema.StatusOK {
		return nil
	}
	return &JobError{Result: res}
}

// Option configures a Client.
type Option func(*Client) error

// WithPrefix sets the subject prefix (default "kiln").
func WithPrefix(prefix string) Option {
	return func(c *Client) error {
		if !schema.ValidToken(prefix) {
			return fmt.Errorf("kiln: prefix %q is not a subject token", prefix)
		}
		c.topo.Prefix = prefix
		return nil
	}
}

// WithClientID sets the client's id: the token its jobs are published
// under (schema.Subjects.ClientJob), which names their reply, result and
// cancel subjects. Broker permissions (`kiln broker init-auth`) let each
// controller publish under its own id only, so that id is what keeps its
// jobs, replies and results apart from everyone else's; the worker takes
// it from the job's subject and from nothing else. Without it the client's
// jobs are anonymous (an open broker only): their results are anyone's to
// read and their cancels anyone's to send.
func WithClientID(id string) Option {
	return func(c *Client) error {
		if !schema.ValidToken(id) {
			return fmt.Errorf("kiln: client id %q is not a subject token", id)
		}
		c.id, c.client = id, id
		return nil
	}
}

// WithJSON sends jobs as JSON instead of msgpack (replies follow).
func WithJSON() Option {
	return func(c *Client) error { c.codec = schema.JSON; return nil }
}

// WithoutWorkerCheck skips the live-worker check before publishing, e.g. to
// queue jobs before the workers start.
func WithoutWorkerCheck() Option {
	return func(c *Client) error { c.skipWorkerCheck = true; return nil }
}

// DefaultResultPoll is how long Wait goes without any event before it looks
// for the job's stored result, unless WithResultPoll says otherwise.
const DefaultResultPoll = 5 * time.Second

// WithResultPoll sets how long Wait goes without any event before it looks
// for the job's stored result (default DefaultResultPoll), in case the
// reply was missed.
func WithResultPoll(d time.Duration) Option {
	return func(c *Client) error { c.resultPoll = d; return nil }
}

// Client submits jobs and reads their events. It is safe for concurrent use.
type Client struct {
	nc              *nats.Conn
	js              jetstream.JetStream
	topo            topology.Config
	subj            schema.Subjects
	id              string // the token of its reply subjects
	client          string // the token of its job subjects (WithClientID); "" when anonymous
	codec           schema.Codec
	skipWorkerCheck bool
	resultPoll      time.Duration

	mu       sync.Mutex
	registry *topology.Registry
	results  jetstream.Stream
	cancelKV jetstream.KeyValue
}

// errNilConn is what New says of a nil connection.
var errNilConn = errors.New("kiln: client.New needs a connection, got nil (nats.Connect's error?)")

// New returns a client on nc.
func New(nc *nats.Conn, opts ...Option) (*Client, error) {
	if nc == nil {
		return nil, errNilConn
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("kiln: %w", err)
	}
	c := &Client{nc: nc, js: js, resultPoll: DefaultResultPoll}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	if c.id == "" {
		c.id = strings.ToLower(schema.NewID())
	}
	c.topo = c.topo.WithDefaults()
	c.subj = c.topo.Subjects()
	return c, nil
}

// ID is the client's id, as used in its reply subjects: the one
// WithClientID set, else a random one (and the client's jobs are
// anonymous).
func (c *Client) ID() string { return c.id }

// Close stops the client's registry watch. The connection stays open.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.registry != nil {
		c.registry.Stop()
		c.registry = nil
	}
}

// Chat submits a chat job and streams its events to fn until the result.
// A non-nil error from fn, or the end of ctx, cancels the job: fn's error
// is returned, or for ctx a *CancelledError (errors.Is ErrCancelled).
func (c *Client) Chat(ctx context.Context, job *schema.ChatJob, fn func(schema.Event) error) (*schema.Result, error) {
	return c.run(ctx, job, fn)
}

// Image submits an image job and streams its progress events to fn (nil is
// fine) until the result, which holds the image.
func (c *Client) Image(ctx context.Context, job *schema.ImageJob, fn func(schema.Event) error) (*schema.Result, error) {
	return c.run(ctx, job, fn)
}

func (c *Client) run(ctx context.Context, job schema.Job, fn func(schema.Event) error) (*schema.Result, error) {
	p, err := c.Submit(ctx, job)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	res, err := p.Wait(ctx, fn)
	if err != nil && res == nil {
		// The caller gave up: the job is not wanted any more.
		_ = p.Cancel(context.WithoutCancel(ctx))
		if ctx.Err() != nil {
			return nil, &CancelledError{JobID: p.ID, Cause: context.Cause(ctx)}
		}
	}
	return res, err
}

// Submit validates and publishes a job and returns a handle to wait on it.
// An empty id gets a new one (schema.NewID), an empty lane is normal, an
// empty reply subject is the client's own. A reply subject must be one of
// the client's own (schema.Subjects.ReplyTo: under <prefix>.reply.<id>. or
// _INBOX.<id>.), or for an anonymous client, one outside kiln's own
// subjects. It fails with ErrInvalid (the job breaks a limit or that
// rule: a *JobError naming the field, as a worker would refuse it), ErrNoWorker (no live worker serves the model) or ErrQueueFull (the
// queue is at its limit) without publishing.
func (c *Client) Submit(ctx context.Context, job schema.Job) (*Pending, error) {
	h := job.Header()
	if h.ID == "" {
		h.ID = schema.NewID()
	}
	if h.Lane == "" {
		h.Lane = schema.LaneNormal
	}
	if h.ReplyTo == "" {
		h.ReplyTo = c.subj.Reply(c.id, h.ID)
	}
	kind := strings.SplitN(job.Kind(), ".", 2)[0]
	var verr *schema.Error
	switch j := job.(type) {
	case *schema.ChatJob:
		verr = schema.ValidateChat(j, nil, schema.Limits{})
	case *schema.ImageJob:
		verr = schema.ValidateImage(j, nil, schema.Limits{})
	default:
		return nil, fmt.Errorf("kiln: unknown job type %T", job)
	}
	if verr == nil {
		_, verr = c.subj.ReplyTo(c.client, h.ID, h.ReplyTo)
	}
	if verr != nil {
		return nil, &JobError{Result: &schema.Result{JobID: h.ID, Status: schema.StatusError, Error: verr}}
	}
	if !c.skipWorkerCheck {
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		reg, err := c.workers(rctx)
		if err != nil {
			return nil, err
		}
		if !serving(reg.Live(), kind, h.Model) && !c.servedNow(rctx, kind, h.Model) {
			return nil, fmt.Errorf("%w has %s model %q resident (kiln status shows the fleet)", ErrNoWorker, kind, h.Model)
		}
	}
	m, err := topology.NewMsg(c.subj.ClientJob(kind, h.Model, h.Lane, c.client), c.codec, job)
	if err != nil {
		return nil, fmt.Errorf("kiln: %w", err)
	}
	m.Header.Set(schema.HeaderReplyTo, h.ReplyTo)
	p := &Pending{ID: h.ID, c: c, ch: make(chan *nats.Msg, 4096)}
	if p.sub, err = c.nc.ChanSubscribe(h.ReplyTo, p.ch); err != nil {
		return nil, fmt.Errorf("kiln: subscribe %s: %w", h.ReplyTo, err)
	}
	// The stream deduplicates on the message id: each client's ids apart.
	if err := c.publish(ctx, m, schema.JobKey(c.client, h.ID)); err != nil {
		p.Close()
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && strings.Contains(apiErr.Description, "maximum") {
			return nil, fmt.Errorf("%w: %s", ErrQueueFull, apiErr.Description)
		}
		return nil, fmt.Errorf("kiln: publish job %s: %w", h.ID, err)
	}
	return p, nil
}

// requestTimeout bounds the client's own requests to the broker (registry,
// stored results) made on behalf of a call with a longer deadline.
const requestTimeout = 5 * time.Second

// publishAttempt bounds one attempt to publish a job: a publish that a
// cluster loses while a stream leader fails over gets no ack, and waiting
// for the caller's whole deadline would stall it.
const publishAttempt = 3 * time.Second

// publish publishes a job and waits for the stream's ack, retrying with
// the same message id (deduplicated by the stream) while the broker is
// unreachable or between leaders, until ctx ends.
func (c *Client) publish(ctx context.Context, m *nats.Msg, id string) error {
	backoff := 100 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, publishAttempt)
		_, err := c.js.PublishMsg(actx, m, jetstream.WithMsgID(id))
		cancel()
		if err == nil || ctx.Err() != nil || !transient(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// transient reports whether a publish error may go away by itself: no
// ack in time, no server or stream leader answering, a reconnect.
func transient(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 503 is also "maximum messages exceeded": a full queue is an answer.
		return apiErr.Code == 503 && !strings.Contains(apiErr.Description, "maximum")
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrNoServers)
}

// Cancel asks for job id, submitted by this client, to stop: a queued job
// ends cancelled when a worker takes it, a running one within one token or
// step. A job of another client with the same id goes on.
func (c *Client) Cancel(ctx context.Context, id string) error {
	return c.CancelFor(ctx, c.client, id)
}

// CancelFor asks for job id that client submitted ("" for an anonymous job)
// to stop, as Cancel does for the client's own: what an operator does for
// any client. A controller's permissions let it cancel its own jobs only
// (else the broker refuses it and this returns an error).
func (c *Client) CancelFor(ctx context.Context, client, id string) error {
	if !schema.ValidToken(id) {
		return fmt.Errorf("%w: %q is not a job id", ErrInvalid, id)
	}
	if client != "" && !schema.ValidToken(client) {
		return fmt.Errorf("%w: %q is not a client id", ErrInvalid, client)
	}
	kv, err := c.cancelBucket(ctx)
	if err != nil {
		return err
	}
	key := schema.JobKey(client, id)
	if _, err := kv.Put(ctx, key, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return fmt.Errorf("kiln: cancel %s: %w", id, err)
	}
	if err := c.nc.Publish(c.subj.ClientCancel(client, id), nil); err != nil {
		return fmt.Errorf("kiln: cancel %s: %w", id, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	return c.nc.FlushWithContext(ctx)
}

// Result fetches the stored result of job id, submitted by this client
// (under its id; anonymously when it has none), or ErrNotFound.
func (c *Client) Result(ctx context.Context, id string) (*schema.Result, error) {
	if !schema.ValidToken(id) {
		return nil, fmt.Errorf("%w: %q is not a job id", ErrInvalid, id)
	}
	st, err := c.resultsStream(ctx)
	if err != nil {
		return nil, err
	}
	raw, err := st.GetLastMsgForSubject(ctx, c.subj.ClientResult(id, c.client))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("kiln: result %s: %w", id, err)
	}
	return decodeResult(id, raw.Header, raw.Data)
}

// AnyResult fetches the stored result of job id whoever submitted it: this
// client, another one, or nobody (a job published by hand). It needs read
// access to every result, which a controller's permissions do not give
// (an operator's do); else it returns ErrNotFound or a permission error.
func (c *Client) AnyResult(ctx context.Context, id string) (*schema.Result, error) {
	res, err := c.Result(ctx, id)
	if !errors.Is(err, ErrNotFound) {
		return res, err
	}
	st, err := c.resultsStream(ctx)
	if err != nil {
		return nil, err
	}
	raw, err := st.GetLastMsgForSubject(ctx, c.subj.Result(id))
	if err == nil {
		return decodeResult(id, raw.Header, raw.Data)
	}
	if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("kiln: result %s: %w", id, err)
	}
	// Another client's: a wildcard last-by-subject get, which direct gets
	// cannot express, through the stream API.
	legacy, err := c.nc.JetStream(nats.Context(ctx))
	if err != nil {
		return nil, fmt.Errorf("kiln: result %s: %w", id, err)
	}
	msg, err := legacy.GetLastMsg(c.topo.ResultsStream(), c.subj.ClientResult(id, "*"), nats.Context(ctx))
	if errors.Is(err, nats.ErrMsgNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("kiln: result %s: %w", id, err)
	}
	return decodeResult(id, msg.Header, msg.Data)
}

func decodeResult(id string, h nats.Header, data []byte) (*schema.Result, error) {
	codec, err := schema.CodecFor(h.Get(schema.HeaderContentType))
	if err != nil {
		return nil, fmt.Errorf("kiln: result %s: %w", id, err)
	}
	var res schema.Result
	if err := codec.Unmarshal(data, &res); err != nil {
		return nil, fmt.Errorf("kiln: result %s: %w", id, err)
	}
	return &res, nil
}

func (c *Client) resultsStream(ctx context.Context) (jetstream.Stream, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.results == nil {
		st, err := c.js.Stream(ctx, c.topo.ResultsStream())
		if err != nil {
			return nil, fmt.Errorf("kiln: results stream %s: %w", c.topo.ResultsStream(), err)
		}
		c.results = st
	}
	return c.results, nil
}

func (c *Client) cancelBucket(ctx context.Context) (jetstream.KeyValue, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancelKV == nil {
		kv, err := c.js.KeyValue(ctx, c.topo.CancelBucket())
		if err != nil {
			return nil, fmt.Errorf("kiln: cancel bucket %s: %w", c.topo.CancelBucket(), err)
		}
		c.cancelKV = kv
	}
	return c.cancelKV, nil
}
