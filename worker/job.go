package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// A job goes through four steps, each a function below, in this order:
//
//	decode   the body strictly as the route's job type, validated against its subject and the limits
//	admit    a stored result re-sent, a job cancelled or expired while queued ended
//	execute  the handler, with the started event, in-progress signals, deadline and panics
//	settle   what classify decides: the result stored and sent then Ack or Term, or a Nak
//
// A job that fails before execute (undecodable, invalid) is rejected: an
// error result and Term.

// delivery is one fetched job message and what the worker learned of it
// before decoding the body.
type delivery struct {
	msg        jetstream.Msg
	rt         *route
	run        string // this delivery's run id (schema.NewID): names its events and result
	attempt    int    // JetStream's delivery count; a broker crash can repeat it
	enqueued   time.Time
	fetched    time.Time
	codec      schema.Codec
	subject    schema.JobSubject
	subjectErr error         // the subject is no job subject: whose job it is is unknown
	client     string        // the client token of the subject, the job's identity; "" when anonymous
	id         string        // job id, "" until known
	replyTo    string        // where its events go (chooseReply); "" for nowhere
	replyErr   *schema.Error // the reply subject it asked for was refused
	events     *eventStream
}

// eventStream numbers and publishes one run's events.
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
	ev.JobID, ev.Run, ev.Attempt, ev.Seq = s.d.id, s.d.run, s.d.attempt, s.seq
	if err := topology.Publish(s.w.nc, s.d.replyTo, s.d.codec, &ev); err != nil {
		return fmt.Errorf("worker: %s event: %w", ev.Type, err)
	}
	return nil
}

// process handles one fetched message from start to its single outcome:
// a result (ok, error, cancelled, expired) or a hand-back to the queue.
func (w *Worker) process(rt *route, msg jetstream.Msg) {
	d := w.receive(rt, msg)
	ctx := context.Background()
	if d.subjectErr != nil {
		// Nobody can be told: the job has no id or reply subject here.
		w.reject(ctx, d, schema.Errorf(schema.CodeBadSubject, "", "%v", d.subjectErr))
		return
	}
	codec, err := schema.CodecForBody(msg.Headers().Get(schema.HeaderContentType), msg.Data())
	d.codec = codec
	if err != nil {
		d.salvage(w.subj)
		w.reject(ctx, d, requestError(err, schema.CodeBadContentType))
		return
	}
	rt.run(ctx, d)
}

// receive reads what a delivery says before its body is decoded: the
// attempt and queue time from its metadata, the client from its subject
// (the one thing about the sender the broker enforces), the job id and
// reply subject from its headers, so that even a job whose body cannot be
// decoded gets its error back. It names the delivery's run: a new id for
// every delivery, unique whatever the worker's name or the delivery count
// (both repeat: a restarted worker keeps its name, a broker crash can lose
// the count).
func (w *Worker) receive(rt *route, msg jetstream.Msg) *delivery {
	d := &delivery{msg: msg, rt: rt, run: schema.NewID(), attempt: 1, fetched: time.Now()}
	d.events = &eventStream{w: w, d: d}
	if meta, err := msg.Metadata(); err == nil {
		d.attempt = int(meta.NumDelivered)
		d.enqueued = meta.Timestamp
	}
	d.subject, d.subjectErr = w.subj.ParseJob(msg.Subject())
	if d.subjectErr != nil {
		return d
	}
	d.client = d.subject.Client
	h := msg.Headers()
	d.id = schema.JobIDOf(d.client, h.Get(jetstream.MsgIDHeader))
	d.chooseReply(w.subj, h.Get(schema.HeaderReplyTo))
	return d
}

// chooseReply sets where d's events and result go. requested are the
// reply subjects the job asked for, the one that counts first: the body's
// reply_to, then the Kiln-Reply-To header ("" where there is none). Each
// goes through schema.Subjects.ReplyTo, the rule that keeps a client's
// answers under its own reply subjects and anyone's out of kiln's own: a
// body reply_to is checked before it can replace the header's, so a bad one
// cannot take the answer away. When the first one given is refused, the job
// is refused with that error (replyErr) and answered on the next one
// allowed, else on its client's default reply subject.
func (d *delivery) chooseReply(subj schema.Subjects, requested ...string) {
	d.replyTo, d.replyErr = "", nil
	for _, r := range requested {
		if r == "" {
			continue
		}
		to, err := subj.ReplyTo(d.client, d.id, r)
		if err == nil {
			d.replyTo = to
			return
		}
		if d.replyErr == nil {
			d.replyErr = err
		}
	}
	d.replyTo, _ = subj.ReplyTo(d.client, d.id, "")
}

