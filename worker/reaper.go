package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kiln-project/kiln/broker/topology"
	"github.com/kiln-project/kiln/schema"
)

// maxDeliverAdvisory is the part of JetStream's max-deliveries advisory the
// reaper reads.
type maxDeliverAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// subscribeReaper makes sure that a job which ran out of deliveries without
// any worker finishing it (every worker that took it crashed, was killed or
// was stopped) still ends with exactly one result. All workers share the
// subscription as a queue group, so one of them answers each advisory.
func (w *Worker) subscribeReaper() (*nats.Subscription, error) {
	subject := topology.MaxDeliveriesAdvisory(w.cfg.Topology.JobsStream(), "*")
	sub, err := w.nc.QueueSubscribe(subject, w.cfg.Topology.Prefix+"-reaper", func(m *nats.Msg) {
		var adv maxDeliverAdvisory
		if err := schema.JSON.Unmarshal(m.Data, &adv); err != nil { // bounded: anyone may publish here without auth
			w.log.Warn("undecodable max-deliveries advisory", "err", err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		w.reap(ctx, adv)
	})
	if err != nil {
		return nil, fmt.Errorf("worker: reaper subscription: %w", err)
	}
	return sub, nil
}

func (w *Worker) reap(ctx context.Context, adv maxDeliverAdvisory) {
	stream, err := w.js.Stream(ctx, w.cfg.Topology.JobsStream())
	if err != nil {
		w.log.Warn("reaper: jobs stream", "err", err)
		return
	}
	raw, err := stream.GetMsg(ctx, adv.StreamSeq)
	if err != nil {
		return // already gone
	}
	// Whose job it is, its id and where it is answered, as a delivery of
	// it would tell (receive, salvage): the body is read leniently about
	// fields (this is any job kind, and perhaps not a valid one) but bounded
	// in shape, so hostile bytes are refused before anything is allocated.
	d := &delivery{}
	d.subject, d.subjectErr = w.subj.ParseJob(raw.Subject)
	d.client = d.subject.Client
	d.id = schema.JobIDOf(d.client, raw.Header.Get(jetstream.MsgIDHeader))
	codec, _ := schema.CodecForBody(raw.Header.Get(schema.HeaderContentType), raw.Data)
	var hdr schema.JobHeader
	_ = codec.Unmarshal(raw.Data, &hdr)
	if schema.ValidToken(hdr.ID) {
		d.id = hdr.ID
	}
	d.chooseReply(w.subj, hdr.ReplyTo, raw.Header.Get(schema.HeaderReplyTo))
	id, client := d.id, d.client
	log := w.log.With("job", id, "deliveries", adv.Deliveries)
	if d.subjectErr == nil && schema.ValidToken(id) && w.storedResult(ctx, id, client) == nil {
		// The reaper's answer is a run of its own: no delivery made it.
		res := &schema.Result{JobID: id, Run: schema.NewID(), Status: schema.StatusError, Worker: w.cfg.Name, Attempt: int(adv.Deliveries),
			Error: schema.Errorf(schema.CodeFailed, "", "delivered %d times and no worker finished it (each worker that took it crashed, was killed or stopped)", adv.Deliveries)}
		if err := w.storeResult(ctx, codec, client, res); err != nil {
			log.Warn("reaper: could not store the result", "err", err)
			return
		}
		if d.replyTo != "" {
			ev := schema.Event{JobID: id, Run: res.Run, Attempt: res.Attempt, Seq: 1, Type: schema.EventResult, Result: res}
			_ = topology.Publish(w.nc, d.replyTo, codec, &ev)
		}
		log.Warn("job ran out of deliveries; answered with an error result")
	}
	if err := stream.DeleteMsg(ctx, adv.StreamSeq); err != nil {
		log.Debug("reaper: delete", "err", err)
	}
}
