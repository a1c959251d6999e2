package janitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// job is what a janitor reads of a stored job to answer it.
type job struct {
	seq     uint64
	subject string
	id      string // "" when neither Nats-Msg-Id nor the body has a valid one
	client  string // the client token of its subject, "" when anonymous
	replyTo string // "" when the job has no usable reply subject
	codec   schema.Codec
}

// read learns of a job what the worker would (worker.delivery): its client
// from the client token of its subject (the one thing about the sender the
// broker enforces; a subject that is no job subject counts as anonymous),
// its id from its Nats-Msg-Id header, else its body, and its reply subject
// from the body's reply_to, else the Kiln-Reply-To header, each as
// schema.Subjects.ReplyTo allows (a janitor in the broker process has every
// right: the same rule keeps it from publishing into another client's
// subjects or kiln's own), else the client's default reply subject. The
// body is decoded with the bounded codec, which refuses hostile shapes
// before it allocates for them.
func (j *Janitor) read(m *jetstream.RawStreamMsg) job {
	jb := job{seq: m.Sequence, subject: m.Subject}
	if route, err := j.subj.ParseJob(m.Subject); err == nil {
		jb.client = route.Client
	}
	jb.codec, _ = schema.CodecForBody(m.Header.Get(schema.HeaderContentType), m.Data)
	jb.id = schema.JobIDOf(jb.client, m.Header.Get(jetstream.MsgIDHeader))
	var hdr schema.JobHeader
	_ = jb.codec.Unmarshal(m.Data, &hdr)
	if jb.id == "" && schema.ValidToken(hdr.ID) {
		jb.id = hdr.ID
	}
	jb.replyTo, _ = j.subj.ReplyTo(jb.client, jb.id, "") // the client's default, if it has one
	for _, r := range []string{hdr.ReplyTo, m.Header.Get(schema.HeaderReplyTo)} {
		if to, err := j.subj.ReplyTo(jb.client, jb.id, r); r != "" && err == nil {
			jb.replyTo = to
			break
		}
	}
	return jb
}

// answer gives the job in m the result res, once: it stores res as the
// job's result unless one is stored already (first write wins: another
// janitor, or a worker, answered first), sends it on the job's reply
// subject and deletes the job from the queue. A job without an id has no
// result subject: there the delete decides who answers. An error leaves
// the job queued for the next sweep.
func (j *Janitor) answer(ctx context.Context, m *jetstream.RawStreamMsg, res *schema.Result) error {
	jb := j.read(m)
	res.JobID, res.Run = jb.id, schema.NewID() // a run of its own, as every answer has
	log := j.log.With("job", jb.id, "subject", jb.subject, "code", res.Error.Code)
	if jb.id != "" {
		stored, err := j.store(ctx, jb, res)
		if err != nil {
			return fmt.Errorf("store the result of job %s: %w", jb.id, err)
		}
		if !stored {
			log.Debug("job answered already")
			_, _ = j.remove(ctx, jb.seq)
			return nil
		}
		j.send(jb, res, log)
		if _, err := j.remove(ctx, jb.seq); err != nil {
			log.Warn("job answered but not deleted from the queue; the next sweep deletes it", "err", err)
		}
	} else {
		removed, err := j.remove(ctx, jb.seq)
		if err != nil {
			return fmt.Errorf("delete job %d from the queue: %w", jb.seq, err)
		}
		if !removed {
			return nil // another janitor took it
		}
		j.send(jb, res, log)
	}
	log.Warn("answered a job no worker will take", "status", res.Status, "reply_to", jb.replyTo,
		"queued", rounded(time.Duration(res.Usage.QueueMS)*time.Millisecond), "message", res.Error.Message)
	return nil
}

// store keeps res as the job's result if none is kept yet; it reports
// false when one is.
func (j *Janitor) store(ctx context.Context, jb job, res *schema.Result) (bool, error) {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := topology.StoreResult(pctx, j.js, j.subj.ClientResult(jb.id, jb.client), jb.codec, res)
	if errors.Is(err, topology.ErrResultStored) {
		return false, nil
	}
	return err == nil, err
}

// send publishes res as the job's result event, the one event of the job.
func (j *Janitor) send(jb job, res *schema.Result, log *slog.Logger) {
	if jb.replyTo == "" {
		return // stored only: `kiln result ID` finds it
	}
	ev := &schema.Event{JobID: jb.id, Run: res.Run, Seq: 1, Type: schema.EventResult, Result: res}
	if err := topology.Publish(j.nc, jb.replyTo, jb.codec, ev); err != nil {
		log.Warn("could not send the result event", "reply_to", jb.replyTo, "err", err)
	}
}

// remove deletes the job at seq from the queue; false: it was gone already.
func (j *Janitor) remove(ctx context.Context, seq uint64) (bool, error) {
	err := j.jobs.DeleteMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) || errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	return err == nil, err
}
