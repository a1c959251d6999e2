package worker

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/schema"
)

// delivery is one fetched job message and what the worker learned of it
// before decoding the body.
type delivery struct {
	msg      jetstream.Msg
	rt       *route
	attempt  int
	enqueued time.Time
	fetched  time.Time
	codec    schema.Codec
	id       string // job id, "" until known
	client   string // the submitting client (HeaderClient), "" when none
	replyTo  string // "" until known
	events   *eventStream
}

// eventStream numbers and publishes one attempt's events.
type eventStream struct {
	w     *Worker
	d     *delivery
	mu    sync.Mutex
	seq   int
	first time.Time // first token or progress event
}

func (s *eventStream) emit(ev schema.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	if s.first.IsZero() && ev.Type != schema.EventStarted {
		s.first = time.Now()
	}
	if s.d.replyTo == "" {
		return nil
	}
	ev.JobID, ev.Attempt, ev.Seq = s.d.id, s.d.attempt, s.seq
	data, err := s.d.codec.Marshal(&ev)
	if err != nil {
		return fmt.Errorf("worker: encode %s event: %w", ev.Type, err)
	}
	m := &nats.Msg{Subject: s.d.replyTo, Data: data, Header: nats.Header{}}
	m.Header.Set(schema.HeaderContentType, s.d.codec.ContentType())
	if err := s.w.nc.PublishMsg(m); err != nil {
		return fmt.Errorf("worker: publish %s event: %w", ev.Type, err)
	}
	return nil
}

// process handles one fetched message from start to its single outcome:
// a result (ok, error, cancelled, expired) or a hand-back to the queue.
func (w *Worker) process(rt *route, msg jetstream.Msg) {
	d := &delivery{msg: msg, rt: rt, attempt: 1, fetched: time.Now()}
	d.events = &eventStream{w: w, d: d}
	if meta, err := msg.Metadata(); err == nil {
		d.attempt = int(meta.NumDelivered)
		d.enqueued = meta.Timestamp
	}
	h := msg.Headers()
	if id := h.Get(jetstream.MsgIDHeader); schema.ValidToken(id) {
		d.id = id
	}
	d.replyTo = h.Get(HeaderReplyTo)
	if c := h.Get(schema.HeaderClient); schema.ValidToken(c) {
		d.client = c
	}
	codec, err := schema.CodecFor(h.Get(schema.HeaderContentType))
	d.codec = codec
	ctx := context.Background()
	if err != nil {
		w.reject(ctx, d, err.(*schema.Error))
		return
	}
	rt.run(ctx, d)
}