// learn takes what the body's header fields say of where the job comes
// from: its id (the body's takes over from Nats-Msg-Id), its reply subject
// as chooseReply allows. It returns chooseReply's refusal.
func (d *delivery) learn(subj schema.Subjects, body *schema.JobHeader) *schema.Error {
	if schema.ValidToken(body.ID) {
		d.id = body.ID
	}
	d.chooseReply(subj, body.ReplyTo, d.msg.Headers().Get(schema.HeaderReplyTo))
	return d.replyErr
}

// salvage reads what it can of a body that cannot be decoded as its job
// type (or whose Content-Type is unknown), so that the refusal still
// reaches the sender: the header fields, decoded leniently (other fields
// and their types ignored) but within the same shape bounds, so hostile
// bytes are refused before anything is allocated for them. What a partial
// decoding yields is checked as any id and reply_to are.
func (d *delivery) salvage(subj schema.Subjects) {
	var body schema.JobHeader
	_ = d.codec.Unmarshal(d.msg.Data(), &body)
	_ = d.learn(subj, &body)
}

// jobPointer is *T for a job type T (schema.ChatJob, schema.ImageJob).
type jobPointer[T any] interface {
	*T
	schema.Job
}

// runJob takes one delivery of a job of type T through its steps.
func runJob[T any, PT jobPointer[T]](ctx context.Context, w *Worker, d *delivery, h Handler[T], validate func(PT, *schema.JobSubject, schema.Limits) *schema.Error) {
	args, verr := decode(w, d, validate)
	if verr != nil {
		w.reject(ctx, d, verr)
		return
	}
	hdr := PT(args).Header()
	log := w.log.With("job", d.id, "kind", d.rt.kind, "model", d.rt.model, "run", d.run, "attempt", d.attempt)
	jctx, release := w.occupy(ctx, d)
	defer release()
	if !w.admit(ctx, d, hdr, log) {
		return
	}
	ex := execute(jctx, w, d, h, args, hdr.Deadline)
	o := classify(ending{err: ex.err, cause: ex.cause, attempt: d.attempt, maxDeliver: d.rt.maxDeliver, deadline: hdr.Deadline},
		w.cfg.RetryDelays)
	w.settle(ctx, d, ex, o, log)
}

// decode reads the delivery's body as a T, strictly (an unknown field or
// a value of the wrong type is an error naming it), checks it against its
// subject and the limits, and normalises it (the default lane, the
// deadline in UTC). The id of the body takes over from the header's, and
// its reply_to from Kiln-Reply-To as chooseReply allows. An error is the
// request's fault.
func decode[T any, PT jobPointer[T]](w *Worker, d *delivery, validate func(PT, *schema.JobSubject, schema.Limits) *schema.Error) (*T, *schema.Error) {
	args := new(T)
	job := PT(args)
	if err := d.codec.DecodeJob(d.msg.Data(), job); err != nil {
		d.salvage(w.subj)
		code := schema.CodeBadMsgpack
		if d.codec == schema.JSON {
			code = schema.CodeBadJSON
		}
		return nil, requestError(err, code)
	}
	hdr := job.Header()
	if refused := d.learn(w.subj, hdr); refused != nil {
		return nil, refused
	}
	if verr := validate(job, &d.subject, w.cfg.Limits); verr != nil {
		return nil, verr
	}
	if hdr.Lane == "" {
		hdr.Lane = schema.LaneNormal
	}
	if hdr.Deadline != nil {
		t := hdr.Deadline.UTC()
		hdr.Deadline = &t
	}
	return args, nil
}

