package janitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
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
	client  string // the submitting client (schema.HeaderClient), "" when none
	replyTo string // "" when the job has no usable reply subject
	codec   schema.Codec
}

// read takes a job's id from its Nats-Msg-Id header, its reply subject from
// the Kiln-Reply-To header, each from the body when the header has none
// that is valid. The body is decoded with the bounded codec, which refuses
// hostile shapes before it allocates for them.
func (j *Janitor) read(m *jetstream.RawStreamMsg) job {
	jb := job{seq: m.Sequence, subject: m.Subject}
	jb.codec, _ = schema.CodecForBody(m.Header.Get(schema.HeaderContentType), m.Data)
	if id := m.Header.Get(jetstream.MsgIDHeader); schema.ValidToken(id) {
		jb.id = id
	}
	if c := m.Header.Get(schema.HeaderClient); schema.ValidToken(c) {
		jb.client = c
	}
	if r := m.Header.Get(schema.HeaderReplyTo); j.replyAllowed(r) {
		jb.replyTo = r
	}
	if jb.id == "" || jb.replyTo == "" {
		var hdr schema.JobHeader
		if jb.codec.Unmarshal(m.Data, &hdr) == nil {
			if jb.id == "" && schema.ValidToken(hdr.ID) {
				jb.id = hdr.ID
			}
			if jb.replyTo == "" && j.replyAllowed(hdr.ReplyTo) {
				jb.replyTo = hdr.ReplyTo
			}
		}
	}
	return jb
}

// replyAllowed reports whether a janitor publishes a job's result on
// subject: a valid subject outside NATS's own ($JS, $KV, $SYS, ...) and,
// under the kiln prefix, a reply subject only, never a result, event or
// job subject (a janitor in the broker process has every right).
func (j *Janitor) replyAllowed(subject string) bool {
	if !schema.ValidSubject(subject) || strings.HasPrefix(subject, "$") {
		return false
	}
	prefix := j.cfg.Topology.Prefix + "."
	return !strings.HasPrefix(subject, prefix) || strings.HasPrefix(subject, prefix+"reply.")
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