// runJob decodes, validates and runs one job of type T.
func runJob[T any, PT interface {
	*T
	schema.Job
}](ctx context.Context, w *Worker, d *delivery, h Handler[T], validate func(PT, *schema.JobSubject, schema.Limits) *schema.Error) {
	var args T
	job := PT(&args)
	if err := d.codec.Unmarshal(d.msg.Data(), job); err != nil {
		w.reject(ctx, d, err.(*schema.Error))
		return
	}
	hdr := job.Header()
	if schema.ValidToken(hdr.ID) && d.id == "" {
		d.id = hdr.ID
	}
	if hdr.ReplyTo != "" {
		d.replyTo = hdr.ReplyTo
	}
	subject, err := w.subj.ParseJob(d.msg.Subject())
	if err != nil {
		w.reject(ctx, d, schema.Errorf(schema.CodeBadSubject, "", "%v", err))
		return
	}
	if verr := validate(job, &subject, w.cfg.Limits); verr != nil {
		w.reject(ctx, d, verr)
		return
	}
	d.id = hdr.ID // validated: the body's id is the job's id
	if hdr.Lane == "" {
		hdr.Lane = schema.LaneNormal
	}
	if hdr.Deadline != nil {
		t := hdr.Deadline.UTC()
		hdr.Deadline = &t
	}
	log := w.log.With("job", d.id, "kind", d.rt.kind, "model", d.rt.model, "attempt", d.attempt)

	jctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w.mu.Lock()
	w.current = &runningJob{id: d.id, cancel: cancel}
	w.state = schema.StateBusy
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.current = nil
		if w.state == schema.StateBusy {
			w.state = schema.StateReady
		}
		w.mu.Unlock()
	}()

	// A result already stored means an earlier delivery finished the job but
	// its ack was lost: answer with that result, run nothing. (A first
	// delivery cannot have one: the id is deduplicated at publish.)
	if d.attempt > 1 {
		if res := w.storedResult(ctx, d.id, d.client); res != nil {
			log.Info("job already finished, re-sending its result")
			_ = d.events.emit(schema.Event{Type: schema.EventResult, Result: res})
			_ = d.msg.Ack()
			return
		}
	}
	if w.wasCancelled(d.id) {
		w.finish(ctx, d, &schema.Result{Status: schema.StatusCancelled, FinishReason: schema.FinishCancelled,
			Error: schema.Errorf(schema.CodeCancelled, "", "cancelled before it started")}, nil, log)
		return
	}
	if hdr.Expired(time.Now()) {
		w.finish(ctx, d, &schema.Result{Status: schema.StatusExpired,
			Error: schema.Errorf(schema.CodeExpired, "deadline", "deadline %s passed before the job started", hdr.Deadline.Format(time.RFC3339))}, nil, log)
		return
	}
	if hdr.Deadline != nil {
		var dcancel context.CancelFunc
		jctx, dcancel = context.WithDeadlineCause(jctx, *hdr.Deadline, ErrDeadline)
		defer dcancel()
	}

	stream := d.events
	started := time.Now()
	_ = stream.emit(schema.Event{Type: schema.EventStarted, Worker: w.cfg.Name, QueueMS: queueMS(d)})
	stopProgress := w.keepInProgress(d)
	res, herr := safeHandle(jctx, h, &Job[T]{Args: &args, Attempt: d.attempt, Enqueued: d.enqueued, stream: stream})
	stopProgress()
	if res == nil {
		res = &schema.Result{}
	}
	res.Usage.TotalMS = time.Since(started).Milliseconds()
	if res.Usage.TTFTMS == 0 && !stream.first.IsZero() {
		res.Usage.TTFTMS = stream.first.Sub(started).Milliseconds()
	}

	cause := context.Cause(jctx)
	if jctx.Err() == nil {
		cause = nil
	}
	var verr *schema.Error
	var perr *permanentError
	switch {
	case herr != nil && (errors.Is(cause, ErrShutdown) || errors.Is(cause, ErrPaused)):
		// (A handler that finished before it saw the cancel has a result:
		// it is kept below, so the job never runs to completion twice.)
		log.Info("handing job back to the queue", "why", cause)
		if err := d.msg.Nak(); err != nil {
			log.Warn("nak failed; the job comes back after the ack wait", "err", err)
		}
	case errors.Is(cause, ErrCancelRequested):
		res.Status, res.FinishReason = schema.StatusCancelled, schema.FinishCancelled
		res.Error = schema.Errorf(schema.CodeCancelled, "", "cancelled while running")
		w.finish(ctx, d, res, nil, log)
	case errors.Is(cause, ErrDeadline):
		res.Status = schema.StatusExpired
		res.Error = schema.Errorf(schema.CodeExpired, "deadline", "deadline %s passed while running", hdr.Deadline.Format(time.RFC3339))
		w.finish(ctx, d, res, nil, log)
	case herr == nil:
		res.Status, res.Error = schema.StatusOK, nil
		w.finish(ctx, d, res, nil, log)
	case errors.As(herr, &verr):
		w.reject(ctx, d, verr)
	case errors.As(herr, &perr):
		res.Status, res.Error = schema.StatusError, schema.Errorf(schema.CodeFailed, "", "%v", herr)
		w.finish(ctx, d, res, herr, log)
	case d.attempt >= w.cfg.Topology.MaxDeliver:
		w.noteFault(herr)
		res.Status = schema.StatusError
		res.Error = schema.Errorf(schema.CodeFailed, "", "failed on all %d deliveries, last: %v", d.attempt, herr)
		w.finish(ctx, d, res, herr, log)
	default:
		delay := w.cfg.RetryDelays[min(d.attempt, len(w.cfg.RetryDelays))-1]
		log.Warn("job failed, retrying", "err", herr, "delay", delay)
		w.noteFault(herr)
		w.jobsFailed.Add(1)
		if err := d.msg.NakWithDelay(delay); err != nil {
			log.Warn("nak failed; the job comes back after the ack wait", "err", err)
		}
	}
}