// requestError is err as the request's fault: the *schema.Error it holds,
// else one with code and err's text.
func requestError(err error, code schema.ErrorCode) *schema.Error {
	var verr *schema.Error
	if errors.As(err, &verr) {
		return verr
	}
	return schema.Errorf(code, "", "%v", err)
}

// occupy makes d one of the worker's running jobs, busy in heartbeats,
// with a context that a cancel request, Stop, the governor or another
// job's device fault cancels with a cause. release ends both.
func (w *Worker) occupy(ctx context.Context, d *delivery) (jctx context.Context, release func()) {
	jctx, cancel := context.WithCancelCause(ctx)
	j := &runningJob{id: d.id, key: schema.JobKey(d.client, d.id), cancel: cancel}
	w.addRunning(j)
	return jctx, func() {
		w.removeRunning(j)
		cancel(nil)
	}
}

// admit reports whether the job is to run. A result already stored means
// an earlier delivery finished the job but its ack was lost: that result
// (with its own run) is sent again and nothing runs. Every delivery looks,
// the first included: the delivery count cannot tell a first delivery, since
// a broker that crashes loses its recent counts and delivers again from 1.
// (A failed look only costs a run: finish keeps the first result.) Both the
// stored result and the cancels are looked up under the job's client only,
// so a job cannot reach another client's by reusing its id. A job cancelled
// or past its deadline while it was queued ends here (queued).
func (w *Worker) admit(ctx context.Context, d *delivery, hdr *schema.JobHeader, log *slog.Logger) bool {
	if res := w.storedResult(ctx, d.id, d.client); res != nil {
		log.Info("job already finished, re-sending its result", "first_run", res.Run)
		_ = d.events.emit(schema.Event{Type: schema.EventResult, Result: res})
		_ = d.msg.Ack()
		return false
	}
	if res := queued(hdr, w.wasCancelled(schema.JobKey(d.client, d.id)), time.Now()); res != nil {
		w.finish(ctx, d, res, log)
		return false
	}
	return true
}

// queued returns the result of a job that ends before it starts, because
// it was cancelled or its deadline passed while it was queued; nil when it
// may run.
func queued(hdr *schema.JobHeader, cancelled bool, now time.Time) *schema.Result {
	switch {
	case cancelled:
		return &schema.Result{Status: schema.StatusCancelled, FinishReason: schema.FinishCancelled,
			Error: schema.Errorf(schema.CodeCancelled, "", "cancelled before it started")}
	case hdr.Expired(now):
		return &schema.Result{Status: schema.StatusExpired,
			Error: schema.Errorf(schema.CodeExpired, "deadline", "deadline %s passed before the job started", hdr.Deadline.Format(time.RFC3339))}
	}
	return nil
}

// execution is what came of running a handler.
type execution struct {
	res   *schema.Result // never nil; usage timings filled in
	err   error          // the handler's (a recovered panic is Permanent)
	cause error          // why the job's context ended; nil if it had not
}

// execute runs the handler on an admitted job: the deadline on its
// context, the started event, InProgress while it runs (so a long job is
// not redelivered), a panic recovered, the timings put in the result.
func execute[T any](jctx context.Context, w *Worker, d *delivery, h Handler[T], args *T, deadline *time.Time) execution {
	if deadline != nil {
		var cancel context.CancelFunc
		jctx, cancel = context.WithDeadlineCause(jctx, *deadline, ErrDeadline)
		defer cancel()
	}
	stream := d.events
	started := time.Now()
	_ = stream.emit(schema.Event{Type: schema.EventStarted, Worker: w.cfg.Name, QueueMS: queueMS(d)})
	stopProgress := keepInProgress(d.msg, d.rt.ackWait)
	res, err := safeHandle(jctx, h, &Job[T]{Args: args, Attempt: d.attempt, Enqueued: d.enqueued, stream: stream})
	stopProgress()
	if res == nil {
		res = &schema.Result{}
	}
	res.Usage.TotalMS = time.Since(started).Milliseconds()
	if res.Usage.TTFTMS == 0 && !stream.first.IsZero() {
		res.Usage.TTFTMS = stream.first.Sub(started).Milliseconds()
	}
	ex := execution{res: res, err: err}
	if jctx.Err() != nil {
		ex.cause = context.Cause(jctx)
	}
	return ex
}