func safeHandle[T any](ctx context.Context, h Handler[T], job *Job[T]) (res *schema.Result, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = Permanent(fmt.Errorf("handler panicked: %v\n%s", r, debug.Stack()))
		}
	}()
	return h.Handle(ctx, job)
}

// keepInProgress tells JetStream the job is still being worked on, so a
// long job is not redelivered while it runs.
func (w *Worker) keepInProgress(d *delivery) (stop func()) {
	every := w.cfg.Topology.AckWait / 3
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = d.msg.InProgress()
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func queueMS(d *delivery) int64 {
	if d.enqueued.IsZero() {
		return 0
	}
	return max(d.fetched.Sub(d.enqueued).Milliseconds(), 0)
}

// reject ends a job that is the request's fault: error result, Term.
func (w *Worker) reject(ctx context.Context, d *delivery, verr *schema.Error) {
	log := w.log.With("job", d.id, "subject", d.msg.Subject())
	log.Warn("job refused", "code", verr.Code, "field", verr.Field, "err", verr.Message)
	res := &schema.Result{Status: schema.StatusError, Error: verr}
	w.finish(ctx, d, res, verr, log)
}

// finish stores the result, sends it to the client and removes the job from
// the queue. A job whose id is unknown (undecodable) cannot be stored; it is
// still answered when its reply subject is known from the header.
func (w *Worker) finish(ctx context.Context, d *delivery, res *schema.Result, failure error, log interface {
	Info(string, ...any)
	Warn(string, ...any)
}) {
	res.JobID, res.Worker, res.Attempt = d.id, w.cfg.Name, d.attempt
	res.Usage.QueueMS = queueMS(d)
	if res.Status == schema.StatusOK {
		w.jobsOK.Add(1)
		w.jobSucceeded()
		w.noteRate(res)
	} else {
		w.jobsFailed.Add(1)
	}
	if d.id != "" {
		data, err := d.codec.Marshal(res)
		if err == nil {
			m := &nats.Msg{Subject: w.subj.ClientResult(d.id, d.client), Data: data, Header: nats.Header{}}
			m.Header.Set(schema.HeaderContentType, d.codec.ContentType())
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			// Only the first result of a job is stored: a delivery that
			// overlapped another (a redelivery during a cluster failover)
			// finds the first one's result and sends that instead.
			_, err = w.js.PublishMsg(pctx, m, jetstream.WithExpectLastSequencePerSubject(0))
			cancel()
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
				apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
				if first := w.storedResult(ctx, d.id, d.client); first != nil {
					log.Info("job already finished by another delivery, sending its result")
					_ = d.events.emit(schema.Event{Type: schema.EventResult, Result: first})
					_ = d.msg.Ack()
					return
				}
			}
		}
		if err != nil {
			// Not stored: hand the job back rather than lose its result.
			log.Warn("could not store the result; the job will be redelivered", "err", err)
			_ = d.msg.NakWithDelay(time.Second)
			return
		}
	}
	if err := d.events.emit(schema.Event{Type: schema.EventResult, Result: res}); err != nil {
		log.Warn("could not send the result event", "err", err)
	}
	if res.Status == schema.StatusError && (failure != nil) {
		_ = d.msg.Term()
	} else {
		_ = d.msg.Ack()
	}
	log.Info("job finished", "status", res.Status, "queue_ms", res.Usage.QueueMS, "total_ms", res.Usage.TotalMS)
}

// storedResult returns the result kept in KILN_RESULTS for job id of
// client, or nil.
func (w *Worker) storedResult(ctx context.Context, id, client string) *schema.Result {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	raw, err := w.results.GetLastMsgForSubject(rctx, w.subj.ClientResult(id, client))
	if err != nil {
		return nil
	}
	codec, err := schema.CodecFor(raw.Header.Get(schema.HeaderContentType))
	if err != nil {
		return nil
	}
	var res schema.Result
	if codec.Unmarshal(raw.Data, &res) != nil {
		return nil
	}
	return &res
}