func safeHandle[T any](ctx context.Context, h Handler[T], job *Job[T]) (res *schema.Result, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = Permanent(fmt.Errorf("handler panicked: %v\n%s", r, debug.Stack()))
		}
	}()
	return h.Handle(ctx, job)
}

// keepInProgress tells JetStream every third of the ack wait that the job
// is still being worked on, until stop.
func keepInProgress(msg jetstream.Msg, ackWait time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(ackWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

func queueMS(d *delivery) int64 {
	if d.enqueued.IsZero() {
		return 0
	}
	return max(d.fetched.Sub(d.enqueued).Milliseconds(), 0)
}

// settlement is how a delivery leaves the worker.
type settlement int

const (
	// settleFinish stores and sends the result, then acks it (or
	// terminates it, when the result is an error).
	settleFinish settlement = iota
	// settleReject ends a job that is the request's fault: an error result
	// without anything the handler made, and Term.
	settleReject
	// settleRetry hands the job back after a delay, for another try here
	// or on another card; no result.
	settleRetry
	// settleHandBack hands the job back at once for another card: the
	// worker is stopping or its card is critical; no result.
	settleHandBack
)

// ending is what classify decides from.
type ending struct {
	err        error      // what the handler returned
	cause      error      // why the job's context ended; nil if it had not
	attempt    int        // the delivery count, from 1
	maxDeliver int        // the consumer's MaxDeliver; 0 or less: no limit
	deadline   *time.Time // the job's, for the message of an expiry
}

// outcome is how a delivery ends.
type outcome struct {
	settle settlement
	status string        // the result's status (settleFinish, settleReject)
	finish string        // the result's finish reason; "" keeps the handler's
	err    *schema.Error // the result's error; nil when ok
	delay  time.Duration // settleRetry: the wait before the redelivery
	fault  bool          // a transient failure: ask the Device whether the card faulted
}

// classify decides how a job ends from what its handler returned. It is
// the worker's whole retry policy, and does no I/O:
//
//   - stopped by a cancel request or its deadline: cancelled or expired,
//     with what the handler had made so far;
//   - an error while the worker stops, the card is critical or another
//     job's device fault stopped it: handed back
//     (a handler that finished before it saw that keeps its result);
//   - no error: ok;
//   - a *schema.Error: the request's fault, rejected;
//   - Permanent (a panic is one): failed, no retry;
//   - any other error: retried after retryDelays[attempt-1] (the last one
//     repeats) until the consumer's last delivery, which fails. These may
//     be device faults.
func classify(e ending, retryDelays []time.Duration) outcome {
	var verr *schema.Error
	var perr *permanentError
	switch {
	case e.err != nil && (errors.Is(e.cause, ErrShutdown) || errors.Is(e.cause, ErrPaused) || errors.Is(e.cause, ErrDeviceFault)):
		return outcome{settle: settleHandBack}
	case errors.Is(e.cause, ErrCancelRequested):
		return outcome{status: schema.StatusCancelled, finish: schema.FinishCancelled,
			err: schema.Errorf(schema.CodeCancelled, "", "cancelled while running")}
	case errors.Is(e.cause, ErrDeadline):
		return outcome{status: schema.StatusExpired,
			err: schema.Errorf(schema.CodeExpired, "deadline", "deadline %s passed while running", formatDeadline(e.deadline))}
	case e.err == nil:
		return outcome{status: schema.StatusOK}
	case errors.As(e.err, &verr):
		return outcome{settle: settleReject, status: schema.StatusError, err: verr}
	case errors.As(e.err, &perr):
		return outcome{status: schema.StatusError, err: schema.Errorf(schema.CodeFailed, "", "%v", e.err)}
	case e.maxDeliver > 0 && e.attempt >= e.maxDeliver:
		return outcome{status: schema.StatusError, fault: true,
			err: schema.Errorf(schema.CodeFailed, "", "failed on all %d deliveries, last: %v", e.attempt, e.err)}
	}
	return outcome{settle: settleRetry, delay: retryDelay(retryDelays, e.attempt), fault: true}
}

// retryDelay is the wait before the redelivery that follows attempt.
func retryDelay(delays []time.Duration, attempt int) time.Duration {
	if len(delays) == 0 {
		return 0
	}
	return delays[max(min(attempt, len(delays)), 1)-1]
}

func formatDeadline(t *time.Time) string {
	if t == nil {
		return "(none)"
	}
	return t.Format(time.RFC3339)
}

// settle carries out the outcome of an executed job.
func (w *Worker) settle(ctx context.Context, d *delivery, ex execution, o outcome, log *slog.Logger) {
	if o.fault {
		w.noteFault(ex.err)
	}
	switch o.settle {
	case settleHandBack:
		log.Info("handing job back to the queue", "why", ex.cause)
		if err := d.msg.Nak(); err != nil {
			log.Warn("nak failed; the job comes back after the ack wait", "err", err)
		}
	case settleRetry:
		log.Warn("job failed, retrying", "err", ex.err, "delay", o.delay)
		w.jobsFailed.Add(1)
		if err := d.msg.NakWithDelay(o.delay); err != nil {
			log.Warn("nak failed; the job comes back after the ack wait", "err", err)
		}
	case settleReject:
		w.reject(ctx, d, o.err)
	case settleFinish:
		res := ex.res
		res.Status, res.Error = o.status, o.err
		if o.finish != "" {
			res.FinishReason = o.finish
		}
		w.finish(ctx, d, res, log)
	}
}

// reject ends a job that is the request's fault: error result, Term.
func (w *Worker) reject(ctx context.Context, d *delivery, verr *schema.Error) {
	log := w.log.With("job", d.id, "subject", d.msg.Subject())
	msg := "job refused"
	if d.replyTo == "" {
		msg += " with nobody to tell (no valid reply_to in the body or " + schema.HeaderReplyTo + " header)"
		if d.id == "" {
			msg += " and no job id: the result is not stored either"
		} else {
			msg += ": the result is only stored"
		}
	}
	log.Warn(msg, "code", verr.Code, "field", verr.Field, "err", verr.Message)
	w.finish(ctx, d, &schema.Result{Status: schema.StatusError, Error: verr}, log)
}

// finish stores the result, sends it to the client and removes the job from
// the queue: Ack, or Term for an error (so it is not redelivered). A job
// whose id is unknown (neither Nats-Msg-Id nor a readable body id) cannot
// be stored; a job without a reply subject is only stored.
func (w *Worker) finish(ctx context.Context, d *delivery, res *schema.Result, log *slog.Logger) {
	res.JobID, res.Worker, res.Run, res.Attempt = d.id, w.cfg.Name, d.run, d.attempt
	res.Usage.QueueMS = queueMS(d)
	switch {
	case res.Status == schema.StatusOK:
		w.jobsOK.Add(1)
		w.jobSucceeded()
		w.noteRate(res)
	case res.Error != nil && res.Error.Code.Invalid():
		w.jobsRefused.Add(1)
	default:
		w.jobsFailed.Add(1)
	}
	if d.id != "" {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := w.storeResult(pctx, d.codec, d.client, res)
		cancel()
		if errors.Is(err, topology.ErrResultStored) {
			// A delivery that overlapped another (a redelivery during a
			// cluster failover) sends the first one's result instead.
			if first := w.storedResult(ctx, d.id, d.client); first != nil {
				log.Info("job already finished by another delivery, sending its result")
				_ = d.events.emit(schema.Event{Type: schema.EventResult, Result: first})
				_ = d.msg.Ack()
				return
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
	if res.Status == schema.StatusError {
		_ = d.msg.Term()
	} else {
		_ = d.msg.Ack()
	}
	log.Info("job finished", "status", res.Status, "queue_ms", res.Usage.QueueMS, "total_ms", res.Usage.TotalMS)
}

// storeResult keeps res in KILN_RESULTS under its job and client unless a
// result is there already (topology.StoreResult): then it returns an error
// matching topology.ErrResultStored.
func (w *Worker) storeResult(ctx context.Context, codec schema.Codec, client string, res *schema.Result) error {
	return topology.StoreResult(ctx, w.js, w.subj.ClientResult(res.JobID, client), codec, res)
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
